"""FixMatch (Sohn et al., NeurIPS 2020).

    q = softmax(f(weak(u)))                  (pseudo-label distribution, no gradient)
    L_u = 1/(mu B) * sum_b w_b * CE(argmax q_b, f(strong(u_b)))
    w_b = policy(q_b)  — fixed: 1[max q_b >= 0.95]
    L = L_s + lambda_u * L_u

Normalized by the whole unlabeled batch, as in its paper (``unsup_norm="batch"``).
The policy always sees the unsharpened q, as in the paper and USB: the temperature T
only shapes soft targets. ``use_hard_label=False`` trains on the soft target
softmax(f(weak(u)) / T) instead of argmax q (the paper's sharpening variant; USB HEAD's
soft mode passes q through unchanged, which is T = 1 here).
"""
from __future__ import annotations

import torch
from torch import Tensor

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext, StepOutput,
                              labeled_probs, masked_ce, pseudo_label_stats, supervised_ce)
from sslzoo.registry import register_algorithm


@register_algorithm("fixmatch")
class FixMatch(SSLAlgorithm):
    """FixMatch: confident weak-view pseudo-labels supervise the strong view (fixed 0.95)."""

    name = "fixmatch"
    unlabeled_views = ("weak", "strong")
    default_policy = "fixed:0.95"
    uses_policy = True

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, temperature: float = 1.0,
                 unsup_norm: str = "batch", use_hard_label: bool = True):
        super().__init__(num_classes, policy)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.lambda_u, self.temperature, self.unsup_norm = lambda_u, temperature, unsup_norm
        self.use_hard_label = bool(use_hard_label)

    def weak_to_strong(self, out: ForwardOutput, batch: Batch,
                       ctx: StepContext) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The terms L_s and lambda_u L_u, plus the weights w and pseudo-labels (for subclasses' extra terms)."""
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        logits_weak, logits_strong = out.u_logits
        q = torch.softmax(logits_weak.detach().float(), dim=-1)                 # unsharpened: the mask's input
        pseudo = q.argmax(dim=-1)
        w = self.policy(PolicyInput(q, batch.u_index, sup_per_sample, labeled_probs(out)), ctx)
        targets = pseudo if self.use_hard_label else torch.softmax(logits_weak.detach().float() / self.temperature, -1)
        unsup = masked_ce(logits_strong, targets, w, self.unsup_norm)
        return {"sup": sup, "unsup": self.lambda_u * unsup}, w, pseudo

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        terms, w, pseudo = self.weak_to_strong(out, batch, ctx)
        return StepOutput(terms, pseudo_label_stats(w, pseudo, batch.u_true))
