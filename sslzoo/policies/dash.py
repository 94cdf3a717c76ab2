"""Dash's dynamic thresholding (Xu et al., ICML 2021).

A sample is trusted when its weak-view loss against its own hard pseudo-label,
l = CE(p, argmax p) = -log max p, is at most rho_t:

    rho_t = max(C * gamma^-(t-1) * rho_hat, rho_min),   C = 1.0001, gamma = 1.27, rho_min = 0.05
    t     = 1 + (step - W) // num_wait                     (t = 1 at the end of warm-up)
    w     = 1[-log max p <= rho_t]

Warm-up (the paper's first stage): during the first W steps no unlabeled sample is
trusted (supervised-only training, as USB's warm-up). rho_hat is then the loss of the
warmed-up model, as in the paper: before the first step after the warm-up (step W, in
``before_step``, outside the sync-free step) the policy asks the trainer once for the
per-sample cross-entropy of the training model (eval mode, after its W warm-up updates)
over the WHOLE labeled training set, in the view it trains on (``StepContext.labeled_loss``),
and keeps its mean as a device tensor. Until it has rho_hat it trusts nothing (a driver that
skips ``before_step`` gets a supervised-only run, never a host read inside the step). It never
looks at test or validation data; USB instead takes the loss of its EMA model on its
evaluation set after the warm-up.

Defaults and conventions:
  * C, gamma, rho_min: the paper's and USB's values.
  * ``warmup=0.05``: W = 5% of the training steps (at least 1). USB warms up for
    2048 of 2^20 steps; at the short schedules of this zoo that would be a handful of
    steps, too few to train the model before estimating its labeled loss.
  * ``num_wait=0`` (auto): rho is lowered every 1% of the training steps, the
    proportion USB uses (every 10 epochs of 1024 iterations out of 1024 epochs);
    a positive value is a number of steps.
  * hard pseudo-labels (the paper's FixMatch pipeline); USB's Dash uses soft
    targets sharpened with T = 0.5 until rho reaches rho_min.
  * ``<=`` as USB (``loss.le(rho)``); the paper's "smaller than" differs only on ties.

Distributed: the trainer's pass covers the whole labeled set (each process a shard, gathered),
so every process gets the same rho_hat.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import SSLZooError
from ..policy import PolicyInput, StepContext, ThresholdPolicy
from ..registry import register_policy


def dash_rho(t: int, rho_hat: float, C: float = 1.0001, gamma: float = 1.27, rho_min: float = 0.05) -> float:
    """rho_t = max(C * gamma^-(t-1) * rho_hat, rho_min) for stage t >= 1."""
    return max(C * gamma ** -(t - 1) * rho_hat, rho_min)


def self_loss(probs: Tensor) -> Tensor:
    """Per-sample CE of a prediction against its own hard pseudo-label: -log max p."""
    return -torch.log(probs.max(dim=-1).values.clamp_min(1e-12))


@register_policy("dash")
class DashThreshold(ThresholdPolicy):
    """Dash: trust samples whose own-pseudo-label loss is below a geometrically decreasing threshold."""

    name = "dash"
    spec_arg = "rho_min"

    def __init__(self, C: float = 1.0001, gamma: float = 1.27, rho_min: float = 0.05, warmup: float = 0.05,
                 num_wait: int = 0):
        if gamma <= 1 or C <= 0 or rho_min < 0:
            raise ValueError(f"Dash needs gamma > 1, C > 0 and rho_min >= 0; got gamma={gamma}, C={C}, "
                             f"rho_min={rho_min}")
        if not 0.0 <= float(warmup) < 1.0 or int(num_wait) < 0:
            raise ValueError(f"Dash needs 0 <= warmup < 1 (a fraction of training) and num_wait >= 0; "
                             f"got warmup={warmup}, num_wait={num_wait}")
        self.C, self.gamma, self.rho_min = float(C), float(gamma), float(rho_min)
        self.warmup, self.num_wait = float(warmup), int(num_wait)
        self.rho_hat_value = torch.tensor(float("nan"), dtype=torch.float64)   # set once, at step W
        self.rho = torch.tensor(float("nan"))                     # rho in force at the latest step (logging)
        self._estimated = False                                   # rho_hat_value holds the estimate

    # -- schedule ---------------------------------------------------------------------
    def warmup_steps(self, total_steps: int) -> int:
        return max(1, round(self.warmup * total_steps))

    def wait_steps(self, total_steps: int) -> int:
        return self.num_wait if self.num_wait > 0 else max(1, round(0.01 * total_steps))

    def stage(self, step: int, total_steps: int) -> int:
        """t >= 1 after warm-up (0 during warm-up)."""
        w = self.warmup_steps(total_steps)
        return 0 if step < w else 1 + (step - w) // self.wait_steps(total_steps)

    @property
    def rho_hat(self) -> float:
        """rho_hat as a number, for logging and tests (a host read: never called inside a step)."""
        return float(self.rho_hat_value)

    def before_step(self, ctx: StepContext) -> None:
        """At the first step after the warm-up (or a resume past it without an estimate): rho_hat."""
        if not self._estimated and self.stage(ctx.step, ctx.total_steps) >= 1:
            self.estimate_rho_hat(ctx)

    def estimate_rho_hat(self, ctx: StepContext) -> None:
        """rho_hat = mean per-sample CE of the warmed-up training model over the labeled training set.

        Once per run; the result stays on the device.
        """
        if ctx.labeled_loss is None:
            raise SSLZooError("The dash policy estimates rho_hat from StepContext.labeled_loss, the labeled "
                              "training loss the trainer provides; this step context has none. Train through "
                              "sslzoo's Trainer (sslzoo train / sslzoo.fit), or pass labeled_loss in the context.")
        self.rho_hat_value = ctx.labeled_loss().detach().double().mean()
        self._estimated = True

    def rho_tensor(self, step: int, total_steps: int) -> Tensor:
        """rho_t as a device tensor (NaN during warm-up): the schedule without a host read."""
        t = self.stage(step, total_steps)
        if t == 0:
            return torch.full((), float("nan"), dtype=self.rho_hat_value.dtype, device=self.rho_hat_value.device)
        return (self.C * self.gamma ** -(t - 1) * self.rho_hat_value).clamp_min(self.rho_min)

    def rho_at(self, step: int, total_steps: int) -> float:
        return float(self.rho_tensor(step, total_steps))

    # -- policy -------------------------------------------------------------------------
    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        if self.stage(ctx.step, ctx.total_steps) == 0:
            return inp.probs.new_zeros(inp.probs.shape[0])
        rho = self.rho_tensor(ctx.step, ctx.total_steps).to(inp.probs.device, inp.probs.dtype)
        return (self_loss(inp.probs) <= rho).float()   # rho NaN (no rho_hat yet): nothing trusted

    def update(self, inp: PolicyInput, ctx: StepContext) -> None:
        if self.stage(ctx.step, ctx.total_steps) == 0:
            self.rho = torch.full((), float("nan"), device=inp.probs.device)
        else:
            self.rho = self.rho_tensor(ctx.step, ctx.total_steps).float()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._estimated = bool(torch.isfinite(self.rho_hat_value))   # at resume, not inside a step

    def extra_stats(self) -> dict[str, float]:
        stats = {"dash_rho": float(self.rho), "dash_rho_hat": self.rho_hat}
        return {k: v for k, v in stats.items() if math.isfinite(v)}   # nothing to report during warm-up
