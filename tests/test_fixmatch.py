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
