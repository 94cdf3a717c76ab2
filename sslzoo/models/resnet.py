"""ResNet-18 with the paper's head; weights from an MS-Celeb-1M checkpoint or torchvision's cache.

The MS-Celeb-1M ResNet-18 that FER papers share is a dict whose ``state_dict`` holds
torchvision key names (often with a ``module.`` prefix from DataParallel); its ``fc``
is a face-identity classifier and is dropped.
"""
from __future__ import annotations

import warnings
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


def imagenet_state_dict() -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 weights (IMAGENET1K_V1), from its cache or downloaded."""
    import torchvision
    try:
        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - offline machines have no download
        raise SSLZooError(f"ImageNet weights for ResNet-18 are not in torchvision's cache "
                          f"({torch.hub.get_dir()}) and cannot be downloaded here ({exc}). Put the "
                          f"file there or pass backbone.weights=PATH.") from None


def load_imagenet(model: ResNet18) -> None:
    """ImageNet weights into ``model.body`` (fc dropped); with the small-input stem, all but ``conv1``.

    Why load the rest instead of refusing: images of <= 64 px (FER2013 is 48 px) get a 3x3
    stride-1 ``conv1`` without max-pool, because ImageNet's 7x7 stride-2 stem and max-pool
    would shrink 48 px to 12 px before the first block. That kernel cannot take ImageNet's
    7x7 weights, but every later layer can, and that is what a PyTorch/timm user expects
    from ``pretrained``: timm loads what fits a changed model (a new classifier, other input
    channels) and says what it re-initialised, and fine-tuning an ImageNet ResNet on small
    images conventionally keeps all weights but the replaced stem. One warning names the
    layer left at its random initialisation and how to keep the ImageNet stem instead
    (``backbone.small_input=false``). Every other tensor must fit exactly (``load_part``).
    """
    state = {k: v for k, v in imagenet_state_dict().items() if not k.startswith("fc.")}
    stem = model.body.conv1.weight
    theirs = state.get("conv1.weight")
    if theirs is not None and tuple(theirs.shape) != tuple(stem.shape):
        state["conv1.weight"] = stem.detach().clone()
        warnings.warn(f"backbone.pretrained=imagenet: loaded every ImageNet ResNet-18 weight except "
                      f"conv1.weight, which keeps its random initialisation: small images (<= 64 px) use "
                      f"the small-input stem, a 3x3 stride-1 conv1 {tuple(stem.shape)} without max-pool, "
                      f"and ImageNet's conv1 is 7x7 stride-2 {tuple(theirs.shape)}. To use ImageNet's stem "
                      f"(and max-pool) instead, set backbone.small_input=false.", stacklevel=3)
    load_part(model.body, state, "torchvision's ImageNet weights", "ResNet-18")


@register_backbone("resnet18")
def resnet18(num_classes: int, *, weights: str | None = None, pretrained: str | None = None,
             dropout: float = 0.5, normalize_feature: bool = True, small_input: bool = False) -> nn.Module:
    """ResNet-18 + the paper's head (dropout 0.5, L2-normalize, linear); MS-Celeb/ImageNet weights."""
    model = ResNet18(num_classes, dropout, normalize_feature, small_input)
    if weights:
        load_resnet_checkpoint(model, weights)
    elif pretrained == "imagenet":
        load_imagenet(model)
    elif pretrained:
        from ..registry import PRETRAINED
        raise SSLZooError(f"backbone.pretrained must be 'imagenet', a pretraining recipe "
                          f"({', '.join(PRETRAINED.names())}) or empty; got {pretrained!r} "
                          f"(for MS-Celeb-1M weights use backbone.weights=PATH).")
    return model
