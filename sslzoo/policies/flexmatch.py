"""FlexMatch's curriculum pseudo-labeling (Zhang et al., NeurIPS 2021).

Every unlabeled pool sample n keeps the class of its latest *confident* prediction
(max p >= tau), or -1 while it has none. Per class c:

    sigma_c = #{n : memory[n] = c}                              learning effect
    beta_c  = sigma_c / max(max_c' sigma_c', N_unused)          with threshold warm-up
    beta_c  = sigma_c / max_c' sigma_c'                          without warm-up
    T_c     = M(beta_c) * tau,  M(x) = x / (2 - x)  (convex)    or M(x) = x (linear)
    w       = 1[max p >= T_{argmax p}]

N_unused is the number of pool samples with no confident prediction yet (memory -1).

Conventions (paper silent, USB's ``FlexMatchThresholdingHook`` followed):
  * the mask of a step uses the memory as it was *before* that step; the step's
    confident samples are recorded afterwards (``weights`` then ``update``);
  * a sample is recorded when max p >= tau (USB's ``ge``; the paper writes ">",
    which differs only on exact ties);
  * before the first confident prediction every beta is 0, so every T_c = 0 and all
    samples are trusted, with or without warm-up (without warm-up the paper's
    sigma/max sigma is 0/0 there; USB leaves beta at 0 until a prediction is recorded).
  * "linear" is the paper's identity mapping M(x) = x.

Distributed: the batch's indices and confident predictions are gathered from every
process before the memory is written, so every process holds the same memory.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..policy import PolicyInput, StepContext, ThresholdPolicy, histogram
from ..registry import register_policy

MAPPINGS = ("convex", "linear")


def flexmatch_mapping(beta: Tensor, mapping: str = "convex") -> Tensor:
    """M(beta): convex x/(2-x) (the paper's default) or linear x."""
    if mapping == "convex":
        return beta / (2.0 - beta)
    if mapping == "linear":
        return beta
    raise ValueError(f"FlexMatch mapping must be one of {MAPPINGS}, got {mapping!r}")


def learning_effect(memory: Tensor, num_classes: int, warmup: bool = True) -> Tensor:
    """beta_c from the per-sample memory (-1 = no confident prediction yet)."""
    counts = histogram(memory + 1, num_classes + 1)
    unused, sigma = counts[0], counts[1:]
    denominator = torch.maximum(sigma.max(), unused) if warmup else sigma.max()
    return sigma / denominator.clamp_min(1.0)      # all zero before the first confident prediction


@register_policy("flexmatch")
class FlexMatchThreshold(ThresholdPolicy):
    """FlexMatch: class-wise thresholds scaled by each class's learning effect (curriculum pseudo-labeling)."""

    name = "flexmatch"
    spec_arg = "threshold"

    def __init__(self, threshold: float = 0.95, warmup: bool = True, mapping: str = "convex"):
        if mapping not in MAPPINGS:
            raise ValueError(f"FlexMatch mapping must be one of {MAPPINGS}, got {mapping!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"FlexMatch threshold must be in (0, 1], got {threshold}")
        self.threshold, self.warmup, self.mapping = float(threshold), bool(warmup), mapping
        self.num_classes = 0
        self.memory = torch.full((0,), -1, dtype=torch.long)

    def setup(self, num_classes: int, num_unlabeled: int) -> None:
        super().setup(num_classes, num_unlabeled)
        self.memory = torch.full((num_unlabeled,), -1, dtype=torch.long, device=self.memory.device)

    def class_thresholds(self) -> Tensor:
        beta = learning_effect(self.memory, self.num_classes, self.warmup)
        return flexmatch_mapping(beta, self.mapping) * self.threshold

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        conf, pred = inp.probs.max(dim=-1)
        return (conf >= self.class_thresholds().to(conf.device)[pred]).float()

    def update(self, inp: PolicyInput, ctx: StepContext) -> None:
        if inp.index is None:
            raise ValueError("The flexmatch policy needs PolicyInput.index (unlabeled pool positions).")
        conf, pred = inp.probs.max(dim=-1)
        record = torch.where(conf >= self.threshold, pred, torch.full_like(pred, -1))   # -1: not confident
        index, record = (ctx.dist.gather(t.long()).to(self.memory.device) for t in (inp.index, record))
        # Unconfident samples write to a spare slot past the end (no boolean indexing: no host sync).
        n = self.memory.numel()
        spill = torch.cat([self.memory, self.memory.new_full((1,), -1)])
        spill[torch.where(record >= 0, index, torch.full_like(index, n))] = record
        self.memory = spill[:n]

    def thresholds(self) -> Tensor | None:
        return self.class_thresholds()

    def extra_stats(self) -> dict[str, float]:
        unused = (self.memory < 0).float().mean() if self.memory.numel() else torch.tensor(1.0)
        return {"flexmatch_unused": float(unused)}
