"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds (SAT) + self-adaptive fairness (SAF).

    q = softmax(f(weak(u)))                                       (no gradient)
    w_b = 1[max q_b >= MaxNorm(p~_t)(argmax q_b) * tau_t]         policy "freematch" (SAT)
    L_u = 1/(mu B) * sum_b w_b * CE(argmax q_b, f(strong(u_b)))
    L_f = -H( SumNorm(p~_t / h~_t), SumNorm(p_bar / h_bar) )      SAF, Eq. (9)
    L = L_s + lambda_u * L_u + lambda_f * L_f

p~_t, h~_t: the policy's EMAs of the mean prediction and of the pseudo-label histogram;
p_bar, h_bar: mean prediction and normalized argmax histogram of the STRONG view over the
selected samples (w > 0) of this batch. H(a, b) = -sum a log b, so L_f = sum a log b, as
printed in the paper and implemented by USB (``entropy_loss``); the histogram ratios are
constants (no gradient), classes absent from h_bar get scale 0 (USB's inf -> 0). With no
selected sample L_f = 0.

lambda_f = 0.01: USB's default (``ent_loss_ratio``); USB's per-benchmark CIFAR/STL
configs use 0.001. Under DDP, p_bar and h_bar are those of the GLOBAL batch (the sums and
counts of every rank), so N processes compute the 1-process L_f of the N x batch; USB
computes L_f per GPU (docs/fidelity.md).
"""
from __future__ import annotations

import torch
from torch import Tensor

from sslzoo.algorithm import Batch, ForwardOutput, StepContext, StepOutput, pseudo_label_stats
from sslzoo.distributed import DistContext
from sslzoo.errors import SSLZooError
from sslzoo.policies.freematch import FreeMatchThreshold
from sslzoo.registry import register_algorithm

from .fixmatch import FixMatch


def _inverse_or_zero(x: Tensor) -> Tensor:
    return torch.where(x > 0, 1.0 / x.clamp_min(1e-12), torch.zeros_like(x))


def fairness_loss(logits_strong: Tensor, selected: Tensor, class_mean: Tensor, label_hist: Tensor,
                  dist: DistContext | None = None) -> Tensor:
    """SAF, Eq. (9): -H(SumNorm(p~/h~), SumNorm(p_bar/h_bar)) over the selected strong-view predictions.

    The selection is a 0/1 weight (no boolean indexing: no host sync); with nothing selected
    the term is exactly 0 and still carries a (zero) gradient. Under DDP (``dist``; None: the
    running process group) the selected set is that of the global batch: the probability sums,
    argmax counts and sizes are summed over ranks, every rank computes the same L_f from them.
    """
    dist = dist if dist is not None else DistContext.from_process_group()
    sel = selected.float()
    probs = torch.softmax(logits_strong.float(), dim=-1)
    num_classes = probs.shape[-1]
    counts = torch.zeros(num_classes, device=probs.device).index_add_(0, probs.argmax(dim=-1), sel)
    sums = dist.sum_local_grad(torch.cat([(probs * sel[:, None]).sum(dim=0), counts, sel.sum()[None]]))
    prob_sum, counts, n = sums[:num_classes], sums[num_classes:-1], sums[-1]
    hist = counts / n.clamp_min(1.0)
    target = class_mean.float() * _inverse_or_zero(label_hist.float())
    target = target / target.sum()
    mean = prob_sum / n.clamp_min(1.0) * _inverse_or_zero(hist)
    mean = mean / mean.sum().clamp_min(1e-12)
    loss = (target.detach() * torch.log(mean + 1e-12)).sum()
    return dist.replicated(torch.where(n > 0, loss, logits_strong.sum() * 0.0))


@register_algorithm("freematch")
class FreeMatch(FixMatch):
    """FreeMatch: self-adaptive global/class thresholds (EMAs of confidence) plus a class-fairness term."""

    name = "freematch"
    default_policy = "freematch"

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, lambda_f: float = 0.01,
                 temperature: float = 1.0, unsup_norm: str = "batch", use_hard_label: bool = True):
        super().__init__(num_classes, policy, lambda_u=lambda_u, temperature=temperature, unsup_norm=unsup_norm,
                         use_hard_label=use_hard_label)
        self.lambda_f = lambda_f
        if lambda_f and policy is not None and not isinstance(policy, FreeMatchThreshold):
            raise SSLZooError(f"FreeMatch's fairness term reads the 'freematch' policy's EMAs, but the policy is "
                              f"'{policy.name}'. Use --set policy=freematch, or drop the term with "
                              f"--set freematch.lambda_f=0.")

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        terms, w, pseudo = self.weak_to_strong(out, batch, ctx)
        if self.lambda_f:
            terms["fairness"] = self.lambda_f * fairness_loss(out.u_logits[1], w > 0, self.policy.class_mean,
                                                              self.policy.label_hist, ctx.dist)
        return StepOutput(terms, pseudo_label_stats(w, pseudo, batch.u_true))
