"""UDA (Xie et al., NeurIPS 2020): sharpened weak-view targets supervise the strong view.

    p    = softmax(f(weak(u)))                               (no gradient; the policy's input)
    q    = softmax(f(weak(u)) / T),  T = 0.4                 (sharpened target, no gradient)
    w_b  = policy(p_b)  — fixed: 1[max p_b >= 0.8]           (confidence masking)
    L_u  = 1/(mu B) * sum_b w_b * CE(q_b, f(strong(u_b)))    (= KL(q || p_strong) + H(q))
    TSA:  eta_t = alpha_t (1 - 1/C) + 1/C,  t = step / total
          alpha_t = t (linear), 1 - exp(-5 t) (log), exp(5 (t - 1)) (exp), none: eta_t = 1
          m_i = 1[softmax(f(x_i))_{y_i} <= eta_t]            (confident labeled samples drop out)
    L_s  = sum_i m_i CE(y_i, f(x_i)) / max(1, sum_i m_i)
    L    = L_s + lambda_u L_u,  lambda_u = 1

Choices, and what they follow:
  * T = 0.4, threshold 0.8 (the policy "fixed:0.8"), lambda_u = 1, TSA off
    (``tsa_schedule="none"``): USB's classic_cv UDA configs. The mask is computed from
    the unsharpened p, the target is the sharpened q (USB's order).
  * ``consistency="ce"`` (USB): cross-entropy with soft targets, which differs from the
    paper's KL only by the constant entropy H(q) (same gradients); ``"kl"`` logs the KL.
  * TSA masks by the probability of the CORRECT class, and divides by the number of
    kept samples, as the paper and the official UDA code do (USB masks by the max
    probability and divides by the batch size; identical when TSA is off).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext, StepOutput,
                              labeled_probs, pseudo_label_stats)
from sslzoo.distributed import DistContext
from sslzoo.registry import register_algorithm

TSA_SCHEDULES = ("none", "linear", "log", "exp")


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """eta_t = alpha_t (1 - 1/C) + 1/C for the named schedule; 1 (keep everything) for "none"."""
    t = min(1.0, max(0.0, progress))
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        alpha = t
    elif schedule == "log":
        alpha = 1.0 - math.exp(-5.0 * t)
    elif schedule == "exp":
        alpha = math.exp(5.0 * (t - 1.0))
    else:
        raise ValueError(f"tsa_schedule must be one of {', '.join(TSA_SCHEDULES)}; got {schedule!r}")
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_supervised_loss(logits: Tensor, targets: Tensor, eta: float,
                        dist: DistContext | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """TSA-masked CE: (loss over kept samples, keep mask [B], unmasked per-sample CE [B] detached).

    The mean is over the kept samples of the global batch under DDP (``dist``).
    """
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        p_correct = torch.softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
        keep = (p_correct <= eta).float()
    loss = (dist or DistContext()).global_ratio((per_sample * keep).sum(), keep.sum(), 1.0)
    return loss, keep, per_sample.detach()


def soft_consistency(logits_strong: Tensor, targets: Tensor, weights: Tensor, kind: str = "ce") -> Tensor:
    """1/B sum_b w_b * CE(q_b, f(strong)_b), minus the entropy H(q_b) for ``kind="kl"``."""
    log_p = F.log_softmax(logits_strong.float(), dim=-1)
    per_sample = -(targets * log_p).sum(dim=-1)
    if kind == "kl":
        per_sample = per_sample + (targets * torch.log(targets.clamp_min(1e-30))).sum(dim=-1)
    elif kind != "ce":
        raise ValueError(f"consistency must be 'ce' or 'kl'; got {kind!r}")
    return (per_sample * weights).sum() / max(1, logits_strong.shape[0])


@register_algorithm("uda")
class UDA(SSLAlgorithm):
    """UDA: sharpened (T=0.4), confidence-masked weak targets for the strong view; optional TSA."""

    name = "uda"
    unlabeled_views = ("weak", "strong")
    default_policy = "fixed:0.8"
    uses_policy = True

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, T: float = 0.4,
                 tsa_schedule: str = "none", consistency: str = "ce"):
        super().__init__(num_classes, policy)
        if T <= 0:
            raise ValueError(f"T (sharpening temperature) must be > 0; got {T}")
        if tsa_schedule not in TSA_SCHEDULES:
            raise ValueError(f"tsa_schedule must be one of {', '.join(TSA_SCHEDULES)}; got {tsa_schedule!r}")
        if consistency not in ("ce", "kl"):
            raise ValueError(f"consistency must be 'ce' or 'kl'; got {consistency!r}")
        self.lambda_u, self.T, self.tsa_schedule, self.consistency = lambda_u, T, tsa_schedule, consistency

    def targets(self, logits_weak: Tensor) -> tuple[Tensor, Tensor]:
        """(p = softmax(weak), q = softmax(weak / T)), both detached."""
        logits = logits_weak.detach().float()
        return torch.softmax(logits, dim=-1), torch.softmax(logits / self.T, dim=-1)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        eta = tsa_threshold(self.tsa_schedule, ctx.progress, self.num_classes)
        sup, keep, sup_per_sample = tsa_supervised_loss(out.logits_l, batch.y_l, eta, ctx.dist)
        logits_weak, logits_strong = out.u_logits
        p, q = self.targets(logits_weak)
        pseudo = p.argmax(dim=-1)
        w = self.policy(PolicyInput(p, batch.u_index, sup_per_sample, labeled_probs(out)), ctx)
        unsup = soft_consistency(logits_strong, q, w, self.consistency)
        stats = pseudo_label_stats(w, pseudo, batch.u_true)
        if self.tsa_schedule != "none":
            stats["tsa_keep_ratio"] = keep.mean()
        return StepOutput({"sup": sup, "unsup": self.lambda_u * unsup}, stats)
