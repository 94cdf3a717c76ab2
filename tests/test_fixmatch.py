"""FixMatch's mask and loss on hand-checkable tensors."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.fixmatch import FixMatch
from sslzoo.policies import build_policy

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=2)


def test_fixed_threshold_mask_and_batch_normalized_loss():
    weak = torch.log(torch.tensor([[0.97, 0.03], [0.6, 0.4], [0.02, 0.98], [0.5, 0.5]]))
    strong = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.25, 0.75], [0.3, 0.7]]))
    algo = FixMatch(2, build_policy("fixed:0.95"))
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 3), [weak, strong], [torch.zeros(4, 3)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(4), torch.tensor([0, 0, 1, 1]))
    res = algo.losses(out, batch, CTX)
    # trusted: rows 0 (0.97) and 2 (0.98); loss over the WHOLE unlabeled batch of 4
    expected = (-math.log(0.5) - math.log(0.75)) / 4
    assert res.losses["unsup"].item() == pytest.approx(expected, rel=1e-6)
    assert res.stats["mask_ratio"].item() == pytest.approx(0.5)
    assert res.losses["sup"].item() == pytest.approx(math.log(2), rel=1e-6)


def test_policy_spec_parsing_and_errors():
    from sslzoo.errors import SSLZooError
    assert build_policy("fixed:0.8").threshold == 0.8
    assert build_policy({"name": "fixed", "threshold": 0.5}).threshold == 0.5
    with pytest.raises(SSLZooError, match="not a number"):
        build_policy("fixed:abc")
    with pytest.raises(SSLZooError, match="Did you mean 'fixed'"):
        build_policy("fixd:0.5")
    with pytest.raises(SSLZooError, match="Unknown parameter"):
        build_policy("fixed", {"treshold": 0.3})


def test_temperature_shapes_soft_targets_never_the_mask():
    """T sharpens the soft targets only; the policy thresholds the unsharpened q (FixMatch, USB).

    Row 0: q = (0.9, 0.1) < 0.95, so it is not trusted; at T = 0.5 softmax(logits / T)
    is (0.988, 0.012), which the old code thresholded (trusting it).
    """
    weak = torch.log(torch.tensor([[0.9, 0.1], [0.99, 0.01]]))
    strong = torch.log(torch.tensor([[0.5, 0.5], [0.8, 0.2]]))
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 3), [weak, strong], [torch.zeros(2, 3)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(2), torch.tensor([0, 0]))
    hard = FixMatch(2, build_policy("fixed:0.95"), temperature=0.5).losses(out, batch, CTX)
    assert hard.stats["mask_ratio"].item() == pytest.approx(0.5)                  # only row 1
    assert hard.losses["unsup"].item() == pytest.approx(-math.log(0.8) / 2, rel=1e-6)
    soft = FixMatch(2, build_policy("fixed:0.95"), temperature=0.5, use_hard_label=False).losses(out, batch, CTX)
    t = torch.tensor([0.99, 0.01]) ** 2
    t = t / t.sum()                                                                 # softmax(log q / 0.5)
    expected = -(t[0] * math.log(0.8) + t[1] * math.log(0.2)) / 2
    assert soft.stats["mask_ratio"].item() == pytest.approx(0.5)
    assert soft.losses["unsup"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pseudo_label_accuracy_is_nan_without_trusted_samples():
    from sslzoo.algorithm import pseudo_label_stats
    stats = pseudo_label_stats(torch.zeros(3), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert stats["mask_ratio"].item() == 0.0 and math.isnan(stats["pseudo_label_acc"].item())
    stats = pseudo_label_stats(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 1]), torch.tensor([0, 1, -1]))
    assert stats["pseudo_label_acc"].item() == pytest.approx(50.0)
