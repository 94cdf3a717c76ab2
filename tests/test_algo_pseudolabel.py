"""Pseudo-Label: threshold mask, same-view CE, the linear ramp (sslzoo/ramps.py), policy swap, smoke run."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.pseudolabel import PseudoLabel
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.ramps import linear_rampup, rampup, warmup_factor
from sslzoo.trainer import build_algorithm, train


def ctx(step: int, total: int = 10) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=total, iters_per_epoch=total, num_classes=2)


def test_linear_ramp_values():
    assert linear_rampup(0, 10) == 0.0
    assert linear_rampup(4, 10) == pytest.approx(0.4)
    assert linear_rampup(10, 10) == 1.0 and linear_rampup(25, 10) == 1.0
    assert linear_rampup(3, 0) == 1.0                      # no ramp
    assert rampup("none", 0, 10) == 1.0
    # USB: clip(it / (unsup_warm_up * num_train_iter)); 0.4 of 10 steps = 4 steps
    assert [warmup_factor("linear", s, 10, 0.4) for s in (0, 1, 2, 4, 9)] == pytest.approx([0, 0.25, 0.5, 1, 1])
    with pytest.raises(ValueError, match="ramp-up"):
        rampup("cosine", 1, 2)


def _example():
    # weak-view logits of 4 unlabeled samples; rows 0 and 2 are confident (>= 0.95)
    probs = torch.tensor([[0.97, 0.03], [0.6, 0.4], [0.02, 0.98], [0.5, 0.5]])
    logits_u = torch.log(probs).requires_grad_(True)
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 3), [logits_u], [torch.zeros(4, 3)])
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [torch.zeros(4, 3, 2, 2)], torch.arange(4),
                  torch.tensor([0, 1, 0, -1]))
    return logits_u, out, batch


def test_mask_same_view_ce_and_ramped_weight():
    logits_u, out, batch = _example()
    algo = PseudoLabel(2, build_policy("fixed:0.95"))
    res = algo.losses(out, batch, ctx(step=2))              # ramp 2 / (0.4 * 10) = 0.5
    # trusted rows 0, 2 against their own argmax; normalized by the whole unlabeled batch (4)
    expected = 0.5 * (-math.log(0.97) - math.log(0.98)) / 4
    assert res.losses["unsup"].item() == pytest.approx(expected, rel=1e-5)
    assert res.losses["sup"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert res.stats["mask_ratio"].item() == pytest.approx(0.5)
    assert res.stats["pseudo_label_acc"].item() == pytest.approx(50.0)   # row 0 right, row 2 wrong
    # the gradient reaches the weak view's logits (the prediction, not the detached target)
    res.losses["unsup"].backward()
    assert logits_u.grad is not None and logits_u.grad[[0, 2]].abs().sum() > 0
    assert logits_u.grad[[1, 3]].abs().sum() == 0          # untrusted rows contribute nothing


def test_no_unlabeled_signal_at_step_zero_and_full_weight_after_warmup():
    _, out, batch = _example()
    algo = PseudoLabel(2, build_policy("fixed:0.95"), lambda_u=2.0)
    assert algo.losses(out, batch, ctx(step=0)).losses["unsup"].item() == 0.0
    full = algo.losses(out, batch, ctx(step=8)).losses["unsup"].item()
    assert full == pytest.approx(2.0 * (-math.log(0.97) - math.log(0.98)) / 4, rel=1e-5)


def test_policy_is_swappable_and_settings_checked(tiny, tmp_path):
    algo = build_algorithm(tiny(tmp_path, algo="pseudolabel"), 7)
    assert algo.policy.threshold == 0.95
    assert build_algorithm(tiny(tmp_path, algo="pseudolabel", policy="fixed:0.5"), 7).policy.threshold == 0.5
    assert type(build_algorithm(tiny(tmp_path, algo="pseudolabel", policy="flexmatch"), 7).policy).__name__ \
        != "FixedThreshold"
    with pytest.raises(SSLZooError, match="rampup|ramp-up"):
        build_algorithm(tiny(tmp_path, algo="pseudolabel", pseudolabel={"rampup": "cosine"}), 7)


def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="pseudolabel", policy="fixed:0.2"))
    assert metrics["status"] == "finished"
    losses = metrics["history"][-1]["losses"]
    assert {"sup", "unsup"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
    assert metrics["history"][-1]["mask_ratio"] is not None
