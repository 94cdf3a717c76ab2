"""Optimizer, gradient clipping and learning-rate schedule from the config.

Weight decay (``optim.no_decay_norm_bias``, default true): parameters with at most one
dimension (batch-norm scales and shifts, biases) are not decayed, as USB and timm do; the
rest get ``optim.weight_decay``. With ``weight_decay`` 0 there is nothing to exclude and the
optimizer keeps a single parameter group, exactly as before the switch existed.

Clipping (``optim.clip_grad``): None, or the maximum global L2 norm of all gradients
(``torch.nn.utils.clip_grad_norm_``, which stays on the device).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .errors import SSLZooError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")

NamedParams = Iterable[nn.Parameter | tuple[str, nn.Parameter]]


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies: not to biases nor to 1-d parameters (USB's and timm's rule).

    A lazy parameter has no shape yet: unless named a bias, it is taken as a lazy layer's
    weight (a matrix or kernel).
    """
    return not name.endswith("bias") and (is_lazy(param) or param.ndim > 1)


def param_groups(params: NamedParams, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{params, weight_decay}, ...]``: decayed and not decayed parameters (empty groups left out).

    ``params`` holds parameters or ``(name, parameter)`` pairs (names only matter for lazy ones).
    """
    named = [p if isinstance(p, tuple) else ("", p) for p in params]
    wd = float(cfg["weight_decay"])
    if not (cfg.get("no_decay_norm_bias", True) and wd > 0):
        return [{"params": [p for _, p in named], "weight_decay": wd}]
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": wd},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: NamedParams, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = cfg["name"].lower()
    groups = param_groups(params, cfg)
    if name == "adam":   # the paper: Adam, lr 5e-4, for every algorithm
        return torch.optim.Adam(groups, lr=cfg["lr"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"])
    if name == "sgd":    # the SSL literature's usual choice (FixMatch: momentum 0.9, Nesterov)
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    raise SSLZooError(f"optim.name must be one of {', '.join(OPTIMIZERS)}; got '{cfg['name']}'.")


def clip_norm(cfg: dict[str, Any]) -> float | None:
    """``optim.clip_grad`` as a positive number, or None (no clipping); anything else is an error."""
    value = cfg.get("clip_grad")
    if value is None:
        return None
    try:
        norm = float(value)
    except (TypeError, ValueError):
        norm = math.nan
    if isinstance(value, bool) or not math.isfinite(norm) or norm <= 0:
        raise SSLZooError(f"Config key optim.clip_grad must be null (no clipping) or a positive number, the "
                          f"largest global L2 norm of the gradients (e.g. --set optim.clip_grad=5); got {value!r}.")
    return norm


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale every gradient of ``optimizer`` so their global L2 norm is at most ``max_norm``.

    On the device, without a host read; returns the norm before clipping (a device tensor).
    """
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int):
    name, warmup = cfg["name"].lower(), int(cfg["warmup_steps"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "cosine":   # FixMatch: lr * cos(7 pi k / (16 K))
            return math.cos(7 * math.pi * (step - warmup) / (16 * max(1, total_steps - warmup)))
        raise SSLZooError(f"schedule.name must be one of {', '.join(SCHEDULES)}; got '{cfg['name']}'.")

    factor(0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
