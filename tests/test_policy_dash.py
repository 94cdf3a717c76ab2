"""Dash's rho_hat (the warmed-up model's labeled training loss) and its rho_t schedule, by hand."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import PolicyInput, StepContext
from sslzoo.distributed import DistContext
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.policies.dash import DashThreshold, dash_rho, self_loss

TOTAL = 100          # warmup=0.05 -> W = 5 warm-up steps (0..4); num_wait=10 -> stages of 10 steps
C, GAMMA = 1.0001, 1.27


def _ctx(step: int, labeled_loss=None) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=TOTAL, iters_per_epoch=TOTAL,
                       num_classes=3, dist=DistContext(), labeled_loss=labeled_loss)


def _step(p: DashThreshold, inp: PolicyInput, ctx: StepContext) -> torch.Tensor:
    """What the trainer does around one step: the policy's before-step hook, then its weights."""
    p.before_step(ctx)
    return p(inp, ctx)


class LabeledLoss:
    """A stand-in for the trainer's labeled-loss pass: known per-sample losses, counting its calls."""

    def __init__(self, losses: list[float]):
        self.losses, self.calls = torch.tensor(losses), 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.losses


def _policy(**kw) -> DashThreshold:
    p = DashThreshold(**{"num_wait": 10, **kw})
    p.setup(3, 50)
    return p


def _probs_with_losses(losses: list[float]) -> torch.Tensor:
    """3-class rows whose max prob is exp(-loss) (the rest split evenly)."""
    top = torch.exp(-torch.tensor(losses))
    rest = (1 - top) / 2
    return torch.stack([top, rest, rest], dim=1)


def test_self_loss_is_ce_against_own_hard_label():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
    expected = torch.nn.functional.nll_loss(probs.log(), probs.argmax(1), reduction="none")
    assert torch.allclose(self_loss(probs), expected)
    assert self_loss(probs).tolist() == pytest.approx([math.log(2), -math.log(0.8)])


def test_rho_formula_values():
    assert dash_rho(1, 2.0) == pytest.approx(1.0001 * 2.0)
    assert dash_rho(3, 2.0) == pytest.approx(1.0001 * 2.0 / 1.27 ** 2)
    assert dash_rho(40, 2.0) == 0.05                                   # clipped at rho_min
    assert dash_rho(2, 1.0, C=1.0, gamma=2.0, rho_min=0.0) == 0.5


def test_guard_rho_hat_is_the_labeled_loss_of_the_warmed_up_model():
    """No trust and no loss pass during the W = 5 warm-up steps; before step W one pass, rho_hat = its mean."""
    p = _policy()
    loss = LabeledLoss([1.0, 2.0, 0.5, 1.5, 3.0, 0.2, 0.4, 0.6, 1.3, 0.7])   # mean 1.12
    confident = _probs_with_losses([0.001, 0.01])                       # would pass any rho
    for step in range(5):
        unlabeled = confident if step % 2 else torch.full((2, 3), 1 / 3)   # unlabeled data: no effect
        w = _step(p, PolicyInput(unlabeled, torch.arange(2), torch.tensor([9.0, 9.0])), _ctx(step, loss))
        assert w.tolist() == [0.0, 0.0] and loss.calls == 0             # supervised-only warm-up
    assert math.isnan(p.rho_hat) and p.extra_stats() == {}
    w = _step(p, PolicyInput(confident, torch.arange(2), torch.tensor([50.0])), _ctx(5, loss))
    assert loss.calls == 1 and w.tolist() == [1.0, 1.0]
    assert p.rho_hat == pytest.approx(1.12) and p.rho_hat_value.dtype == torch.float64
    for step in (6, 30):                                                 # never again, whatever the batch losses
        _step(p, PolicyInput(confident, torch.arange(2), torch.tensor([50.0])), _ctx(step, loss))
    assert loss.calls == 1 and p.rho_hat == pytest.approx(1.12)
    assert p.extra_stats()["dash_rho"] == pytest.approx(C * 1.12 / GAMMA ** 2)   # stage 3 at step 30


def test_without_the_before_step_hook_nothing_is_trusted():
    """A driver that only calls the step (no hook): no rho_hat, so no pseudo-label is trusted, no error."""
    p = _policy()
    w = p(PolicyInput(_probs_with_losses([0.001, 0.01])), _ctx(5, LabeledLoss([1.0])))
    assert w.tolist() == [0.0, 0.0] and math.isnan(p.rho_hat)


def test_guard_schedule_matches_formula_at_update_points():
    p = _policy()
    _step(p, PolicyInput(torch.full((1, 3), 1 / 3)), _ctx(5, LabeledLoss([0.5, 1.5])))
    assert p.rho_hat == pytest.approx(1.0)
    # stage t = 1 + (step - 5) // 10: updates at steps 5, 15, 25, ...
    for step, t in [(5, 1), (14, 1), (15, 2), (24, 2), (25, 3), (95, 10), (99, 10)]:
        assert p.stage(step, TOTAL) == t
        assert p.rho_at(step, TOTAL) == pytest.approx(max(C * GAMMA ** -(t - 1) * 1.0, 0.05))
    assert p.rho_at(99, TOTAL) == pytest.approx(C / GAMMA ** 9)        # 0.1164, not yet at rho_min
    # the mask: trusted iff -log max p <= rho_t
    rho = p.rho_at(15, TOTAL)
    assert rho == pytest.approx(0.787480, abs=1e-6)                     # by hand: 1.0001 / 1.27
    probs = _probs_with_losses([rho - 1e-3, rho + 1e-3, 0.1, 1.0])
    assert p.weights(PolicyInput(probs, None), _ctx(15)).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert p.rho_at(25, TOTAL) == pytest.approx(0.620063, abs=1e-6)    # 1.0001 / 1.27^2
    assert p.weights(PolicyInput(_probs_with_losses([0.65, 0.6]), None), _ctx(25)).tolist() == [0.0, 1.0]


