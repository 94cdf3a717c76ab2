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
    """Load a torchvision-keyed ResNet-18 checkpoint into ``model.body`` (fc ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SSLZooError(f"backbone.weights: file '{path}' does not exist (expected a ResNet-18 "
                          f"checkpoint, e.g. the MS-Celeb-1M resnet18_msceleb.pth).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable/unsafe file: say which and why
        raise SSLZooError(f"backbone.weights: could not read '{path}' as a PyTorch checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SSLZooError(f"backbone.weights: '{path}' holds no state dict (expected a dict of "
                          f"tensors, or a dict with a 'state_dict' entry).")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.body.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint "
                         f"{tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
        raise SSLZooError(f"backbone.weights: '{path}' does not fit torchvision's ResNet-18: "
                          f"{'; '.join(parts)}. (A 'module.' prefix and an 'fc' layer are tolerated.)")
    model.body.load_state_dict(state, strict=False)


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
        raise SSLZooError(f"backbone.pretrained must be 'imagenet' or empty; got {pretrained!r} "
                          f"(for MS-Celeb-1M weights use backbone.weights=PATH).")
    return model
