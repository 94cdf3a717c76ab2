"""VAT: the power iteration's direction on hand-solvable models, the KL / entropy terms, BN, dropout, AMP."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslzoo.algorithm import Batch, StepContext, forward
from sslzoo.algorithms.vat import (
    VAT,
    adversarial_direction,
    dropout_off,
    entropy_from_logits,
    kl_from_logits,
    unit_vector,
    unwrap,
)
from sslzoo.mixup import frozen_bn_stats
from tests.algo_testkit import comparable, forbid_host_reads, runs_with_seeds, straight_and_resumed, train_two_processes
from tests.conftest import TinyNet


class Linear(nn.Module):
    """f(x) = W x + b on the flattened image, returning (logits, feature) like every backbone."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype))

    def forward(self, x):
        h = x.flatten(1)
        return self.fc(h), h


class DropNet(nn.Module):
    """A linear model with dropout on its input: stochastic in training mode, no batch norm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(12, 3)

    def forward(self, x):
        h = self.drop(x.flatten(1))
        return self.fc(h), h


def ctx(step: int = 10, total: int = 10, mode: str = "concat") -> StepContext:
    return StepContext(epoch=0, iteration=0, step=step, total_steps=total, iters_per_epoch=total, num_classes=3,
                       forward_mode=mode)


def _batch(u: torch.Tensor, n_l: int = 4, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(3)
    x_l = torch.randn((n_l, *u.shape[1:]), generator=g, dtype=u.dtype)
    return Batch(x_l, torch.arange(n_l) % classes, [u], torch.arange(u.shape[0]),
                 torch.full((u.shape[0],), -1, dtype=torch.long))


# ----------------------------------------------------------------------------- the equations

def test_unit_vector_by_hand_zero_rows_and_tiny_values():
    d = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]], [[3e-30, -4e-30]]])   # [3, 1, 2]
    u = unit_vector(d)
    assert torch.allclose(u[0], torch.tensor([[0.6, 0.8]]))
    assert torch.equal(u[1], torch.zeros(1, 2))                        # no NaN from 0/0
    assert torch.allclose(u[2], torch.tensor([[0.6, -0.8]]))           # squares of 1e-30 underflow in float32
    assert torch.allclose(unit_vector(torch.randn(5, 3, 4, 4)).flatten(1).norm(dim=1), torch.ones(5))


def test_kl_by_hand_and_the_target_is_a_constant():
    q = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]])).requires_grad_(True)
    p = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]])).requires_grad_(True)
    kl = kl_from_logits(q, p)
    # row 0: 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1); row 1: 0; mean over rows
    expected = 0.5 * (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert kl.item() == pytest.approx(expected, rel=1e-5)
    kl.backward()
    assert q.grad is None and p.grad.abs().sum() > 0


def test_entropy_by_hand_and_it_has_a_gradient():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]])).requires_grad_(True)
    ent = entropy_from_logits(logits)
    expected = 0.5 * (math.log(2) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert ent.item() == pytest.approx(expected, rel=1e-5)
    ent.backward()
    assert logits.grad[1].abs().sum() > 0            # minimising it sharpens row 1
    assert logits.grad[0].abs().sum() < 1e-7         # the uniform row is a stationary point


def test_two_class_linear_model_direction_is_the_weight_difference():
    """For f = W x with two classes, KL's curvature is q0 q1 v v^T, v = w0 - w1: one power step finds +-v."""
    torch.manual_seed(0)
    w = torch.randn(2, 12, dtype=torch.float64)
    net = Linear(w, torch.tensor([0.3, -0.2], dtype=torch.float64))
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        target = net(x)[0]
    torch.manual_seed(7)
    d = adversarial_direction(net, x, target, xi=1e-6, iterations=1)
    v = (w[0] - w[1]) / (w[0] - w[1]).norm()
    cos = d.flatten(1) @ v
    assert torch.allclose(cos.abs(), torch.ones(5, dtype=torch.float64), atol=1e-6)
    # the sign follows the random start: the gradient is q0 q1 v (v . d_0) xi
    torch.manual_seed(7)
    d0 = torch.randn_like(x).flatten(1)
    assert torch.equal(torch.sign(cos), torch.sign(d0 @ v))
    # no gradient reached the parameters
    assert all(p.grad is None for p in net.parameters())


