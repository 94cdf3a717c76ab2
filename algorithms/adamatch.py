"""AdaMatch (Berthelot, Roelofs, Sohn, Carlini & Kurakin, ICLR 2022), semi-supervised variant.

    p_l  = softmax(f(weak(x)))      q = softmax(f(weak(u)))                       (no gradient)
    p~_l <- m p~_l + (1 - m) mean_i p_l[i]     p~_u <- m p~_u + (1 - m) mean_b q[b]   EMAs, m = 0.999
    q~   = Normalize(q * (p~_l + eps) / (p~_u + eps)),  eps = 1e-6               distribution alignment
    c_tau = tau * mean_i max_c p_l[i, c],  tau = 0.95                            relative threshold,
    w_b  = 1[max q~_b >= c_tau]                                                  policy "relative"
    L_u  = 1/(mu B) sum_b w_b * CE(argmax q~_b, f(strong(u_b)))
    L    = L_s + lambda_u * r(t) * L_u,   lambda_u = 1
    r(t) = 1                                                          (USB; ``unsup_warmup=0``)
    r(t) = 1/2 - cos(min(pi, pi t / (w T))) / 2                       (the paper, w = ``unsup_warmup`` = 1/2)

p~_u starts at the first batch's mean q, p~_l at 1/C; both take the current batch before
q is aligned. T is the number of training steps, t the current one.

Choices, and what they follow:
  * The defaults are USB's semi-supervised AdaMatch (semilearn/algorithms/adamatch): its
    ``DistAlignEMAHook(p_target_type='model')`` for the alignment, its relative threshold
    with ``p_cutoff`` 0.95, ``ulb_loss_ratio`` 1 without ramp, L_s on the labeled weak view
    only, no random logit interpolation, hard pseudo-labels.
  * Relative threshold: the ``relative`` policy (``sslzoo/policies/relative.py``), so
    ``--set policy=...`` swaps it like any other; it reads the labeled probabilities from
    ``PolicyInput.labeled_probs`` (detached: no gradient, as USB's no-grad hook and the
    official ``stop_gradient``), computed on the labeled WEAK view without alignment. It
    sees the ALIGNED q~, as USB and the official code mask q~. The paper and official code
    use tau = 0.9: ``--set policy=relative:0.9``.
  * Pseudo-labels are argmax q~ (aligned), as in USB and the official code.
  * Distribution alignment differs from the official code (google-research/adamatch,
    ``semi_supervised/adamatch.py``) in p~_u only: there it is a moving average over the last
    128 batches of a buffer that starts filled with 1/C; here (USB) an EMA that starts at the
    first batch's mean. No switch. ``adamatch.dist_align=false`` turns alignment off (the
    official ablation ``adamatch_no_distalign``); ``adamatch.da_momentum`` sets m. Under
    DDP the two batch means are averaged over ranks (USB gathers both batches first).
  * Ramp of the unlabeled weight: none (USB). The paper's and official code's warm-up is
    ``--set adamatch.unsup_warmup=0.5`` (a cosine from 0 to 1 over the first half of training).
  * Labeled loss: USB trains L_s on the weak view only. The paper and official code average
    the weak and a strong view, L_s = 1/2 (CE(y, f(weak(x))) + CE(y, f(strong(x)))):
    ``adamatch.labeled_strong=true`` (a strong labeled view joins the same concatenated pass;
    the relative threshold still uses the weak view).
  * Random logit interpolation (the paper's Sec. 3.1; not in USB): ``adamatch.logit_interpolation=true``
    runs an extra pass over the labeled images alone and uses z = z_joint + U(0, 1) * (z_alone - z_joint),
    elementwise, as the labeled logits (for L_s and for p_l). The extra pass's batch-norm running
    statistics are discarded, as the official code restores the model's variables after it.
    It only does something with ``forward_mode=concat``: in ``separate`` mode the labeled
    images already have a pass of their own (z_joint = z_alone), so no extra pass is run.
  * Soft targets (``use_hard_label=false``): Sharpen(q~, T); the default T = 1 trains on q~
    itself, which is what USB's soft mode does (it passes q~ through, T unused).
  * L_u is normalized by the whole unlabeled batch (USB's and the official mean);
    ``unsup_norm="subset"`` divides by the trusted weight instead.

The alignment's EMAs are tensors saved in the algorithm's ``state_dict`` (key ``da``), so
a resumed run continues exactly.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, StepContext, StepOutput, masked_ce,
                              pseudo_label_stats, supervised_ce)
from sslzoo.mixup import frozen_bn_stats, sharpen
from sslzoo.registry import register_algorithm

from .defixmatch import forward_with_labeled_views
from .fixmatch import FixMatch

DA_EPS = 1e-6


def cosine_warmup(progress: float, fraction: float) -> float:
    """The paper's r(t) = 1/2 - cos(min(pi, pi * progress / fraction)) / 2; 1 when ``fraction`` <= 0."""
    if fraction <= 0:
        return 1.0
    return 0.5 - math.cos(min(math.pi, math.pi * progress / fraction)) / 2


def interpolate_logits(joint: Tensor, alone: Tensor, lam: Tensor | None = None) -> Tensor:
    """Random logit interpolation: joint + lam * (alone - joint), lam ~ U(0, 1) per element."""
    if lam is None:
        lam = torch.rand_like(joint)
    return joint + lam * (alone - joint)


