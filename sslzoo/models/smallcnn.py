"""A small CNN sized for CPU-scale runs on the built-in 32x32 data (the default there).

Above 64 px its first convolution has stride 2 (the rule resnet18 follows with its stem): at
224 px a stride-1 first block convolves 48 images at full resolution, 1.3 GB of activations
kept for backward on the host and a 36 px receptive field; stride 2 quarters both costs and
doubles what each feature sees. ``backbone.stem_stride=1`` restores the full-resolution block.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SSLZooError
from ..registry import register_backbone
from .head import PaperHead
from .weights import load_part, read_state_dict


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.5, normalize_feature: bool = True,
                 stem_stride: int = 1):
        super().__init__()
        self.features = nn.Sequential(_block(3, width, stem_stride), _block(width, 2 * width),
                                      _block(2 * width, 4 * width))
        self.feature_dim = 4 * width
        self.head = PaperHead(self.feature_dim, num_classes, dropout, normalize_feature)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.head(pooled)


def load_smallcnn_weights(model: SmallCNN, path: str | Path) -> None:
    """Load the convolutional layers from ``path`` (the head is left new: its classes differ).

    ``path``: an sslzoo ``checkpoint.pt`` of a smallcnn run of the same width (e.g. the
    identity pretraining of ``docs/pretraining.md``) or a state dict with ``features.*`` keys.
    """
    state = read_state_dict(path, "an sslzoo checkpoint.pt of a smallcnn run, or a state dict of its features")
    state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    load_part(model.features, state, path, f"smallcnn width {model.feature_dim // 4} (its 'features.*' "
                                           f"layers; was it trained with another backbone.width?)")


def default_stem_stride(image_size: int) -> int:
    """1 up to 64 px (the built-in data), 2 above: the same cut as resnet18's small-input stem."""
    return 1 if image_size <= 64 else 2


@register_backbone("smallcnn")
def smallcnn(num_classes: int, *, width: int = 32, dropout: float = 0.5, normalize_feature: bool = True,
             weights: str | None = None, image_size: int = 32, stem_stride: int | None = None) -> nn.Module:
    """Six-conv CNN (~0.3M params at width 32) for CPU-scale runs; default on the built-in data.

    ``image_size`` comes from the run (``build_backbone`` passes it); ``stem_stride`` overrides
    the stride it implies for the first convolution (weights fit either: the shapes are equal).
    """
    stride = default_stem_stride(image_size) if stem_stride is None else stem_stride
    if stride not in (1, 2):   # a 3x3 kernel with a larger stride would skip pixels
        raise SSLZooError(f"backbone.stem_stride={stem_stride!r}: expected 1 or 2 (the first convolution's stride)")
    model = SmallCNN(num_classes, width, dropout, normalize_feature, stride)
    if weights:
        load_smallcnn_weights(model, weights)
    return model
