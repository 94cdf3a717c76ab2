"""Dash's warm-up estimate of rho_hat and its rho_t schedule on hand-checkable tensors."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import PolicyInput, StepContext
from sslzoo.distributed import DistContext
from sslzoo.policies import build_policy
from sslzoo.policies.dash import DashThreshold, dash_rho, self_loss

TOTAL = 100          # warmup=0.05 -> W = 5 warm-up steps (0..4); num_wait=10 -> stages of 10 steps
C, GAMMA = 1.0001, 1.27


def _ctx(step: int, dist: DistContext | None = None) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=TOTAL, iters_per_epoch=TOTAL,
                       num_classes=3, dist=dist or DistContext())


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


def test_guard_rho_hat_is_the_mean_labeled_training_loss_of_the_warmup():
    """Initial rho comes from PolicyInput.labeled_loss (training labels), nothing else."""
    p = _policy()
    labeled = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5]), torch.tensor([3.0]),
               torch.tensor([0.2, 0.4, 0.6]), torch.tensor([1.3, 0.7])]
    confident = _probs_with_losses([0.001, 0.01])                       # would pass any rho
    for step, loss in enumerate(labeled):                               # W = 5 warm-up steps
        unlabeled = confident if step % 2 else torch.full((2, 3), 1 / 3)   # unlabeled data: no effect
        w = p(PolicyInput(unlabeled, torch.arange(2), loss), _ctx(step))
        assert w.tolist() == [0.0, 0.0]                                 # supervised-only warm-up
    rho_hat = (1.0 + 2.0 + 0.5 + 1.5 + 3.0 + 0.2 + 0.4 + 0.6 + 1.3 + 0.7) / 10   # = 1.12
    assert p.rho_hat == pytest.approx(rho_hat)
    # after the warm-up, labeled losses no longer move rho_hat
    p(PolicyInput(confident, torch.arange(2), torch.tensor([50.0])), _ctx(5))
    assert p.rho_hat == pytest.approx(rho_hat)
    assert p.extra_stats()["dash_rho"] == pytest.approx(C * rho_hat)


def test_guard_schedule_matches_formula_at_update_points():
    p = _policy()
    for step in range(5):
        p.update(PolicyInput(torch.full((1, 3), 1 / 3), None, torch.tensor([1.0])), _ctx(step))
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
    with pytest.raises(ValueError, match="labeled_loss"):
        p.update(PolicyInput(torch.full((1, 3), 1 / 3)), _ctx(0))


class _TwoRanks(DistContext):
    def __init__(self, peer):
        super().__init__(rank=0, world_size=1)
        self.peer = list(peer)

    def all_reduce(self, tensor, op="sum"):
        return tensor + self.peer.pop(0).to(tensor.dtype)


def test_distributed_rho_hat_is_the_global_mean():
    p = _policy()
    p.update(PolicyInput(torch.full((1, 3), 1 / 3), None, torch.tensor([1.0, 2.0])),
             _ctx(0, _TwoRanks([torch.tensor([4.0, 1.0])])))             # other rank: one sample, loss 4
    assert p.rho_hat == pytest.approx(7.0 / 3)


def test_state_dict_round_trip():
    p = _policy()
    for step in range(7):
        p(PolicyInput(_probs_with_losses([0.5]), None, torch.tensor([0.8, 1.2])), _ctx(step))
    q = _policy()
    q.load_state_dict(p.state_dict())
    assert q.rho_hat == pytest.approx(p.rho_hat) == pytest.approx(1.0)
    assert q.rho_at(40, TOTAL) == p.rho_at(40, TOTAL)
    probs = _probs_with_losses([0.3, 0.9])
    assert torch.equal(q.weights(PolicyInput(probs, None), _ctx(40)), p.weights(PolicyInput(probs, None), _ctx(40)))


def test_dash_algorithm_trains_one_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="dash", iters_per_epoch=4))
    assert metrics["status"] == "finished" and metrics["policy"] == "dash"
    assert metrics["history"][0]["policy_stats"]["dash_rho_hat"] > 0
