"""Weak and strong augmented views of uint8 CHW image tensors, per image or per batch.

Weak: random crop with reflect padding + horizontal flip (the paper's DFER weak
augmentation). Strong: weak + torchvision's RandAugment + Cutout (FixMatch's
strong augmentation). Why torchvision's RandAugment and not the ``randaugment``
PyPI package: it is maintained with torchvision, works directly on uint8 tensors
(no PIL round trip), and draws from torch's RNG, which the pipeline seeds per
step, so views are reproducible and independent of the number of workers.

Why batched: the crop + flip and Cutout of a whole batch are one gather / one
masked fill (no per-image Python, no float round trip for the padding), so the
only per-image work left in the loader is RandAugment, whose operations differ
per image. Every random number comes from torch's global RNG in a fixed order,
so a batch is a pure function of the RNG state it starts from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

from ..errors import SSLZooError

MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics, as the official Ada-CM code
STD = (0.229, 0.224, 0.225)
VIEW_NAMES = ("plain", "weak", "strong")


@dataclass
class AugmentConfig:
    crop_padding: float = 0.125     # fraction of the image side
    crop_padding_mode: str = "reflect"
    crop_prob: float = 1.0
    flip: bool = True
    randaugment: str = "fixmatch"
    randaugment_n: int = 2
    randaugment_m: int = 10
    randaugment_first: bool = False
    cutout: float = 0.5             # max side of the Cutout square, as a fraction of the image side
    device: str = "auto"


class Views:
    """Builds a named view ("plain", "weak", "strong") of uint8 images.

    ``get(name)`` works on one [3, H, W] image; ``batch(name, x)`` on a whole
    [N, 3, H, W] batch (what the data pipeline uses).
    """

    def __init__(self, image_size: int, cfg: AugmentConfig):
        self.cfg = cfg
        self.pad = int(round(cfg.crop_padding * image_size))
        if not 0 <= self.pad < image_size:   # reflect padding cannot reach past the opposite edge
            raise SSLZooError(f"augment.crop_padding={cfg.crop_padding} gives {self.pad} pixels of padding for "
                              f"{image_size}-pixel images; it must be in [0, 1) of the image side.")
        self.randaugment = v2.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m)

    # -- batches ------------------------------------------------------------------------
    def weak_batch(self, x: Tensor) -> Tensor:
        """Reflect-padded random crop + horizontal flip of every image, as one gather."""
        n, _, h, w = x.shape
        if n == 0 or (not self.pad and not self.cfg.flip):
            return x.contiguous()
        offsets = torch.randint(-self.pad, self.pad + 1, (n, 2)) if self.pad else torch.zeros(n, 2, dtype=torch.long)
        flip = torch.rand(n) < 0.5 if self.cfg.flip else torch.zeros(n, dtype=torch.bool)
        return crop_flip(x, offsets, flip)

    def strong_batch(self, x: Tensor) -> Tensor:
        """Weak, then RandAugment per image (its operations differ per image), then batched Cutout."""
        x = self.weak_batch(x)
        if x.shape[0] == 0:
            return x
        if self.cfg.randaugment_n > 0:
            x = torch.stack([self.randaugment(img) for img in x])
        return cutout_batch(x, self.cfg.cutout) if self.cfg.cutout > 0 else x

    def batch(self, name: str, x: Tensor) -> Tensor:
        """The named view of a uint8 [N, 3, H, W] batch, as a contiguous uint8 tensor."""
        if name == "plain":
            return x.contiguous()
        if name == "weak":
            return self.weak_batch(x)
        if name == "strong":
            return self.strong_batch(x)
        raise ValueError(f"unknown view {name!r}; expected plain, weak or strong")

    # -- single images (same transforms, batch of one) -------------------------------------
    def weak(self, img: Tensor) -> Tensor:
        return self.weak_batch(img[None])[0]

    def strong(self, img: Tensor) -> Tensor:
        return self.strong_batch(img[None])[0]

    def plain(self, img: Tensor) -> Tensor:
        return img

    def get(self, name: str) -> Callable[[Tensor], Tensor]:
        if name not in VIEW_NAMES:
            raise ValueError(f"unknown view {name!r}; expected plain, weak or strong")
        return getattr(self, name)


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map positions in a reflect-padded axis back to the original axis (torch/numpy 'reflect')."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(x: Tensor, offsets: Tensor, flip: Tensor) -> Tensor:
    """Crop each image at (dy, dx) = ``offsets[i]`` from a reflect-padded copy, then flip it if ``flip[i]``.

    Equivalent to ``F.pad(img, (p,)*4, "reflect")[:, p+dy : p+dy+H, p+dx : p+dx+W]`` (then ``.flip(-1)``),
    for |dy|, |dx| < the image side, computed for the whole batch as one gather on uint8.
    """
    n, c, h, w = x.shape
    rows = _reflect(torch.arange(h)[None, :] + offsets[:, :1], h)                   # [N, H]
    cols = _reflect(torch.arange(w)[None, :] + offsets[:, 1:], w)                   # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    pixel = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, pixel).view(n, c, h, w)   # a flat gather: ~4x faster than x[i, :, r, c]


def cutout_batch(x: Tensor, max_fraction: float) -> Tensor:
    """Grey out (127) one random square per image whose side is U(0, max_fraction) of the image side."""
    n, _, h, w = x.shape
    side = (torch.rand(n) * max_fraction * min(h, w)).long()
    cy, cx = torch.randint(0, h, (n,)), torch.randint(0, w, (n,))
    return fill_boxes(x, (cy - side // 2).clamp_min(0), (cy + side - side // 2).clamp_max(h),
                      (cx - side // 2).clamp_min(0), (cx + side - side // 2).clamp_max(w))


def fill_boxes(x: Tensor, y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, value: int = 127) -> Tensor:
    """Set rows [y0, y1) x columns [x0, x1) of each image to ``value`` (empty boxes change nothing)."""
    h, w = x.shape[-2:]
    ys, xs = torch.arange(h), torch.arange(w)
    in_rows = (ys[None, :] >= y0[:, None]) & (ys[None, :] < y1[:, None])             # [N, H]
    in_cols = (xs[None, :] >= x0[:, None]) & (xs[None, :] < x1[:, None])             # [N, W]
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], value)


def cutout(img: Tensor, max_fraction: float) -> Tensor:
    """Cutout of one [3, H, W] image (see ``cutout_batch``)."""
    return cutout_batch(img[None], max_fraction)[0]


def to_chw(img_hwc) -> Tensor:
    return torch.from_numpy(img_hwc).permute(2, 0, 1)


def gather_images(images: np.ndarray, index) -> Tensor:
    """uint8 [N, 3, H, W] (a channels-first view) of ``images[index]`` from an HWC array or memmap."""
    part = images[index]
    if isinstance(part, np.memmap) or not part.flags.writeable or not part.flags.c_contiguous:
        part = np.array(part)   # an owned, writable copy (torch warns on read-only memory)
    return torch.from_numpy(part).permute(0, 3, 1, 2)


_STATS: dict[str, tuple[Tensor, Tensor]] = {}


def _stats(device: torch.device) -> tuple[Tensor, Tensor]:
    """MEAN/STD as [1, 3, 1, 1] tensors on ``device``, made once (no per-step host-to-device copy)."""
    key = str(device)
    if key not in _STATS:
        with torch.inference_mode(False):
            _STATS[key] = (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                           torch.tensor(STD, device=device).view(1, 3, 1, 1))
    return _STATS[key]


def normalize_batch(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """uint8 [N, 3, H, W] -> normalized float on ``device`` (done on the device, not in workers).

    The uint8 batch is copied (non-blocking from pinned memory) and, for channels_last, re-laid
    out while still 1 byte per value; the float ops then keep that layout.
    """
    x = x.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    mean, std = _stats(x.device)
    return x.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)