def test_defaults_auto_wait_and_warmup():
    p = DashThreshold()
    assert (p.C, p.gamma, p.rho_min) == (1.0001, 1.27, 0.05)
    assert p.warmup_steps(2000) == 100 and p.wait_steps(2000) == 20     # 5% warm-up, lowered every 1%
    assert p.warmup_steps(3) == 1 and p.wait_steps(3) == 1
    assert build_policy("dash:0.1").rho_min == 0.1


def test_missing_labeled_loss_is_an_error():
    p = _policy()
    _step(p, PolicyInput(torch.full((1, 3), 1 / 3)), _ctx(0))          # warm-up: not needed yet
    with pytest.raises(SSLZooError, match="StepContext.labeled_loss"):
        _step(p, PolicyInput(torch.full((1, 3), 1 / 3)), _ctx(5))


def test_state_dict_round_trip():
    p = _policy()
    for step in range(7):
        _step(p, PolicyInput(_probs_with_losses([0.5]), None), _ctx(step, LabeledLoss([0.8, 1.2])))
    q = _policy()
    q.load_state_dict(p.state_dict())
    again = LabeledLoss([5.0])
    _step(q, PolicyInput(_probs_with_losses([0.5]), None), _ctx(7, again))   # resumed after step W: no new pass
    assert again.calls == 0 and q.rho_hat == pytest.approx(p.rho_hat) == pytest.approx(1.0)
    assert q.rho_at(40, TOTAL) == p.rho_at(40, TOTAL)
    probs = _probs_with_losses([0.3, 0.9])
    assert torch.equal(q.weights(PolicyInput(probs, None), _ctx(40)), p.weights(PolicyInput(probs, None), _ctx(40)))
    fresh = _policy()
    fresh.load_state_dict(_policy().state_dict())                       # resumed during the warm-up
    _step(fresh, PolicyInput(_probs_with_losses([0.5]), None), _ctx(5, again))
    assert again.calls == 1 and fresh.rho_hat == pytest.approx(5.0)


def test_dash_algorithm_trains_one_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="dash", iters_per_epoch=4))
    assert metrics["status"] == "finished" and metrics["policy"] == "dash"
    assert metrics["history"][0]["policy_stats"]["dash_rho_hat"] > 0


class ConstantNet(torch.nn.Module):
    """Logits = a fixed bias for every image (so the CE per label is known); records its modes."""

    def __init__(self, bias: list[float]):
        super().__init__()
        self.fc = torch.nn.Linear(1, len(bias))
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor(bias))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        feature = x.mean(dim=(1, 2, 3))[:, None]
        return self.fc(feature), feature


def test_the_trainer_labeled_loss_is_the_ce_of_the_training_model_on_the_labeled_set(tmp_path, tiny):
    """By hand: softmax(bias) is the same for every image, so the loss of label y is -log softmax(bias)_y."""
    from sslzoo.trainer import Trainer
    bias = [2.0, 1.0, 0.0, 0.0, -1.0, 0.5, 0.0]
    model = ConstantNet(bias)
    trainer = Trainer(tiny(tmp_path, algo="dash"), model=model)
    trainer.setup()
    seen = []
    real = trainer.predictor

    def spy(m, images, view="plain", seed=0, **kw):
        seen.append((m, images, view))
        return real(m, images, view, seed, **kw)
    trainer.predictor = spy
    model.train()
    loss = trainer.labeled_loss()
    labels = torch.as_tensor(trainer.data.labeled.labels)
    expected = -torch.log_softmax(torch.tensor(bias), dim=0)[labels]
    assert loss.shape == (len(trainer.data.labeled),) and torch.allclose(loss, expected, atol=1e-5)
    assert seen == [(model, trainer.data.labeled, trainer.algorithm.labeled_view)]   # training data, its view
    assert set(model.modes[-1:]) == {False} and model.training                       # eval mode, then restored


def test_a_dash_run_takes_rho_hat_from_one_labeled_pass_after_the_warmup(tmp_path, tiny, monkeypatch):
    from sslzoo.trainer import Trainer
    calls: list[tuple[int, float]] = []
    real = Trainer.labeled_loss

    def spy(self):
        out = real(self)
        calls.append((self.ema.updates, out.double().mean().item()))   # (optimizer steps so far, mean loss)
        return out
    monkeypatch.setattr(Trainer, "labeled_loss", spy)
    trainer = Trainer(tiny(tmp_path, algo="dash", iters_per_epoch=10, epochs=2))   # 20 steps: W = 1
    metrics = trainer.fit()
    assert len(calls) == 1 and calls[0][0] == trainer.algorithm.policy.warmup_steps(20) == 1
    assert metrics["history"][-1]["policy_stats"]["dash_rho_hat"] == pytest.approx(calls[0][1], rel=1e-12)
    assert trainer.algorithm.policy.rho_hat_value.dtype == torch.float64
