"""Pseudo-Label (Lee, ICML-W 2013): the model's own confident hard labels as targets.

    q = softmax(f(weak(u)))                       (no gradient)
    y^_b = argmax q_b
    w_b = policy(q_b)  — fixed: 1[max q_b >= 0.95]
    L_u = 1/(mu B) * sum_b w_b * CE(y^_b, f(weak(u_b)))     (same view: no consistency)
    L = L_s + lambda_u * r(t) * L_u,  r(t) = clip(t / (unsup_warmup * T_total), 0, 1)

Lee's paper uses every unlabeled sample (no threshold) and ramps alpha(t) from 0 to 3
between fixed epochs. We follow the USB convention (semilearn/algorithms/pseudolabel,
config/classic_cv/pseudolabel): a 0.95 confidence threshold (here the policy
"fixed:0.95", so ``--set policy=flexmatch`` etc. swap it), lambda_u = 1, a linear ramp
over the first 40% of training (``unsup_warmup=0.4``), CE normalized by the whole
unlabeled batch. The pseudo-label and the prediction come from the same weak view
and the same forward pass (the target is detached). ``--set policy=all`` recovers
Lee's unthresholded version.
"""
from __future__ import annotations

import torch

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext, StepOutput,
                              labeled_probs, masked_ce, pseudo_label_stats, supervised_ce)
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm


@register_algorithm("pseudolabel")
class PseudoLabel(SSLAlgorithm):
    """Pseudo-Label: confident argmax labels of the weak view supervise that same view."""

    name = "pseudolabel"
    unlabeled_views = ("weak",)
    default_policy = "fixed:0.95"
    uses_policy = True

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, unsup_warmup: float = 0.4,
                 rampup: str = "linear", unsup_norm: str = "batch"):
        super().__init__(num_classes, policy)
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        if unsup_norm not in ("batch", "subset"):
            raise ValueError(f"unsup_norm must be 'batch' or 'subset'; got {unsup_norm!r}")
        self.lambda_u, self.unsup_warmup, self.unsup_norm = lambda_u, unsup_warmup, unsup_norm
        self.rampup = check_ramp(rampup)

    def unsup_weight(self, ctx: StepContext) -> float:
        """lambda_u * r(t): the ramped weight of the unlabeled term at this step."""
        return self.lambda_u * warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        (logits_u,) = out.u_logits
        q = torch.softmax(logits_u.detach().float(), dim=-1)
        pseudo = q.argmax(dim=-1)
        w = self.policy(PolicyInput(q, batch.u_index, sup_per_sample, labeled_probs(out)), ctx)
        unsup = masked_ce(logits_u, pseudo, w, self.unsup_norm)
        return StepOutput({"sup": sup, "unsup": self.unsup_weight(ctx) * unsup},
                          pseudo_label_stats(w, pseudo, batch.u_true))
