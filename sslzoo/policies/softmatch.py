"""SoftMatch's truncated-Gaussian sample weights with uniform alignment (Chen et al., ICLR 2023).

Uniform alignment (UA) of the weak-view predictions p, with u = 1/C and E[p] an EMA of
the batch-mean prediction:

    p' = Normalize(p * u / E[p])

Weights from the aligned confidence c = max p' (n_sigma = 2, lambda_max = 1):

    mu_t     = m * mu_{t-1}     + (1 - m) * mean_b c_b            mu_0 = 1/C
    sigma2_t = m * sigma2_{t-1} + (1 - m) * var_b c_b (unbiased)   sigma2_0 = 1
    w        = lambda_max                                          if c >= mu_t
             = lambda_max * exp(-(c - mu_t)^2 / (2 sigma2_t / n_sigma^2))   otherwise

Conventions (USB's ``SoftMatchWeightingHook`` and ``DistAlignEMAHook``, ``dist_uniform``):
  * UA lives here, in the policy, because it only shapes the weights: the pseudo-labels
    stay the argmax of the *unaligned* prediction (the algorithm's own ``argmax p``), as
    in USB ("uniform alignment ... not used for generating pseudo labels"). Hence
    ``--algo adacm --set policy=softmatch`` also gets UA (``uniform_alignment=False`` turns it off);
  * E[p] starts at the first batch's mean prediction (USB), then EMA with momentum m;
    aligned p = p * (u + 1e-6) / (E[p] + 1e-6), renormalized;
  * both EMAs take the current batch before the weights are computed (``update_first``;
    the UA mean first, then mu/sigma2 from the aligned batch), as USB's hooks do;
  * m = 0.999 for both (USB's ``ema_p``); the Gaussian is global, not per class
    (USB's ``per_class=False``); a batch of one sample contributes variance 0.

Distributed: the batch probabilities are gathered from every process before updating.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..policy import PolicyInput, StepContext, ThresholdPolicy
from ..registry import register_policy


def uniform_alignment(probs: Tensor, mean_prediction: Tensor) -> Tensor:
    """UA: p * u / E[p], renormalized (with USB's 1e-6 guards)."""
    u = 1.0 / probs.shape[-1]
    aligned = probs * (u + 1e-6) / (mean_prediction + 1e-6)
    return aligned / aligned.sum(dim=-1, keepdim=True)


def truncated_gaussian_weights(conf: Tensor, mu: Tensor, var: Tensor, n_sigma: float = 2.0,
                               lambda_max: float = 1.0) -> Tensor:
    """lambda_max where conf >= mu, else lambda_max * exp(-(conf - mu)^2 / (2 var / n_sigma^2))."""
    below = (conf - mu).clamp(max=0.0)
    return lambda_max * torch.exp(-below ** 2 / (2 * var / n_sigma ** 2))


@register_policy("softmatch")
class SoftMatchWeights(ThresholdPolicy):
    """SoftMatch: soft weights from a truncated Gaussian over (uniformly aligned) confidence."""

    name = "softmatch"
    update_first = True   # the EMAs include batch t
    spec_arg = "n_sigma"

    def __init__(self, momentum: float = 0.999, n_sigma: float = 2.0, lambda_max: float = 1.0,
                 uniform_alignment: bool = True):
        if not 0.0 <= float(momentum) < 1.0 or float(n_sigma) <= 0 or not 0.0 < float(lambda_max) <= 1.0:
            raise ValueError(f"SoftMatch needs 0 <= momentum < 1, n_sigma > 0 and 0 < lambda_max <= 1; got "
                             f"momentum={momentum}, n_sigma={n_sigma}, lambda_max={lambda_max}")
        self.momentum, self.n_sigma, self.lambda_max = float(momentum), float(n_sigma), float(lambda_max)
        self.uniform_alignment = bool(uniform_alignment)
        self.mu = torch.zeros(())
        self.var = torch.ones(())
        self.mean_prediction = torch.zeros(0)     # E[p] for UA
        self.ua_started = torch.zeros((), dtype=torch.bool)

    def setup(self, num_classes: int, num_unlabeled: int) -> None:
        super().setup(num_classes, num_unlabeled)
        device = self.mu.device
        self.mu = torch.tensor(1.0 / num_classes, device=device)
        self.var = torch.tensor(1.0, device=device)
        self.mean_prediction = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.ua_started = torch.zeros((), dtype=torch.bool, device=device)

    def aligned(self, probs: Tensor) -> Tensor:
        if not self.uniform_alignment:
            return probs
        return uniform_alignment(probs, self.mean_prediction.to(probs.device))

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        conf = self.aligned(inp.probs.float()).max(dim=-1).values
        return truncated_gaussian_weights(conf, self.mu.to(conf.device), self.var.to(conf.device),
                                          self.n_sigma, self.lambda_max)

    def update(self, inp: PolicyInput, ctx: StepContext) -> None:
        probs = ctx.dist.gather(inp.probs.detach().float()).to(self.mu.device)
        m = self.momentum
        if self.uniform_alignment:
            batch_mean = probs.mean(dim=0)
            ema = m * self.mean_prediction + (1 - m) * batch_mean
            self.mean_prediction = torch.where(self.ua_started, ema, batch_mean)   # USB: starts at batch 1's mean
            self.ua_started = torch.ones_like(self.ua_started)
        conf = self.aligned(probs).max(dim=-1).values
        n = conf.numel()
        var = conf.var(unbiased=True) if n > 1 else conf.new_zeros(())
        self.mu = m * self.mu + (1 - m) * conf.mean()
        self.var = m * self.var + (1 - m) * var

    def extra_stats(self) -> dict[str, float]:
        return {"softmatch_mu": float(self.mu), "softmatch_var": float(self.var)}