class EMAAlignment:
    """AdaMatch's distribution alignment with EMAs of the batch-mean predictions (USB's variant).

    p_model (unlabeled) starts at the first batch's mean, p_target (labeled) at 1/C; all state
    is in tensors so a checkpoint restores it exactly.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999):
        self.num_classes, self.momentum = num_classes, float(momentum)
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.p_target = torch.full((num_classes,), 1.0 / num_classes)
        self.started = torch.zeros((), dtype=torch.bool)

    def to(self, device: torch.device) -> "EMAAlignment":
        for key in ("p_model", "p_target", "started"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    @torch.no_grad()
    def update(self, unlabeled_mean: Tensor, labeled_mean: Tensor) -> None:
        """One step of both EMAs (the first unlabeled mean replaces the initial p_model)."""
        m = self.momentum
        unlabeled_mean = unlabeled_mean.to(self.p_model)
        ema = m * self.p_model + (1 - m) * unlabeled_mean
        self.p_model = torch.where(self.started, ema, unlabeled_mean)
        self.p_target = m * self.p_target + (1 - m) * labeled_mean.to(self.p_target)
        self.started = torch.ones_like(self.started)

    def align(self, probs: Tensor) -> Tensor:
        ratio = (self.p_target.to(probs) + DA_EPS) / (self.p_model.to(probs) + DA_EPS)
        aligned = probs * ratio
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def state_dict(self) -> dict[str, Tensor]:
        return {"p_model": self.p_model, "p_target": self.p_target, "started": self.started}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            setattr(self, key, value.to(current.device, current.dtype).clone())


@register_algorithm("adamatch")
class AdaMatch(FixMatch):
    """AdaMatch: distribution-aligned weak guesses, trusted above a threshold relative to labeled confidence."""

    name = "adamatch"
    unlabeled_views = ("weak", "strong")
    default_policy = "relative:0.95"
    uses_policy = True
    state_parts = ("da",)

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, temperature: float = 1.0,
                 unsup_norm: str = "batch", use_hard_label: bool = True, dist_align: bool = True,
                 da_momentum: float = 0.999, unsup_warmup: float = 0.0, labeled_strong: bool = False,
                 logit_interpolation: bool = False):
        super().__init__(num_classes, policy, lambda_u=lambda_u, temperature=temperature, unsup_norm=unsup_norm,
                         use_hard_label=use_hard_label)
        if unsup_norm not in ("batch", "subset"):
            raise ValueError(f"unsup_norm must be 'batch' or 'subset'; got {unsup_norm!r}")
        if not 0.0 <= float(da_momentum) < 1.0:
            raise ValueError(f"da_momentum (EMA momentum of the alignment) must be in [0, 1); got {da_momentum}")
        if not 0.0 <= float(unsup_warmup) <= 1.0:
            raise ValueError(f"unsup_warmup is a fraction of training in [0, 1] (the paper: 0.5); got {unsup_warmup}")
        self.dist_align, self.unsup_warmup = bool(dist_align), float(unsup_warmup)
        self.labeled_strong, self.logit_interpolation = bool(labeled_strong), bool(logit_interpolation)
        self.extra_labeled_views = ("strong",) if self.labeled_strong else ()
        self.da = EMAAlignment(num_classes, da_momentum)

    # -- hooks ------------------------------------------------------------------------
    # -- the step -----------------------------------------------------------------------
    def unsup_weight(self, ctx: StepContext) -> float:
        """lambda_u * r(t) (a Python number from the step counters: no host read)."""
        return self.lambda_u * cosine_warmup(ctx.progress, self.unsup_warmup)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        out, l_logits, _ = forward_with_labeled_views(model, batch, ctx.forward_mode)
        if self.logit_interpolation and ctx.forward_mode == "concat":
            joint = torch.cat([out.logits_l, *l_logits])
            with frozen_bn_stats(model):
                alone = model(torch.cat([batch.x_l, *batch.l_views]))[0]
            parts = list(interpolate_logits(joint, alone).split([batch.x_l.shape[0]] * (1 + len(l_logits))))
            out = dataclasses.replace(out, logits_l=parts[0])
            l_logits = parts[1:]
        return self.losses(out, batch, ctx, l_logits[0] if self.labeled_strong else None)

    def align(self, q: Tensor, p_l: Tensor, ctx: StepContext) -> Tensor:
        """Update both EMAs with this step's batch means (averaged over ranks), then align q."""
        means = ctx.dist.all_reduce(torch.stack([q.mean(dim=0), p_l.mean(dim=0)]), op="mean")
        self.da.update(means[0], means[1])
        return self.da.align(q)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext,
               logits_l_strong: Tensor | None = None) -> StepOutput:
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        if self.labeled_strong:
            if logits_l_strong is None:
                raise ValueError("adamatch.labeled_strong needs the labeled strong view's logits "
                                 "(its step() computes them from batch.l_views).")
            sup = 0.5 * (sup + F.cross_entropy(logits_l_strong, batch.y_l))
        logits_weak, logits_strong = out.u_logits
        p_l = torch.softmax(out.logits_l.detach().float(), dim=-1)
        q = torch.softmax(logits_weak.detach().float(), dim=-1)
        q = self.align(q, p_l, ctx) if self.dist_align else q
        w = self.policy(PolicyInput(q, batch.u_index, sup_per_sample, p_l), ctx)
        pseudo = q.argmax(dim=-1)
        targets = pseudo if self.use_hard_label else sharpen(q, self.temperature)
        unsup = masked_ce(logits_strong, targets, w, self.unsup_norm)
        return StepOutput({"sup": sup, "unsup": self.unsup_weight(ctx) * unsup},
                          pseudo_label_stats(w, pseudo, batch.u_true))
