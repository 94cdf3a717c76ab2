"""What every data set hands to the trainer: decoded uint8 images + canonical labels.

Why arrays and not file paths: images are decoded and resized once (see the
loaders' cache), so the per-step cost is augmentation, never JPEG decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import SSLZooError


@dataclass
class ImageSet:
    """A split of a data set. ``images`` may be a read-only ``np.memmap``."""

    images: np.ndarray          # uint8 [N, H, W, 3]
    labels: np.ndarray          # int64 [N]; canonical ids, -1 where unknown (extra unlabeled data)
    ids: list[str]              # stable image ids (relative paths or generated names)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise SSLZooError(f"ImageSet images must be uint8 [N, H, W, 3]; got "
                              f"{self.images.dtype} {tuple(self.images.shape)}.")
        if self.images.shape[0] != n or len(self.ids) != n:
            raise SSLZooError(f"ImageSet has {self.images.shape[0]} images, {n} labels and "
                              f"{len(self.ids)} ids; they must match.")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], [self.ids[i] for i in index])

    @staticmethod
    def concat(parts: Sequence["ImageSet"]) -> "ImageSet":
        return ImageSet(np.concatenate([p.images for p in parts]),
                        np.concatenate([p.labels for p in parts]),
                        [i for p in parts for i in p.ids])


@dataclass
class DataBundle:
    """A loaded data set: a training split, a test split and the class names."""

    name: str
    classes: tuple[str, ...]    # canonical class names, index = label id
    train: ImageSet
    test: ImageSet
    skipped: list[str] = field(default_factory=list)   # files the loader could not use, with reasons
    info: dict[str, Any] = field(default_factory=dict)  # loader-specific facts shown by `sslzoo data`

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])
