"""DeFixMatch (Schmutz, Humbert & Mattei, ICLR 2023): FixMatch with a debiased unlabeled risk.

With w(.) the threshold policy (default ``fixed:0.95``) and the same loss H on both sides:

    q_u = softmax(f(weak(u)))   q_l = softmax(f(weak(x)))               (no gradient)
    H(u_b) = w(q_u[b]) * CE(argmax q_u[b], f(strong(u_b)))               FixMatch's per-image unlabeled loss
    H(x_i) = w(q_l[i]) * CE(argmax q_l[i], f(strong(x_i)))               the same loss on a LABELED image,
                                                                         its label unused
    L_s   = 1/2 * [ 1/B sum_i CE(y_i, f(weak(x_i))) + 1/B sum_i CE(y_i, f(strong(x_i))) ]
    L_u   = 1/(mu B) sum_b H(u_b)
    L_deb = 1/B sum_i H(x_i)
    L = L_s + lambda * (L_u - L_deb),   lambda = 0.5

Why it is unbiased: when the labeled images are a random subset of the same distribution
as the unlabeled ones, E[L_deb] = E[L_u], so the added term lambda (L_u - L_deb) has
expectation 0 and L is an unbiased estimate of the supervised risk (L_u acts as a control
variate). The losses come back as three named terms: ``sup`` = L_s, ``unsup`` = lambda L_u and
``debias`` = -lambda L_deb (always <= 0); the trainer sums them.

It can go negative: lambda (L_u - L_deb) < 0 whenever the labeled strong views pay more
trusted cross-entropy than the unlabeled ones, and even the total L can be negative (a
labeled image confidently predicted as a wrong class makes -lambda CE(wrong, f(strong(x)))
unbounded below). The paper, its official code (HugoSchmutz/DeFixmatch) and USB
(semilearn/algorithms/defixmatch) all use the difference as it is, with no clamp (unlike
non-negative PU risk estimators); so does sslzoo. A non-finite loss stops the run through
the trainer's divergence check, as for every algorithm.

Choices, and what they follow:
  * Labeled strong view: each labeled image is drawn a second time with strong augmentation
    (``extra_labeled_views = ("strong",)``); it carries both the second half of L_s and the
    debiasing term, as in the official code and USB (``x_lb_s``). The labeled pseudo-label is
    the argmax of the labeled WEAK prediction, never the label y (H does not see labels).
  * lambda = 0.5 (USB's configs and the official README): L_s averages two views, so 0.5
    keeps FixMatch's lambda = 1 balance per view. ``defixmatch.sup_strong=false`` trains L_s
    on the weak view only (FixMatch's L_s; then lambda = 1 is FixMatch's scale).
  * ``defixmatch.debias=false`` drops L_deb: the official code's ``--modified_fixmatch``
    baseline (FixMatch with the two-view L_s).
  * The labeled mask uses the same policy as the unlabeled one, evaluated on q_l with the
    policy's state of this step (weights only: the labeled batch never updates a policy's
    memory or EMAs, and gets ``index=None``). With the default fixed threshold this is USB's
    and the official code's single ``p_cutoff`` for both.
  * Normalization: L_u by the unlabeled batch and L_deb by the labeled batch (USB's and the
    official ``consistency_loss`` means); ``unsup_norm="subset"`` divides each by its own
    trusted weight instead.
  * Forward: ONE concatenated pass over [x, weak(u), strong(u), strong(x)] (USB's ``use_cat``;
    the order inside the concatenation does not change batch-norm statistics), or one pass
    per input with ``forward_mode=separate``.
  * Soft targets (``use_hard_label=false``) as in FixMatch here: softmax(logits / T) for both
    sides; the policy always sees the unsharpened q.

Statistics: ``mask_ratio`` / ``pseudo_label_acc`` for the unlabeled batch, and
``mask_ratio_labeled`` / ``pseudo_label_acc_labeled`` (how often the trusted labeled pseudo-label
equals y) for the debiasing side (USB logs the first as ``util_ratio_lb``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, StepContext, StepOutput, masked_ce,
                              pseudo_label_stats, supervised_ce)
from sslzoo.registry import register_algorithm

from .fixmatch import FixMatch


def forward_with_labeled_views(model: nn.Module, batch: Batch,
                               mode: str = "concat") -> tuple[ForwardOutput, list[Tensor], list[Tensor]]:
    """Like ``sslzoo.algorithm.forward``, plus the extra labeled views (``batch.l_views``).

    "concat": ONE pass over [x_l, *u_views, *l_views]; "separate": one pass per input.
    Returns the usual ForwardOutput and the logits and features of each extra labeled view.
    With no extra labeled view it is exactly ``forward``.
    """
    inputs = [batch.x_l, *batch.u_views, *batch.l_views]
    if mode == "concat":
        logits, feats = model(torch.cat(inputs))
        sizes = [x.shape[0] for x in inputs]
        logits_parts, feat_parts = list(logits.split(sizes)), list(feats.split(sizes))
    elif mode == "separate":
        outs = [model(x) for x in inputs]
        logits_parts, feat_parts = [o[0] for o in outs], [o[1] for o in outs]
    else:
        raise ValueError(f"forward_mode must be 'concat' or 'separate', got {mode!r}")
    n_u = len(batch.u_views)
    out = ForwardOutput(logits_parts[0], feat_parts[0], logits_parts[1:1 + n_u], feat_parts[1:1 + n_u])
    return out, logits_parts[1 + n_u:], feat_parts[1 + n_u:]


@register_algorithm("defixmatch")
class DeFixMatch(FixMatch):
    """DeFixMatch: FixMatch's unlabeled loss minus the same loss on the labeled images (debiasing)."""

    name = "defixmatch"
    unlabeled_views = ("weak", "strong")
    extra_labeled_views = ("strong",)
    default_policy = "fixed:0.95"
    uses_policy = True

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 0.5, temperature: float = 1.0,
                 unsup_norm: str = "batch", use_hard_label: bool = True, sup_strong: bool = True,
                 debias: bool = True):
        super().__init__(num_classes, policy, lambda_u=lambda_u, temperature=temperature, unsup_norm=unsup_norm,
                         use_hard_label=use_hard_label)
        if unsup_norm not in ("batch", "subset"):
            raise ValueError(f"unsup_norm must be 'batch' or 'subset'; got {unsup_norm!r}")
        if lambda_u < 0:
            raise ValueError(f"lambda_u weighs both the unlabeled and the debiasing term; it must be >= 0, "
                             f"got {lambda_u}")
        self.sup_strong, self.debias = bool(sup_strong), bool(debias)
        # No term reads the labeled strong view: do not ask the pipeline for it.
        self.extra_labeled_views = ("strong",) if (self.sup_strong or self.debias) else ()

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        if len(batch.l_views) != len(self.extra_labeled_views):
            raise ValueError(f"DeFixMatch expects {len(self.extra_labeled_views)} extra labeled view(s) "
                             f"{self.extra_labeled_views}, got {len(batch.l_views)}.")
        out, l_logits, _ = forward_with_labeled_views(model, batch, ctx.forward_mode)
        return self.losses(out, batch, ctx, l_logits[0] if l_logits else None)

    def _targets(self, logits_weak: Tensor, pseudo: Tensor) -> Tensor:
        if self.use_hard_label:
            return pseudo
        return torch.softmax(logits_weak.detach().float() / self.temperature, dim=-1)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext,
               logits_l_strong: Tensor | None = None) -> StepOutput:
        """L_s, lambda L_u and -lambda L_deb; ``logits_l_strong`` are f(strong(x)) for the labeled batch."""
        if logits_l_strong is None and (self.sup_strong or self.debias):
            raise ValueError("DeFixMatch needs the logits of the labeled batch's strong view "
                             "(logits_l_strong); its step() computes them from batch.l_views.")
        sup_weak, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        sup = 0.5 * (sup_weak + F.cross_entropy(logits_l_strong, batch.y_l)) if self.sup_strong else sup_weak
        logits_weak, logits_strong = out.u_logits
        q_u = torch.softmax(logits_weak.detach().float(), dim=-1)            # unsharpened: the mask's input
        q_l = torch.softmax(out.logits_l.detach().float(), dim=-1)
        inp_u = PolicyInput(q_u, batch.u_index, sup_per_sample, q_l)
        inp_l = PolicyInput(q_l, None, sup_per_sample, q_l)
        # The policy's own order for the unlabeled batch; the labeled batch is weighed with the
        # same state and never updates it.
        if self.policy.update_first:
            self.policy.update(inp_u, ctx)
        w_u = self.policy.weights(inp_u, ctx)
        w_l = self.policy.weights(inp_l, ctx) if self.debias else None
        if not self.policy.update_first:
            self.policy.update(inp_u, ctx)
        pseudo_u = q_u.argmax(dim=-1)
        unsup = masked_ce(logits_strong, self._targets(logits_weak, pseudo_u), w_u, self.unsup_norm)
        terms = {"sup": sup, "unsup": self.lambda_u * unsup}
        stats = pseudo_label_stats(w_u, pseudo_u, batch.u_true)
        if self.debias:
            pseudo_l = q_l.argmax(dim=-1)
            anti = masked_ce(logits_l_strong, self._targets(out.logits_l, pseudo_l), w_l, self.unsup_norm)
            terms["debias"] = -self.lambda_u * anti
            labeled = pseudo_label_stats(w_l, pseudo_l, batch.y_l)
            stats["mask_ratio_labeled"] = labeled["mask_ratio"]
            stats["pseudo_label_acc_labeled"] = labeled["pseudo_label_acc"]
        return StepOutput(terms, stats)
