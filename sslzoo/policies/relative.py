"""AdaMatch's relative confidence threshold (Berthelot et al., ICLR 2022, Sec. 3.2).

With p_l the softmax of the labeled batch's weak-view logits (``PolicyInput.labeled_probs``)
and q the pseudo-label distribution of the unlabeled batch (``PolicyInput.probs``; under the
adamatch algorithm, q is already distribution-aligned):

    c_tau = tau * (1 / B_l) * sum_i max_c p_l[i, c]      relative threshold, tau = 0.95
    w_b   = 1[max_c q[b, c] >= c_tau]

The threshold follows the model's confidence on data whose labels it is trained on: early
in training, when even labeled images get low confidence, it is low; it approaches tau as
the labeled predictions become confident.

Choices, and what they follow:
  * tau = 0.95 by default: USB (``p_cutoff``, every benchmark config). The AdaMatch paper and
    its official code (google-research/adamatch, ``--confidence``) use 0.9: ``policy=relative:0.9``.
  * The labeled confidence is computed without gradient (``PolicyInput`` is detached), as the
    official code's ``stop_gradient`` and USB's ``torch.no_grad`` hook do; it comes from the
    labeled WEAK view, unaligned, as in both.
  * ``>=``, as USB (``ge``) and the official code.
  * Distributed: the labeled mean confidence is averaged over ranks (``global_mean=True``),
    so every rank applies the threshold of the global labeled batch, as the paper's "mean over
    the batch" reads. USB's hook and the official (pmap) code use each device's own labeled
    batch: ``policies.relative.global_mean=false``. With one process both are the same.
  * Stateless: nothing to save for an exact resume. The last threshold is kept (a tensor,
    no host read) only for the per-epoch ``policy_stats`` (``relative_threshold``).

The policy needs ``labeled_probs``; an algorithm that does not pass it gets a ValueError that
says so at its first step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..policy import PolicyInput, StepContext, ThresholdPolicy
from ..registry import register_policy


@register_policy("relative")
class RelativeThreshold(ThresholdPolicy):
    """AdaMatch: trust max q >= tau x (mean max-confidence of the labeled weak batch)."""

    name = "relative"
    spec_arg = "threshold"   # "relative:0.9" sets tau = 0.9

    def __init__(self, threshold: float = 0.95, global_mean: bool = True):
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"The relative threshold's tau must be in (0, 1]; got {threshold}")
        self.threshold, self.global_mean = float(threshold), bool(global_mean)
        self.cutoff = torch.tensor(float("nan"))   # c_tau at the latest step (logging only)

    def cutoff_for(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        """c_tau for this step, from the labeled batch (averaged over ranks when ``global_mean``)."""
        if inp.labeled_probs is None:
            raise ValueError("The 'relative' policy (AdaMatch) scales its threshold by the model's mean "
                             "confidence on the labeled batch, PolicyInput.labeled_probs, which this "
                             "algorithm does not pass. Use it with an algorithm that does (adamatch, "
                             "defixmatch), or pick another policy.")
        mean_conf = inp.labeled_probs.detach().float().max(dim=-1).values.mean()
        if self.global_mean:   # equal labeled batches on every rank: the mean of means is the global mean
            mean_conf = ctx.dist.all_reduce(mean_conf, op="mean")
        return self.threshold * mean_conf

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        cutoff = self.cutoff_for(inp, ctx).to(inp.probs.device)
        self.cutoff = cutoff.detach()
        return (inp.probs.max(dim=-1).values >= cutoff).float()

    def extra_stats(self) -> dict[str, float]:
        value = float(self.cutoff)
        return {"relative_threshold": value} if math.isfinite(value) else {}
