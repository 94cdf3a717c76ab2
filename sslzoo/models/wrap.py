"""Any ``nn.Module`` as an sslzoo backbone, which maps images to ``(logits, features)``.

Why: Ada-CM's contrastive term, CoMatch's and SimMatch's banks work on features, but a
user's network (a timm or torchvision classifier) usually returns logits only. Its features
are then the input of its last ``nn.Linear`` (the classifier), caught by a forward pre-hook:
what timm calls ``forward_head(forward_features(x), pre_logits=True)``. A network that already
returns ``(logits, features)``, or a dict with ``logits`` and ``feat`` (USB's convention), is
used as it is.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import SSLZooError


def last_linear(module: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` in registration order (a classifier's head), or None."""
    found = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            found = m
    return found


class FeatureBackbone(nn.Module):
    """``(logits, features)`` from a network; features from its last Linear layer's input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        head = last_linear(net)
        self.feature_dim = getattr(net, "feature_dim", None) or (head.in_features if head is not None else None)
        self._captured: Tensor | None = None
        if head is not None:
            head.register_forward_pre_hook(self._catch)

    def _catch(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._captured = inputs[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._captured = None
        out = self.net(x)
        if isinstance(out, dict):
            if "logits" not in out:
                raise SSLZooError(f"the backbone returned a dict without 'logits' (keys: {sorted(out)}).")
            logits, feats = out["logits"], out.get("feat", out.get("features"))
        elif isinstance(out, (tuple, list)):
            logits, feats = out[0], out[1] if len(out) > 1 else None
        else:
            logits, feats = out, None
        if feats is None:
            feats = self._captured if self._captured is not None else logits
        self._captured = None
        return logits, feats.flatten(1)


def as_backbone(net: nn.Module) -> FeatureBackbone:
    """``net`` ready for the trainer (wrapped once; a wrapped network is returned as it is)."""
    if not isinstance(net, nn.Module):
        raise SSLZooError(f"backbone must be an nn.Module (or a registered backbone name); got {type(net).__name__}.")
    return net if isinstance(net, FeatureBackbone) else FeatureBackbone(net)
