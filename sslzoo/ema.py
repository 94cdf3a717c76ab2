"""Exponential moving average of the model, used for evaluation and Ada-CM's margin.

With ``warmup`` the decay is min(decay, (1 + k) / (10 + k)) at update k, so short
CPU-scale runs are not evaluated on a barely-moved copy of the random init (TensorFlow's
``ExponentialMovingAverage(num_updates=k)`` rule; timm's ModelEmaV3 warms up with another
formula, the official Ada-CM code not at all: ``ema.warmup=false``).

Buffers (batch-norm running statistics), config key ``ema.buffers``:
  * ``copy`` (default): the EMA model takes the training model's buffers as they are,
    as USB and kekmodel/FixMatch-pytorch do;
  * ``average``: floating-point buffers are averaged with the same decay as the weights,
    as the official Ada-CM code (``WeightEMA`` over ``state_dict()``) and timm's
    ModelEmaV2 do. Integer buffers (batch norm's ``num_batches_tracked``) are neither
    averaged nor copied: they keep the value they had when the EMA was made, as in the
    official code, which updates only its float32 entries. They matter only for a batch
    norm with ``momentum=None`` (a cumulative average), which no built-in backbone uses.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import SSLZooError

EMA_BUFFERS = ("copy", "average")


class ModelEMA:
    """A frozen copy of the model whose weights (and, with ``buffers="average"``, float buffers) trail it."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, buffers: str = "copy"):
        if buffers not in EMA_BUFFERS:
            raise SSLZooError(f"Config key ema.buffers must be 'copy' (USB) or 'average' (official Ada-CM, timm); "
                              f"got {buffers!r}.")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.buffers, self.updates = decay, warmup, buffers, 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        pairs = list(zip(self.module.buffers(), model.buffers()))
        if self.buffers == "copy":
            for b_ema, b in pairs:
                b_ema.copy_(b)
            return
        floats = [(b_ema, b) for b_ema, b in pairs if b_ema.is_floating_point()]
        if floats:   # integer buffers (num_batches_tracked) keep their value, as in the official code
            torch._foreach_lerp_([e for e, _ in floats], [b.to(e.dtype) for e, b in floats], 1.0 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
