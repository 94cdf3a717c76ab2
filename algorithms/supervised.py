"""Supervised baseline: labeled data only (the paper's "Baseline" rows, Eq. 1)."""
from __future__ import annotations

from sslzoo.algorithm import Batch, ForwardOutput, SSLAlgorithm, StepContext, StepOutput, supervised_ce
from sslzoo.registry import register_algorithm


@register_algorithm("supervised")
class Supervised(SSLAlgorithm):
    """Labeled data only, cross-entropy (the paper's Baseline)."""

    name = "supervised"
    unlabeled_views = ()

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        sup, _ = supervised_ce(out.logits_l, batch.y_l)
        return StepOutput({"sup": sup})