def test_power_iteration_converges_to_the_top_eigenvector_of_the_curvature():
    """Three classes: H = W^T (diag(q) - q q^T) W per sample; many power steps give its top eigenvector."""
    torch.manual_seed(1)
    w = torch.randn(3, 6, dtype=torch.float64)
    net = Linear(w)
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        target = net(x)[0]
    d = adversarial_direction(net, x, target, xi=1e-6, iterations=60).flatten(1)
    for b in range(2):
        q = torch.softmax(target[b], dim=0)
        hessian = w.T @ (torch.diag(q) - torch.outer(q, q)) @ w
        values, vectors = torch.linalg.eigh(hessian)
        assert values[-1] > 1.5 * values[-2]                       # a clear gap: convergence is fast
        assert abs(float(d[b] @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-6)
    # one step is H d0 normalised, which is not yet the eigenvector
    torch.manual_seed(0)
    one = adversarial_direction(net, x, target, xi=1e-6, iterations=1).flatten(1)
    torch.manual_seed(0)
    d0 = unit_vector(torch.randn_like(x)).flatten(1)
    q0 = torch.softmax(target[0], dim=0)
    h0 = w.T @ (torch.diag(q0) - torch.outer(q0, q0)) @ w
    expected = h0 @ d0[0]
    assert torch.allclose(one[0], expected / expected.norm(), atol=1e-5)


def test_default_xi_resolves_the_direction_in_float32_where_1e6_does_not():
    """The float32 power step against the same network in float64, from the same start."""
    torch.manual_seed(0)
    net32 = TinyNet().train()
    net64 = copy.deepcopy(net32).double()
    u = torch.randn(6, 3, 16, 16)
    start = torch.randn_like(u)

    def direction(net, x, xi):
        with frozen_bn_stats(net), torch.no_grad():
            target = net(x)[0]
        with frozen_bn_stats(net):
            return adversarial_direction(net, x, target, xi, 1, start.to(x.dtype)).flatten(1).double()

    exact = direction(net64, u.double(), 1e-6)
    cos_default = (direction(net32, u, VAT(3).xi) * exact).sum(1)
    cos_tiny = (direction(net32, u, 1e-6) * exact).sum(1)
    assert cos_default.min() > 0.99
    assert cos_tiny.min() < 0.9          # 1e-6 per image is ~1e-8 per value: below float32's resolution


def test_step_losses_on_a_linear_model_match_the_equations():
    torch.manual_seed(0)
    w = 0.2 * torch.randn(2, 12)            # small logits: no saturated softmax
    net = Linear(w, torch.tensor([0.5, -0.5]))
    u = torch.randn(6, 3, 2, 2)
    batch = _batch(u, classes=2)
    # for two classes the direction is +-v for any xi; a larger xi keeps float32 rounding out of the check
    algo = VAT(2, eps=2.0, xi=1e-2, lambda_u=1.0, lambda_ent=0.5, unsup_warmup=0.0)
    torch.manual_seed(11)
    res = algo.step(net, batch, ctx())
    with torch.no_grad():
        logits_u = net(u)[0]
        v = (w[0] - w[1]) / (w[0] - w[1]).norm()
        torch.manual_seed(11)
        sign = torch.sign(torch.randn_like(u).flatten(1) @ v)            # the direction is sign(v . d0) v
        adv = net(u + 2.0 * (sign[:, None] * v).view_as(u))[0]
        q, p = torch.softmax(logits_u, -1), torch.softmax(adv, -1)
        lds = (q * (q.log() - p.log())).sum(-1).mean()
        ent = -(q * q.log()).sum(-1).mean()
        sup = F.cross_entropy(net(batch.x_l)[0], batch.y_l)
    assert res.losses["unsup"].item() == pytest.approx(lds.item(), rel=1e-4)
    assert res.losses["unsup"].item() > 1e-3
    assert res.losses["entmin"].item() == pytest.approx(0.5 * ent.item(), rel=1e-5)
    assert res.losses["sup"].item() == pytest.approx(sup.item(), rel=1e-5)
    assert res.stats["vat_lds"].item() == pytest.approx(lds.item(), rel=1e-4)
    assert res.stats["mask_ratio"].item() == 1.0
    # both unsupervised terms train the model
    (res.losses["unsup"] + res.losses["entmin"]).backward()
    assert net.fc.weight.grad.abs().sum() > 0


def test_ramp_and_weights():
    algo = VAT(3)                                   # USB: lambda_u 1, linear ramp over 40 %
    assert algo.unsup_weight(ctx(step=2, total=10)) == pytest.approx(0.5)
    assert algo.unsup_weight(ctx(step=0, total=10)) == 0.0
    assert algo.unsup_weight(ctx(step=4, total=10)) == 1.0
    assert VAT(3, unsup_warmup=0.0).unsup_weight(ctx(step=0, total=10)) == 1.0   # the paper: no ramp
    assert (algo.eps, algo.xi, algo.power_iterations, algo.lambda_ent) == (6.0, 1e-2, 1, 0.06)


# ----------------------------------------------------------------------------- batch norm, dropout, precision

def test_extra_passes_leave_bn_statistics_and_parameter_gradients_alone():
    torch.manual_seed(0)
    model = TinyNet().train()
    reference = copy.deepcopy(model)
    u = torch.randn(5, 3, 6, 6)
    batch = _batch(u)
    forward(reference, batch, "concat")              # what the trainer's own pass does to the statistics
    VAT(3).step(model, batch, ctx())
    for (name, a), b in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name
    assert all(p.grad is None for p in model.parameters())       # the power iteration touched no .grad
    assert model.training


def test_dropout_is_off_in_the_vat_passes_unless_asked():
    net = DropNet().train()
    u = torch.randn(8, 3, 2, 2)
    batch = _batch(u)
    # eps = 0: the adversarial input is the clean input, so without dropout the KL is exactly 0
    quiet = VAT(3, eps=0.0, unsup_warmup=0.0).step(net, batch, ctx())
    assert quiet.losses["unsup"].item() == pytest.approx(0.0, abs=1e-7)
    assert net.training and net.drop.training                     # modes restored
    noisy = VAT(3, eps=0.0, unsup_warmup=0.0, vat_dropout=True).step(net, batch, ctx())
    assert noisy.losses["unsup"].item() > 1e-3                    # independent masks differ
    with dropout_off(net):
        assert not net.drop.training and net.training
    assert net.drop.training


def test_power_iteration_runs_in_float32_under_autocast(monkeypatch):
    """xi = 1e-6 is lost when the input is cast to bf16: the target and power passes run with autocast off."""
    import sslzoo.algorithms.vat as vat_module
    torch.manual_seed(0)
    w = 0.2 * torch.randn(2, 12)            # small logits: no saturated softmax
    net, u = Linear(w), torch.randn(4, 3, 2, 2)
    directions = []
    real = vat_module.adversarial_direction
    monkeypatch.setattr(vat_module, "adversarial_direction",
                        lambda *a, **k: directions.append(real(*a, **k)) or directions[-1])
    algo = VAT(2, eps=1.0)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lds, target = algo.vat_loss(net, u)
    torch.manual_seed(5)
    algo.vat_loss(net, u)                                          # no autocast at all
    assert target.dtype == torch.float32 and torch.isfinite(lds)
    assert torch.equal(directions[0], directions[1]) and directions[0].abs().sum() > 0
    # what that prevents: the same power step inside bf16 autocast sees no change and gives no direction
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bad = real(net, u, net(u)[0].float(), 1e-6, 1)
    v = (w[0] - w[1]) / (w[0] - w[1]).norm()
    assert torch.allclose((directions[0].flatten(1) @ v).abs(), torch.ones(4), atol=1e-2)
    assert not torch.allclose((bad.flatten(1) @ v).abs(), torch.ones(4), atol=1e-2)


def test_unwrap_reaches_the_module():
    net = TinyNet()
    assert unwrap(net) is net
    wrapped = type("Compiled", (nn.Module,), {})()
    wrapped._orig_mod = net
    assert unwrap(wrapped) is net


# ----------------------------------------------------------------------------- config, sync-free, training

@pytest.mark.parametrize("bad, match", [
    ({"eps": -1.0}, "eps"), ({"xi": 0.0}, "xi"), ({"power_iterations": -1}, "power_iterations"),
    ({"power_iterations": 1.5}, "power_iterations"), ({"lambda_ent": -0.1}, "lambda_ent"),
    ({"unsup_warmup": -0.1}, "unsup_warmup"), ({"rampup": "cubic"}, "ramp"), ({"vat_dropout": "yes"}, "vat_dropout"),
])
def test_bad_hyperparameters_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        VAT(3, **bad)


@pytest.mark.parametrize("mode", ["concat", "separate"])
def test_step_reads_nothing_on_the_host(monkeypatch, mode):
    torch.manual_seed(0)
    model, batch = TinyNet().train(), _batch(torch.randn(5, 3, 6, 6))
    batch.u_true = torch.tensor([0, 1, 2, -1, 0])
    with monkeypatch.context() as m:
        forbid_host_reads(m)
        res = VAT(3).step(model, batch, ctx(mode=mode))
        total = sum(res.losses.values())
        total.backward()
    assert set(res.losses) == {"sup", "unsup", "entmin"}
    assert torch.isfinite(total)


def test_one_epoch_smoke_is_finite_and_reproducible(tmp_path):
    runs = runs_with_seeds(tmp_path, (0, 0, 1), algo="vat")
    entry = runs[0]["history"][-1]
    assert set(entry["losses"]) == {"total", "sup", "unsup", "entmin"}
    assert all(math.isfinite(v) for v in entry["losses"].values())
    assert entry["stats"]["vat_lds"] > 0 and math.isfinite(entry["stats"]["vat_entropy"])
    assert comparable(runs[0]["history"]) == comparable(runs[1]["history"])
    assert comparable(runs[0]["history"]) != comparable(runs[2]["history"])   # the comparison can fail


def test_resume_continues_exactly(tmp_path):
    """The random starts d_0 come from the trainer's seeded, checkpointed generator."""
    full, resumed, _, _ = straight_and_resumed(tmp_path, algo="vat", epochs=2, iters_per_epoch=2)
    assert comparable(resumed["history"]) == comparable(full["history"])


def test_two_process_gloo_run_agrees_across_ranks(tmp_path):
    """Two DDP forwards with gradient per step (the trainer's and the adversarial one) plus a power
    iteration on the unwrapped module: the run completes and every rank ends with the same weights."""
    import yaml

    from tests.conftest import TINY
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**TINY, "algo": "vat", "device": "cpu"}))
    out, dump = tmp_path / "run", tmp_path / "dump"
    train_two_processes(config, out, dump)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2
    assert all(math.isfinite(v) for v in metrics["history"][-1]["losses"].values())
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for part in ("model", "ema"):
        a, b = ranks[0][part], ranks[1][part]
        a, b = (a["module"], b["module"]) if "module" in a else (a, b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
