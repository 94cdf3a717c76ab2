"""WideResNet-28-2 (Zagoruyko & Komodakis), as in the paper's Tables 3-4 and the SSL literature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_backbone
from .head import PaperHead


class _Basic(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in, momentum=0.001), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out, momentum=0.001), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.leaky_relu(self.bn1(x), 0.1)
        y = self.conv2(F.leaky_relu(self.bn2(self.conv1(o)), 0.1))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, depth: int = 28, widen: int = 2, dropout: float = 0.5,
                 normalize_feature: bool = True):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
        for stage, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                layers.append(_Basic(widths[stage] if i == 0 else widths[stage + 1], widths[stage + 1],
                                     stride if i == 0 else 1))
        self.body = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3], momentum=0.001)
        self.feature_dim = widths[3]
        self.head = PaperHead(widths[3], num_classes, dropout, normalize_feature)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        o = F.leaky_relu(self.bn(self.body(x)), 0.1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


@register_backbone("wrn28_2")
def wrn28_2(num_classes: int, *, dropout: float = 0.5, normalize_feature: bool = True) -> nn.Module:
    """WideResNet-28-2 (1.5M params), the SSL literature's standard small backbone (paper Tables 3-4)."""
    return WideResNet(num_classes, 28, 2, dropout, normalize_feature)
