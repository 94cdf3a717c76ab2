"""Weak and strong augmented views of uint8 CHW image tensors.

Weak: random crop with reflect padding + horizontal flip (the paper's DFER weak
augmentation). Strong: weak + torchvision's RandAugment + Cutout (FixMatch's
strong augmentation). Why torchvision's RandAugment and not the ``randaugment``
PyPI package: it is maintained with torchvision, works directly on uint8 tensors
(no PIL round trip), and draws from torch's RNG, which the pipeline seeds per
step, so views are reproducible and independent of the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics, as the official Ada-CM code
STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    crop_padding: float = 0.125     # fraction of the image side
    flip: bool = True
    randaugment_n: int = 2
    randaugment_m: int = 10
    cutout: float = 0.5             # max side of the Cutout square, as a fraction of the image side


class Views:
    """Builds a named view ("plain", "weak", "strong") of one uint8 [3, H, W] image."""

    def __init__(self, image_size: int, cfg: AugmentConfig):
        self.cfg = cfg
        self.pad = int(round(cfg.crop_padding * image_size))
        self.randaugment = v2.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m)

    def weak(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        if self.pad:
            padded = F.pad(img[None].float(), (self.pad,) * 4, mode="reflect")[0].to(torch.uint8)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            img = padded[:, top:top + h, left:left + w]
        if self.cfg.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img

    def strong(self, img: Tensor) -> Tensor:
        img = self.randaugment(self.weak(img))
        return cutout(img, self.cfg.cutout) if self.cfg.cutout > 0 else img

    def plain(self, img: Tensor) -> Tensor:
        return img

    def get(self, name: str) -> Callable[[Tensor], Tensor]:
        if name not in ("plain", "weak", "strong"):
            raise ValueError(f"unknown view {name!r}; expected plain, weak or strong")
        return getattr(self, name)


def cutout(img: Tensor, max_fraction: float) -> Tensor:
    """Grey out a random square whose side is U(0, max_fraction) of the image side."""
    h, w = img.shape[-2:]
    side = int(torch.rand(()) * max_fraction * min(h, w))
    if side == 0:
        return img
    cy, cx = torch.randint(0, h, ()).item(), torch.randint(0, w, ()).item()
    y0, y1 = max(0, cy - side // 2), min(h, cy + side - side // 2)
    x0, x1 = max(0, cx - side // 2), min(w, cx + side - side // 2)
    img = img.clone()
    img[:, y0:y1, x0:x1] = 127
    return img


def to_chw(img_hwc) -> Tensor:
    return torch.from_numpy(img_hwc).permute(2, 0, 1)


def normalize_batch(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """uint8 [N, 3, H, W] -> normalized float on ``device`` (done on the device, not in workers)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
