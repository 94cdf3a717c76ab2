"""Optimizer and learning-rate schedule from the config."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from .errors import SSLZooError


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = cfg["name"].lower()
    if name == "adam":   # the paper: Adam, lr 5e-4, for every algorithm
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "sgd":    # the SSL literature's usual choice (FixMatch: momentum 0.9, Nesterov)
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    raise SSLZooError(f"optim.name must be adam, adamw or sgd; got '{cfg['name']}'.")


def build_schedule(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int):
    name, warmup = cfg["name"].lower(), int(cfg["warmup_steps"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "cosine":   # FixMatch: lr * cos(7 pi k / (16 K))
            return math.cos(7 * math.pi * (step - warmup) / (16 * max(1, total_steps - warmup)))
        raise SSLZooError(f"schedule.name must be constant or cosine; got '{cfg['name']}'.")

    factor(0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
