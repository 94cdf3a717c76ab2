"""ResNet-18 with the paper's head; weights from an MS-Celeb-1M checkpoint or torchvision's cache.

The MS-Celeb-1M ResNet-18 that FER papers share is a dict whose ``state_dict`` holds
torchvision key names (often with a ``module.`` prefix from DataParallel); its ``fc``
is a face-identity classifier and is dropped.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SSLZooError
from ..registry import register_backbone
from .head import PaperHead
from .weights import load_part, read_state_dict


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, dropout: float = 0.5, normalize_feature: bool = True,
                 small_input: bool = False):
        super().__init__()
        import torchvision  # imported here: torchvision.models costs ~2 s at process start
        net = torchvision.models.resnet18(weights=None)
        if small_input:  # CIFAR-style stem for <= 64 px images: keep spatial resolution
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.body = net
        self.feature_dim = 512
        self.head = PaperHead(512, num_classes, dropout, normalize_feature)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.body(x))


def load_resnet_checkpoint(model: ResNet18, path: str | Path) -> None:
    """Load a torchvision-keyed ResNet-18 checkpoint into ``model.body`` (fc ignored).

    An sslzoo ``checkpoint.pt`` of a resnet18 run works too (its ``body.`` keys are used).
    """
    state = read_state_dict(path, "a ResNet-18 checkpoint, e.g. the MS-Celeb-1M resnet18_msceleb.pth")
    if any(k.startswith("body.") for k in state):          # an sslzoo run of this backbone
        state = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_part(model.body, state, path, "torchvision's ResNet-18 (a 'module.' prefix and an 'fc' layer are tolerated)")


@register_backbone("resnet18")
def resnet18(num_classes: int, *, weights: str | None = None, pretrained: str | None = None,
             dropout: float = 0.5, normalize_feature: bool = True, small_input: bool = False) -> nn.Module:
    """ResNet-18 + the paper's head (dropout 0.5, L2-normalize, linear); MS-Celeb/ImageNet weights."""
    model = ResNet18(num_classes, dropout, normalize_feature, small_input)
    if weights:
        load_resnet_checkpoint(model, weights)
    elif pretrained == "imagenet":
        import torchvision
        try:
            tv = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        except Exception as exc:  # noqa: BLE001 - offline machines have no download
            raise SSLZooError(f"ImageNet weights for ResNet-18 are not in torchvision's cache "
                              f"({torch.hub.get_dir()}) and cannot be downloaded here ({exc}). Put the "
                              f"file there or pass backbone.weights=PATH.") from None
        state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
        model.body.load_state_dict(state, strict=False)
    elif pretrained:
        from ..registry import PRETRAINED
        raise SSLZooError(f"backbone.pretrained must be 'imagenet', a pretraining recipe "
                          f"({', '.join(PRETRAINED.names())}) or empty; got {pretrained!r} "
                          f"(for MS-Celeb-1M weights use backbone.weights=PATH).")
    return model
