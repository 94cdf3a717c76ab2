"""Pi-Model: MSE of probabilities between two views, which branch is trained, the ramp, input noise."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.pimodel import PiModel, pi_consistency, with_input_noise
from tests.algo_testkit import comparable, runs_with_seeds
from tests.conftest import TinyNet


def ctx(step: int = 10, total: int = 10, mode: str = "concat") -> StepContext:
    return StepContext(epoch=0, iteration=0, step=step, total_steps=total, iters_per_epoch=total, num_classes=2,
                       forward_mode=mode)


def _packed(target_probs, trained_probs, requires_grad: bool = False):
    target = torch.log(torch.tensor(target_probs)).requires_grad_(requires_grad)
    trained = torch.log(torch.tensor(trained_probs)).requires_grad_(requires_grad)
    n = target.shape[0]
    out = ForwardOutput(torch.zeros(2, 2), torch.zeros(2, 1), [target, trained], [torch.zeros(n, 1)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), [], torch.arange(n), torch.tensor([0, 1])[:n])
    return out, batch, target, trained


def test_consistency_by_hand():
    # row 0: (0.4^2 + 0.4^2) / 2 = 0.16; row 1: 0; mean over rows = 0.08
    loss = pi_consistency(torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]])),
                          torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]])))
    assert loss.item() == pytest.approx(0.08, rel=1e-5)
    # three classes, one row: ((0.5-0.2)^2 + (0.3-0.3)^2 + (0.2-0.5)^2) / 3 = 0.06
    loss3 = pi_consistency(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), torch.log(torch.tensor([[0.2, 0.3, 0.5]])))
    assert loss3.item() == pytest.approx(0.06, rel=1e-5)


def test_losses_weight_view_roles_and_stop_gradient():
    out, batch, target, trained = _packed([[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.8]], requires_grad=True)
    res = PiModel(2, rampup="none").losses(out, batch, ctx(step=0))
    assert res.losses["unsup"].item() == pytest.approx(10 * 0.08, rel=1e-5)    # lambda_u = 10 (USB)
    res.losses["unsup"].backward()
    assert trained.grad.abs().sum() > 0 and target.grad is None               # view 0 is the constant target
    assert res.stats["mask_ratio"].item() == 1.0
    assert res.stats["pseudo_label_acc"].item() == 100.0                       # target argmax [0, 1] = truth

    out, batch, target, trained = _packed([[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.2, 0.8]], requires_grad=True)
    res = PiModel(2, rampup="none", stop_gradient=False).losses(out, batch, ctx(step=0))
    res.losses["unsup"].backward()
    assert trained.grad.abs().sum() > 0 and target.grad.abs().sum() > 0       # the paper: both branches
    # the symmetric loss pulls the two rows towards each other
    assert torch.sign(trained.grad[0, 0]) == -torch.sign(target.grad[0, 0])


def test_ramp_shapes_and_length():
    algo = PiModel(2)                                # sigmoid over 40 % of training
    assert algo.unsup_weight(ctx(step=2, total=10)) == pytest.approx(10 * math.exp(-1.25))
    assert algo.unsup_weight(ctx(step=0, total=10)) == pytest.approx(10 * math.exp(-5))
    assert algo.unsup_weight(ctx(step=4, total=10)) == 10.0
    assert PiModel(2, rampup="linear").unsup_weight(ctx(step=2, total=10)) == pytest.approx(5.0)   # USB
    assert PiModel(2, lambda_u=3.0, unsup_warmup=0.0).unsup_weight(ctx(step=0, total=10)) == 3.0


class Recorder(TinyNet):
    """TinyNet that keeps the inputs of its forward passes."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return super().forward(x)


def _batch(n: int = 64) -> Batch:
    g = torch.Generator().manual_seed(2)
    x_l = torch.randn(n, 3, 8, 8, generator=g)
    views = [torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)]
    return Batch(x_l, torch.arange(n) % 3, views, torch.arange(n), torch.full((n,), -1))


def test_step_runs_the_views_in_order_without_noise_by_default():
    torch.manual_seed(0)
    model, batch = Recorder().train(), _batch(8)
    PiModel(3).step(model, batch, ctx())
    assert len(model.seen) == 1                                           # one concatenated pass
    assert torch.equal(model.seen[0], torch.cat([batch.x_l, *batch.u_views]))
    model.seen.clear()
    PiModel(3).step(model, batch, ctx(mode="separate"))
    assert [torch.equal(a, b) for a, b in zip(model.seen, [batch.x_l, *batch.u_views])] == [True] * 3


def test_input_noise_has_the_asked_std_and_is_independent_per_input():
    batch = _batch()
    torch.manual_seed(4)
    noisy = with_input_noise(batch, 0.15)
    deltas = [noisy.x_l - batch.x_l, noisy.u_views[0] - batch.u_views[0], noisy.u_views[1] - batch.u_views[1]]
    for delta in deltas:
        assert delta.std().item() == pytest.approx(0.15, rel=0.05) and abs(delta.mean().item()) < 0.01
    assert not torch.allclose(deltas[1], deltas[2])                       # the two views get their own noise
    assert torch.equal(noisy.y_l, batch.y_l) and torch.equal(noisy.u_index, batch.u_index)
    torch.manual_seed(4)
    assert torch.equal(with_input_noise(batch, 0.15).u_views[1], noisy.u_views[1])   # from the seeded generator
    # the step feeds the noisy inputs to the model
    model = Recorder().train()
    torch.manual_seed(4)
    PiModel(3, input_noise=0.15).step(model, batch, ctx())
    assert torch.equal(model.seen[0], torch.cat([noisy.x_l, *noisy.u_views]))


@pytest.mark.parametrize("bad, match", [
    ({"unsup_warmup": -0.1}, "unsup_warmup"), ({"rampup": "cubic"}, "ramp"), ({"input_noise": -0.1}, "input_noise"),
    ({"lambda_u": -1.0}, "lambda_u"), ({"stop_gradient": "no"}, "stop_gradient"),
])
def test_bad_hyperparameters_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        PiModel(3, **bad)


def test_step_reads_nothing_on_the_host(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a device tensor was read on the host inside the step")

    torch.manual_seed(0)
    model, batch = TinyNet().train(), _batch(6)
    batch.u_true = torch.tensor([0, 1, 2, -1, 0, 1])
    with monkeypatch.context() as m:
        for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero"):
            m.setattr(torch.Tensor, attr, refuse)
        res = PiModel(3, input_noise=0.1).step(model, batch, ctx())
        total = sum(res.losses.values())
        total.backward()
    assert set(res.losses) == {"sup", "unsup"} and torch.isfinite(total)


def test_one_epoch_smoke_is_finite_and_reproducible(tmp_path):
    runs = runs_with_seeds(tmp_path, (0, 0, 1), algo="pimodel")
    entry = runs[0]["history"][-1]
    assert set(entry["losses"]) == {"total", "sup", "unsup"}
    assert all(math.isfinite(v) for v in entry["losses"].values()) and entry["losses"]["unsup"] > 0
    assert comparable(runs[0]["history"]) == comparable(runs[1]["history"])
    assert comparable(runs[0]["history"]) != comparable(runs[2]["history"])   # the comparison can fail
