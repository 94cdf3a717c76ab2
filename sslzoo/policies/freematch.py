"""FreeMatch's self-adaptive thresholding, SAT (Wang et al., ICLR 2023).

With q the weak-view predictions of the unlabeled batch and lambda = 0.999:

    tau_t    = lambda * tau_{t-1}  + (1 - lambda) * mean_b max q_b        global, tau_0 = 1/C
    p~_t(c)  = lambda * p~_{t-1}(c) + (1 - lambda) * mean_b q_b(c)          class-wise, p~_0 = 1/C
    tau_t(c) = MaxNorm(p~_t)(c) * tau_t = p~_t(c) / max_c' p~_t(c') * tau_t
    w        = 1[max q >= tau_t(argmax q)]

It also keeps h~_t, the EMA of the pseudo-label histogram (normalized, h~_0 = 1/C), which
the freematch algorithm's fairness term (SAF) reads; it does not affect the mask.

Conventions:
  * the EMAs take the current batch before the mask is computed (tau_t includes batch t,
    as the paper's Eq. 4-6 and USB's hook), hence ``update_first``;
  * initial values 1/C, as the paper, TorchSSL and USB (whose hook starts p~ and h~ at
    1/C and tau at their mean, 1/C);
  * no quantile and no clipping of tau (USB's ``use_quantile=False``, ``clip_thresh=False``).

Distributed: the batch probabilities are gathered from every process before the EMAs
are updated, as USB does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..policy import PolicyInput, StepContext, ThresholdPolicy, histogram
from ..registry import register_policy


@register_policy("freematch")
class FreeMatchThreshold(ThresholdPolicy):
    """FreeMatch: self-adaptive global threshold (EMA of confidence) scaled per class (EMA of predictions)."""

    name = "freematch"
    update_first = True   # tau_t includes batch t
    spec_arg = "momentum"

    def __init__(self, momentum: float = 0.999):
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"FreeMatch momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.global_threshold = torch.zeros(())
        self.class_mean = torch.zeros(0)
        self.label_hist = torch.zeros(0)

    def setup(self, num_classes: int, num_unlabeled: int) -> None:
        super().setup(num_classes, num_unlabeled)
        device = self.class_mean.device
        self.global_threshold = torch.tensor(1.0 / num_classes, device=device)
        self.class_mean = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes, device=device)

    def class_thresholds(self) -> Tensor:
        """tau_t(c) = MaxNorm(p~_t)(c) * tau_t."""
        return self.class_mean / self.class_mean.max() * self.global_threshold

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        conf, pred = inp.probs.max(dim=-1)
        return (conf >= self.class_thresholds().to(conf.device)[pred]).float()

    def update(self, inp: PolicyInput, ctx: StepContext) -> None:
        probs = ctx.dist.gather(inp.probs.detach().float()).to(self.class_mean.device)
        conf, pred = probs.max(dim=-1)
        m = self.momentum
        hist = histogram(pred, self.num_classes)
        self.global_threshold = m * self.global_threshold + (1 - m) * conf.mean()
        self.class_mean = m * self.class_mean + (1 - m) * probs.mean(dim=0)
        self.label_hist = m * self.label_hist + (1 - m) * hist / hist.sum()

    def thresholds(self) -> Tensor | None:
        return self.class_thresholds()

    def extra_stats(self) -> dict[str, float]:
        return {"freematch_tau": float(self.global_threshold)}
