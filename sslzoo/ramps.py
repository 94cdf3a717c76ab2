"""Ramp-up schedules for unlabeled-loss weights, shared by the algorithms that use one.

Why: consistency losses computed from an untrained model's guesses are noise, so
most SSL methods switch the unlabeled term on gradually. Every function maps a
position ``current`` (usually the 0-based global step) and a ramp ``length`` (in
the same unit) to a factor in [0, 1] that reaches 1 at ``current >= length``:

    linear:  r(t) = clip(t, 0, 1)                         (USB/TorchSSL: it / (unsup_warm_up * iters))
    sigmoid: r(t) = exp(-5 (1 - clip(t, 0, 1))^2)         (Laine & Aila 2017; Mean Teacher)
    none:    r(t) = 1

with t = current / length. A length of 0 (or less) means no ramp: the factor is 1.
"""
from __future__ import annotations

import math

RAMPS = ("linear", "sigmoid", "none")


def _fraction(current: float, length: float) -> float:
    if length <= 0:
        return 1.0
    return min(1.0, max(0.0, current / length))


def linear_rampup(current: float, length: float) -> float:
    """clip(current / length, 0, 1)."""
    return _fraction(current, length)


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2), t = clip(current / length, 0, 1): exp(-5) ~ 0.0067 at the start, 1 at the end."""
    if length <= 0:
        return 1.0
    t = _fraction(current, length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def rampup(kind: str, current: float, length: float) -> float:
    """The named ramp ("linear", "sigmoid" or "none") at ``current`` of ``length``."""
    if kind == "linear":
        return linear_rampup(current, length)
    if kind == "sigmoid":
        return sigmoid_rampup(current, length)
    if kind == "none":
        return 1.0
    raise ValueError(f"ramp-up must be one of {', '.join(RAMPS)}; got {kind!r}")


def check_ramp(kind: str) -> str:
    """Validate a ramp name at construction time (a ValueError becomes the user's config error)."""
    if kind not in RAMPS:
        raise ValueError(f"ramp-up must be one of {', '.join(RAMPS)}; got {kind!r}")
    return kind


def warmup_factor(kind: str, step: int, total_steps: int, fraction: float) -> float:
    """The ramp over the first ``fraction`` of ``total_steps`` (USB's ``unsup_warm_up`` convention)."""
    return rampup(kind, float(step), fraction * total_steps)
