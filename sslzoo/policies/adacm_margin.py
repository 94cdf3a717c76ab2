"""Ada-CM's adaptive confidence margin (Li et al., CVPR 2022, Eq. 4-5).

Per class c, T_c is the mean confidence of the *correctly* predicted labeled
samples of class c (Eq. 4); the margin in force at epoch t is
T_c^t = B * T_c / (1 + gamma^-t) (Eq. 5), B = 0.97, gamma = e, T^0 = 0.8.
An unlabeled sample is in subset I when max p >= T^t[argmax p].

Defaults follow the official code (hangyu94/Ada-CM, ``adaptive_threshold_generate``):
  * ``floor=0.8``: the margin is never below 0.8 (paper: no floor -> ``floor=None``);
  * a class with no correct prediction gets T0 (Eq. 4 is 0/0 there; both modes);
  * ``epoch_offset=True``: the margin estimated after epoch t (1-based) with
    exponent t is used in epoch t+1; epoch 1 uses T0. With ``epoch_offset=False``
    the margin used in epoch t (1-based, t >= 2) is estimated at its start with exponent t.
  * the estimate uses the evaluation (EMA) model over the whole labeled set with weak
    augmentation (``view="weak"``; the official loader also drops its last batch, we don't).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..policy import EpochContext, PolicyInput, StepContext, ThresholdPolicy
from ..registry import register_policy


def correct_class_confidence(probs: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Eq. (4): per-class mean confidence of correctly predicted labeled samples.

    Returns (T [C], has_correct [C]); T is 0 where a class has no correct prediction.
    """
    correct = probs.argmax(dim=1) == targets
    conf = probs.gather(1, targets[:, None]).squeeze(1)[correct]
    cls = targets[correct]
    sums = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device).index_add_(0, cls, conf)
    counts = torch.bincount(cls, minlength=num_classes).to(probs.dtype)
    return sums / counts.clamp_min(1), counts > 0


def margin_schedule(T: Tensor, t: float, B: float = 0.97, gamma: float = math.e) -> Tensor:
    """Eq. (5): T^t = B * T / (1 + gamma^-t)."""
    return B * T / (1.0 + gamma ** (-t))


@register_policy("adacm")
class AdaptiveMargin(ThresholdPolicy):
    """Ada-CM's adaptive per-class confidence margin from correctly classified labeled data (Eq. 4-5)."""

    name = "adacm"

    def __init__(self, B: float = 0.97, gamma: float = math.e, T0: float = 0.8,
                 floor: float | None = 0.8, epoch_offset: bool = True, view: str = "weak"):
        if not 0 < B < 1 or gamma <= 1:
            raise ValueError(f"Ada-CM needs 0 < B < 1 and gamma > 1; got B={B}, gamma={gamma}")
        self.B, self.gamma, self.T0, self.floor = float(B), float(gamma), float(T0), floor
        self.epoch_offset, self.view = bool(epoch_offset), view
        self.margin = torch.full((0,), self.T0)

    def setup(self, num_classes: int, num_unlabeled: int) -> None:
        super().setup(num_classes, num_unlabeled)
        self.margin = torch.full((num_classes,), self.T0)

    def margin_for_epoch(self, epoch: int, probs: Tensor, targets: Tensor) -> Tensor:
        """The margin in force during 0-based epoch ``epoch`` >= 1, from labeled predictions."""
        T, has_correct = correct_class_confidence(probs.float(), targets, self.num_classes)
        t = epoch if self.epoch_offset else epoch + 1
        margin = margin_schedule(T, t, self.B, self.gamma)
        if self.floor is not None:
            margin = margin.clamp_min(self.floor)
        return torch.where(has_correct, margin, torch.full_like(margin, self.T0))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if ctx.epoch == 0 or ctx.labeled_predictions is None:
            self.margin = torch.full((ctx.num_classes,), self.T0, device=self.margin.device)
            return
        probs, targets = ctx.labeled_predictions(self.view)
        self.margin = self.margin_for_epoch(ctx.epoch, probs, targets).to(self.margin.device)

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        conf, pred = inp.probs.max(dim=-1)
        return (conf >= self.margin.to(conf.device)[pred]).float()

    def thresholds(self) -> Tensor | None:
        return self.margin
