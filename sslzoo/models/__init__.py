"""Backbones. Every model maps images to ``(logits, features)``."""
from . import resnet, smallcnn, wrn  # noqa: F401  (import registers them)
from .head import PaperHead  # noqa: F401
from .build import build_backbone  # noqa: F401
