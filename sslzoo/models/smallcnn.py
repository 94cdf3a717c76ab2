"""A small CNN sized for CPU-scale runs on the built-in 32x32 data (the default there)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..registry import register_backbone
from .head import PaperHead
from .weights import load_part, read_state_dict


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.5, normalize_feature: bool = True):
        super().__init__()
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width))
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


@register_backbone("smallcnn")
def smallcnn(num_classes: int, *, width: int = 32, dropout: float = 0.5, normalize_feature: bool = True,
             weights: str | None = None) -> nn.Module:
    """Six-conv CNN (~0.3M params at width 32) for CPU-scale runs; default on the built-in data."""
    model = SmallCNN(num_classes, width, dropout, normalize_feature)
    if weights:
        load_smallcnn_weights(model, weights)
    return model
