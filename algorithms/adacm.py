"""Ada-CM (Li et al., CVPR 2022): an adaptive confidence margin for semi-supervised FER.

    p~ = (p^a + p^b) / 2                                   Eq. (6), two weak views
    subset I  = {i : max p~_i >= T^t[argmax p~_i]}          margin T^t: policy "adacm", Eq. (4-5)
    L_u = CE(f(strong(u_i)), argmax p~_i) over subset I      Eq. (7)
    s(e^a, e^b) = cosine similarity of weak-view features  Eq. (8)
    L_c = InfoNCE over subset II (the rest), tau = 0.07      Eq. (9)
    L = 0.5 L_s + 1 L_u + 0.1 L_c                          Eq. (10)

Deviations, each with a switch (see docs/fidelity.md):
  * ``unsup_norm="batch"`` (default) divides L_u by the whole unlabeled batch, as the
    official code does (``(CE * mask).mean()``); ``"subset"`` is Eq. (7)'s 1/N_h.
  * ``contrast_anchors="both"`` (default) averages Eq. (9) over the weak-view-a anchors
    and the mirrored weak-view-b anchors, as the official code's SupCon/SimCLR loss does;
    ``"a"`` is Eq. (9) exactly as printed.
  * Subset II is every sample with weight 0 under the policy (a hard-mask policy makes
    it the complement of subset I; for soft policies, samples with any weight are "trusted").
  * The margin's official-code behaviours (0.8 floor, epoch offset, EMA model) live in
    ``sslzoo/policies/adacm_margin.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext, StepOutput,
                              labeled_probs, masked_ce, pseudo_label_stats, supervised_ce)
from sslzoo.distributed import DistContext
from sslzoo.registry import register_algorithm


def average_weak_predictions(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Eq. (6): mean of the two weak views' softmax (no gradient: it is a target)."""
    return (torch.softmax(logits_a.detach().float(), -1) + torch.softmax(logits_b.detach().float(), -1)) / 2


def info_nce(feats_a: Tensor, feats_b: Tensor, subset: Tensor, temperature: float = 0.07,
             anchors: str = "both", dist: DistContext | None = None) -> Tensor:
    """Eq. (8-9) over the samples flagged in ``subset``, as masked matrix products.

    For anchor a_i: -log( exp(s(a_i,b_i)/tau) / (sum_{j!=i} exp(s(a_i,a_j)/tau) + sum_k exp(s(a_i,b_k)/tau)) ),
    with i, j, k ranging over the subset only. ``anchors="both"`` also uses every b_i as an
    anchor (the mirrored term) and averages. Fewer than two samples give exactly 0.

    Under DDP (``dist``; None: the running process group) the subset is that of the GLOBAL
    batch, as the official code's single-process DataParallel loss sees it: every rank gathers
    all ranks' features (gradient through its own rows) and computes the whole loss, and
    ``replicated`` makes DDP's gradient average exactly the 1-process gradient.
    """
    dist = dist if dist is not None else DistContext.from_process_group()
    if dist.enabled:
        feats_a, feats_b = dist.gather_local_grad(feats_a.float()), dist.gather_local_grad(feats_b.float())
        subset = dist.gather(subset.float()) > 0
    n = feats_a.shape[0]
    z = F.normalize(torch.cat([feats_a, feats_b]).float(), dim=1)                     # Eq. (8)
    sim = z @ z.t() / temperature
    member = torch.cat([subset, subset]).bool()
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    allowed = member[None, :] & ~eye
    very_negative = torch.finfo(sim.dtype).min / 4
    log_denominator = torch.logsumexp(sim.masked_fill(~allowed, very_negative), dim=1)
    positive = torch.arange(2 * n, device=z.device).roll(n)                            # a_i <-> b_i
    per_anchor = log_denominator - sim.gather(1, positive[:, None]).squeeze(1)
    rows = member.clone()
    if anchors == "a":
        rows[n:] = False
    elif anchors != "both":
        raise ValueError(f"anchors must be 'a' or 'both', got {anchors!r}")
    enough = subset.sum() >= 2
    loss = torch.where(rows, per_anchor, torch.zeros_like(per_anchor)).sum() / rows.sum().clamp_min(1)
    return dist.replicated(torch.where(enough, loss, torch.zeros_like(loss)))


@register_algorithm("adacm")
class AdaCM(SSLAlgorithm):
    """Ada-CM: adaptive per-class margin; CE on confident samples, InfoNCE on the rest (CVPR 2022)."""

    name = "adacm"
    unlabeled_views = ("weak", "weak", "strong")
    default_policy = "adacm"
    uses_policy = True

    def __init__(self, num_classes: int, policy=None, lambda_sup: float = 0.5, lambda_u: float = 1.0,
                 lambda_c: float = 0.1, temperature: float = 0.07, unsup_norm: str = "batch",
                 contrast_anchors: str = "both"):
        super().__init__(num_classes, policy)
        self.lambda_sup, self.lambda_u, self.lambda_c = lambda_sup, lambda_u, lambda_c
        self.temperature, self.unsup_norm, self.contrast_anchors = temperature, unsup_norm, contrast_anchors

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)                     # Eq. (1)
        (logits_a, logits_b, logits_s), (feats_a, feats_b, _) = out.u_logits, out.u_feats
        p = average_weak_predictions(logits_a, logits_b)                                   # Eq. (6)
        pseudo = p.argmax(dim=-1)
        w = self.policy(PolicyInput(p, batch.u_index, sup_per_sample, labeled_probs(out)), ctx)               # subset I
        unsup = masked_ce(logits_s, pseudo, w, self.unsup_norm, ctx.dist)                  # Eq. (7)
        terms = {"sup": self.lambda_sup * sup, "unsup": self.lambda_u * unsup}
        if self.lambda_c:
            terms["contrast"] = self.lambda_c * info_nce(feats_a, feats_b, w == 0,        # Eq. (8-9)
                                                         self.temperature, self.contrast_anchors, ctx.dist)
        return StepOutput(terms, pseudo_label_stats(w, pseudo, batch.u_true))
