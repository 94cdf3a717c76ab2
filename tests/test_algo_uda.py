"""UDA: sharpened targets (guard), confidence mask, soft CE / KL, TSA schedule and mask, smoke run."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.uda import UDA, soft_consistency, tsa_supervised_loss, tsa_threshold
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.trainer import build_algorithm, train


def ctx(step=0, total=10, classes=2) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=total, iters_per_epoch=total,
                       num_classes=classes)


def test_guard_temperature_sharpens_the_weak_targets():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.3, 0.2, 0.1]])
    p_04, q_04 = UDA(3, T=0.4).targets(logits)
    p_1, q_1 = UDA(3, T=1.0).targets(logits)
    assert torch.allclose(q_04, torch.softmax(logits / 0.4, -1)) and torch.allclose(q_1, torch.softmax(logits, -1))
    assert not torch.allclose(q_04, q_1)
    assert bool((q_04.max(-1).values > q_1.max(-1).values).all())        # sharper: larger top probability
    entropy = lambda q: -(q * q.log()).sum(-1)                             # noqa: E731
    assert bool((entropy(q_04) < entropy(q_1)).all())
    assert torch.allclose(p_04, p_1)                                       # the mask input is not sharpened
    # by hand, row 0: exp([5, 2.5, 0]) / sum
    e = torch.tensor([math.exp(5), math.exp(2.5), 1.0])
    assert torch.allclose(q_04[0], e / e.sum())


def test_sharpened_targets_reach_the_loss():
    weak = torch.log(torch.tensor([[0.7, 0.3]]))
    strong = torch.log(torch.tensor([[0.5, 0.5]]))
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 1), [weak, strong], [torch.zeros(1, 1)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(1), torch.tensor([0]))
    losses = [UDA(2, build_policy("fixed:0.5"), T=t).losses(out, batch, ctx()).losses["unsup"].item()
              for t in (0.4, 1.0)]
    # CE against a uniform prediction is log 2 whatever the target: use the KL form to see the target
    kl = [UDA(2, build_policy("fixed:0.5"), T=t, consistency="kl").losses(out, batch, ctx()).losses["unsup"].item()
          for t in (0.4, 1.0)]
    q = torch.softmax(torch.log(torch.tensor([0.7, 0.3])) / 0.4, -1)
    assert losses[0] == pytest.approx(math.log(2), rel=1e-5)
    assert kl[0] == pytest.approx((q * (q / 0.5).log()).sum().item(), rel=1e-4)
    assert kl[0] > kl[1] > 0


def test_confidence_mask_and_batch_normalized_soft_ce():
    weak = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.15, 0.85]]))
    strong = torch.log(torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.25, 0.75]]))
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 1), [weak, strong], [torch.zeros(3, 1)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(3), torch.tensor([0, 0, 1]))
    res = UDA(2, build_policy("fixed:0.8"), T=0.4).losses(out, batch, ctx())
    q = torch.softmax(weak / 0.4, -1)
    # rows 0 (0.9) and 2 (0.85) pass 0.8; divided by the whole batch of 3
    expected = -(q[0] * strong[0]).sum() - (q[2] * strong[2]).sum()
    assert res.losses["unsup"].item() == pytest.approx(expected.item() / 3, rel=1e-5)
    assert res.stats["mask_ratio"].item() == pytest.approx(2 / 3)
    assert res.stats["pseudo_label_acc"].item() == 100.0


def test_kl_differs_from_ce_by_the_target_entropy():
    logits = torch.randn(4, 3)
    q = torch.softmax(torch.randn(4, 3), -1)
    w = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ce, kl = soft_consistency(logits, q, w, "ce"), soft_consistency(logits, q, w, "kl")
    h = -(q * q.log()).sum(-1)
    assert (ce - kl).item() == pytest.approx(((h * w).sum() / 4).item(), rel=1e-5)


def test_tsa_schedule_values():
    c = 4
    assert tsa_threshold("none", 0.3, c) == 1.0
    assert tsa_threshold("linear", 0.5, c) == pytest.approx(0.5 * 0.75 + 0.25)
    assert tsa_threshold("log", 0.5, c) == pytest.approx((1 - math.exp(-2.5)) * 0.75 + 0.25)
    assert tsa_threshold("exp", 0.5, c) == pytest.approx(math.exp(-2.5) * 0.75 + 0.25)
    assert tsa_threshold("linear", 1.0, c) == pytest.approx(1.0) and tsa_threshold("exp", 1.0, c) == pytest.approx(1.0)
    assert tsa_threshold("log", 1.0, c) == pytest.approx((1 - math.exp(-5)) * 0.75 + 0.25)   # 0.995, not 1
    assert tsa_threshold("linear", 0.0, c) == pytest.approx(0.25)           # starts at 1/K
    assert tsa_threshold("log", 0.0, c) == pytest.approx(0.25)
    assert tsa_threshold("exp", 0.0, c) == pytest.approx(math.exp(-5) * 0.75 + 0.25)
    # log releases early, exp late
    assert tsa_threshold("log", 0.2, c) > tsa_threshold("linear", 0.2, c) > tsa_threshold("exp", 0.2, c)
    with pytest.raises(ValueError):
        tsa_threshold("cosine", 0.5, c)


def test_tsa_masks_confident_correct_labeled_samples():
    # correct-class probabilities 0.9, 0.3, 0.6 (labels 0, 0, 1)
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]]))
    y = torch.tensor([0, 0, 1])
    loss, keep, per_sample = tsa_supervised_loss(logits, y, eta=0.625)
    assert keep.tolist() == [0.0, 1.0, 1.0]
    assert loss.item() == pytest.approx((-math.log(0.3) - math.log(0.6)) / 2, rel=1e-5)
    assert per_sample.tolist() == pytest.approx([-math.log(0.9), -math.log(0.3), -math.log(0.6)], rel=1e-5)
    # a wrong but confident prediction is kept (the paper masks by the CORRECT class)
    _, keep2, _ = tsa_supervised_loss(torch.log(torch.tensor([[0.05, 0.95]])), torch.tensor([0]), eta=0.6)
    assert keep2.tolist() == [1.0]
    # all masked: zero loss, not NaN
    loss3, _, _ = tsa_supervised_loss(torch.log(torch.tensor([[0.99, 0.01]])), torch.tensor([0]), eta=0.5)
    assert loss3.item() == 0.0


def test_tsa_in_losses_uses_training_progress():
    logits_l = torch.log(torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
    out = ForwardOutput(logits_l, torch.zeros(2, 1), [torch.zeros(1, 2), torch.zeros(1, 2)], [torch.zeros(1, 1)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 0]), [], torch.arange(1), torch.tensor([-1]))
    algo = UDA(2, build_policy("fixed:0.8"), tsa_schedule="linear")
    early = algo.losses(out, batch, ctx(step=2, total=10))   # eta = 0.2 * 0.5 + 0.5 = 0.6: row 0 masked
    assert early.losses["sup"].item() == pytest.approx(-math.log(0.3), rel=1e-5)
    assert early.stats["tsa_keep_ratio"].item() == 0.5
    late = algo.losses(out, batch, ctx(step=10, total=10))   # eta = 1: nothing masked
    assert late.losses["sup"].item() == pytest.approx((-math.log(0.9) - math.log(0.3)) / 2, rel=1e-5)


def test_policy_swap_and_bad_settings(tiny, tmp_path):
    assert build_algorithm(tiny(tmp_path, algo="uda"), 7).policy.threshold == 0.8
    assert build_algorithm(tiny(tmp_path, algo="uda", policy="fixed:0.6"), 7).policy.threshold == 0.6
    with pytest.raises(SSLZooError, match="tsa_schedule"):
        build_algorithm(tiny(tmp_path, algo="uda", uda={"tsa_schedule": "cosine"}), 7)


def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="uda", policy="fixed:0.2", uda={"tsa_schedule": "linear"}))
    assert metrics["status"] == "finished"
    losses = metrics["history"][-1]["losses"]
    assert {"sup", "unsup"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
