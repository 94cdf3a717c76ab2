"""Build a backbone from its config section."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import BACKBONES


def build_backbone(cfg: dict[str, Any], num_classes: int, image_size: int) -> nn.Module:
    options = {k: v for k, v in cfg.items() if k != "name" and v is not None}
    if cfg["name"] == "resnet18" and "small_input" not in options:
        options["small_input"] = image_size <= 64
    return BACKBONES.get(cfg["name"])(num_classes, **options)
