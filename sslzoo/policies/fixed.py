"""A fixed confidence threshold (FixMatch; the paper's "FT = 0.5 / 0.8 / 0.95" rows)."""
from __future__ import annotations

from torch import Tensor

from ..policy import PolicyInput, StepContext, ThresholdPolicy
from ..registry import register_policy


@register_policy("fixed")
class FixedThreshold(ThresholdPolicy):
    """Trust a sample when max p >= tau, the same tau for every class (FixMatch)."""

    name = "fixed"
    spec_arg = "threshold"

    def __init__(self, threshold: float = 0.95):
        self.threshold = float(threshold)

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        return (inp.probs.max(dim=-1).values >= self.threshold).float()

    def thresholds(self) -> Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}


@register_policy("all")
class TrustAll(ThresholdPolicy):
    """Trust every unlabeled sample with weight 1 (no thresholding)."""

    name = "all"

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        return inp.probs.new_ones(inp.probs.shape[0])
