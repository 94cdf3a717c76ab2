"""Named views ("plain", "weak", "strong") of uint8 image batches, and their normalisation.

A view is made in two steps: its random parameters are drawn on the CPU from a seeded
``torch.Generator`` (:meth:`Views.sample`), then applied to a whole uint8 [N, 3, H, W] batch
on whichever device holds it (:meth:`Views.apply`): in the loader workers on the CPU, or on
the training GPU. The operations are in :mod:`sslzoo.data.augment` (FixMatch's RandAugment
with random magnitudes + Cutout for the strong view, a padded crop + flip for the weak one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import SSLZooError
from .augment import ViewRecipe
from .base import Rows

MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics, as the official Ada-CM code
STD = (0.229, 0.224, 0.225)
RANDAUGMENT_VARIANTS = ("fixmatch", "torchvision", "none")
APPLY_ON = ("auto", "loader", "train")


@dataclass
class AugmentConfig:
    """The ``augment`` config section (sslzoo/config.py documents each key)."""

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
    """The views of one run: ``sample`` their parameters, ``apply`` them to a batch (any device)."""

    def __init__(self, image_size: int, cfg: AugmentConfig):
        self.cfg = cfg
        self.pad = int(round(cfg.crop_padding * image_size))
        if not 0 <= self.pad < image_size:   # reflect padding cannot reach past the opposite edge
            raise SSLZooError(f"augment.crop_padding={cfg.crop_padding} gives {self.pad} pixels of padding for "
                              f"{image_size}-pixel images; it must be in [0, 1) of the image side.")
        if cfg.randaugment not in RANDAUGMENT_VARIANTS:
            raise SSLZooError(f"augment.randaugment must be one of {', '.join(RANDAUGMENT_VARIANTS)}; "
                              f"got {cfg.randaugment!r}.")
        if cfg.device not in APPLY_ON:
            raise SSLZooError(f"augment.device must be one of {', '.join(APPLY_ON)}; got {cfg.device!r}.")
        self.recipe = ViewRecipe(size=image_size, padding=self.pad, padding_mode=cfg.crop_padding_mode,
                                 crop_prob=float(cfg.crop_prob), flip=bool(cfg.flip), randaugment=cfg.randaugment,
                                 num_ops=int(cfg.randaugment_n), magnitude=int(cfg.randaugment_m),
                                 randaugment_first=bool(cfg.randaugment_first), cutout=float(cfg.cutout))

    def sample(self, view: str, n: int, gen: torch.Generator) -> dict[str, Any]:
        return self.recipe.sample(view, n, gen)

    def apply(self, view: str, x: Tensor, params: dict[str, Any]) -> Tensor:
        return self.recipe.apply(view, x, params)

    def batch(self, view: str, x: Tensor, gen: torch.Generator) -> Tensor:
        """Sample and apply in one go (the loader workers' path)."""
        return self.apply(view, x, self.sample(view, x.shape[0], gen))

    def on_training_device(self, device: torch.device) -> bool:
        """Whether views are built on the training device (else in the loader workers, on the CPU).

        ``auto``: on a GPU, where the per-image cost would otherwise starve it; on the CPU, in
        the workers, which then overlap with training.
        """
        if self.cfg.device == "auto":
            return device.type != "cpu"
        return self.cfg.device == "train"


def channels_first(rows: np.ndarray) -> Tensor:
    """uint8 [N, H, W, 3] rows as a contiguous uint8 [N, 3, H, W] tensor.

    numpy's transposing copy, not torch's ``permute(...).contiguous()``: 0.69 against 1.38 ms for
    16 rows of 224 px on one thread (2026-12-01, 200 interleaved repeats), the same bytes."""
    return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 3, 1, 2)))


def gather_images(images: Rows, index: Any) -> Tensor:
    """uint8 [N, 3, H, W] of ``images[index]``, read from disk and laid out channels first once
    (every view of the batch is then made from contiguous planes)."""
    return channels_first(images.take(index))


class ImageRows:
    """``rows[index]`` is uint8 [k, 3, H, W] read from disk for just those rows: a tensor-like view
    of a data set for loops that index it by batch (SimCLR pretraining), without loading it all."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, slice):
            index = range(len(self))[index]
        elif isinstance(index, Tensor):
            index = index.cpu().numpy()
        return gather_images(self.rows, index)


_STATS: dict[str, tuple[Tensor, Tensor]] = {}


def _stats(device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel scale 1 / (255 std) and shift -mean / std as [1, 3, 1, 1] tensors on ``device``,
    made once (no per-step host-to-device copy)."""
    key = str(device)
    if key not in _STATS:
        with torch.inference_mode(False):
            mean = torch.tensor(MEAN, dtype=torch.float64)
            std = torch.tensor(STD, dtype=torch.float64)
            _STATS[key] = ((1.0 / (255.0 * std)).float().view(1, 3, 1, 1).to(device),
                           (-mean / std).float().view(1, 3, 1, 1).to(device))
    return _STATS[key]


def normalize_batch(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """uint8 [N, 3, H, W] -> (x / 255 - mean) / std as float on ``device`` (on the device, not in workers).

    The uint8 batch is copied (non-blocking from pinned memory) and, for channels_last, re-laid
    out while still 1 byte per value; then one conversion and one multiply-add per value.
    """
    x = x.to(device, non_blocking=True)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    scale, shift = _stats(x.device)
    return x.to(torch.float32, copy=True).mul_(scale).add_(shift)
