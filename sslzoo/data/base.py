"""What every data set hands to the trainer: decoded uint8 images + canonical labels.

Why arrays and not file paths: images are decoded and resized once (see the
loaders' cache), so the per-step cost is augmentation, never JPEG decoding.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import SSLZooError


class Rows:
    """Some rows of a uint8 [N, H, W, 3] array, usually a read-only memory map: a view, never a copy.

    Why: a data set's decoded cache can be tens of GB (AffectNet at 224 px). A split, a subset
    or an unlabeled pool built from several data sets is an index into the arrays on disk, and
    only the rows a batch needs are read (:meth:`take`). Indexing a memmap with an array, as
    numpy does, would copy the whole selection into memory.
    """

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray | None]]):
        self.parts = [(base, None if index is None else np.asarray(index, dtype=np.int64)) for base, index in parts]
        self._sizes = [len(base) if index is None else len(index) for base, index in self.parts]
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        first = self.parts[0][0] if self.parts else np.zeros((0, 1, 1, 3), dtype=np.uint8)
        self.dtype = first.dtype
        self._row_shape = tuple(first.shape[1:])
        if any(tuple(b.shape[1:]) != self._row_shape or b.dtype != self.dtype for b, _ in self.parts):
            raise SSLZooError(f"cannot join images of different shapes or types: "
                              f"{sorted({(tuple(b.shape[1:]), str(b.dtype)) for b, _ in self.parts})}.")

    @classmethod
    def of(cls, images: "np.ndarray | Rows") -> "Rows":
        return images if isinstance(images, Rows) else cls([(images, None)])

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self._row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, index: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """The rows ``index`` (in that order) as an in-memory array; reads each part in sorted order."""
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self._row_shape), dtype=self.dtype)
        part = np.searchsorted(self._starts, index, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            base = self.parts[p][0]
            local = self._local(p, index[where])
            order = np.argsort(local, kind="stable")        # sequential reads of the file
            out[where[order]] = base[local[order]]
            _release_pages(base, int(local.min()), int(local.max()) + 1)
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        """One row (an image), for previews; use :meth:`take` for batches and :meth:`select` for views."""
        return self.take([int(i)])[0]

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self.take(np.arange(start, min(start + 256, len(self))))

    def is_memory_mapped(self) -> bool:
        """Whether every part lives in a memory-mapped file (pixels read from disk on demand)."""
        return all(isinstance(base, np.memmap) or isinstance(getattr(base, "base", None), np.memmap)
                   for base, _ in self.parts)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:   # an explicit np.asarray(rows) reads them all
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def select(self, index: Sequence[int] | np.ndarray) -> "Rows":
        """A view of the rows ``index``, in that order (no pixel is read)."""
        index = np.asarray(index, dtype=np.int64)
        part = np.searchsorted(self._starts, index, side="right") - 1
        runs = np.split(np.arange(len(index)), np.flatnonzero(np.diff(part)) + 1)   # consecutive rows of one part
        pieces = [(self.parts[part[r[0]]][0], self._local(part[r[0]], index[r])) for r in runs if len(r)]
        return Rows(pieces or [(self.parts[0][0], np.zeros(0, dtype=np.int64))])

    def _local(self, p: int, index: np.ndarray) -> np.ndarray:
        """Global row numbers of part ``p`` as rows of its base array."""
        rows = self.parts[p][1]
        local = index - self._starts[p]
        return local if rows is None else rows[local]

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        return Rows([piece for rows in parts for piece in rows.parts])


def _release_pages(base: np.ndarray, first: int, stop: int) -> None:
    """Let the process drop the mapped-file pages of rows [first, stop) it has just copied out.

    Why: every page of a memory-mapped file that a process touches stays in its resident
    memory until the kernel needs it back, so a run that evaluates (or trains over) a large
    cached split would look as big as the split. The pages stay in the page cache (shared,
    reclaimable); the next read of the rows is a cheap page fault, not a disk read.
    """
    mm = getattr(base, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or stop <= first:
        return
    row = base.strides[0]
    begin = base.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data + first * row
    start = begin - begin % mmap.PAGESIZE
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, begin + (stop - first) * row - start)
    except (OSError, ValueError):   # best effort: a platform or mapping that refuses the advice keeps its pages
        pass


@dataclass
class ImageSet:
    """A split of a data set: images (rows of arrays on disk, see :class:`Rows`), labels and ids."""

    images: Rows                # uint8 [N, H, W, 3]; an array or memmap given here is wrapped
    labels: np.ndarray          # int64 [N]; canonical ids, -1 where unknown (extra unlabeled data)
    ids: list[str]              # stable image ids (relative paths or generated names)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if not isinstance(self.images, Rows):
            arr = self.images
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise SSLZooError(f"ImageSet images must be uint8 [N, H, W, 3]; got "
                                  f"{arr.dtype} {tuple(arr.shape)}.")
            self.images = Rows.of(arr)
        if len(self.images) != n or len(self.ids) != n:
            raise SSLZooError(f"ImageSet has {len(self.images)} images, {n} labels and "
                              f"{len(self.ids)} ids; they must match.")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        """A view of the images ``index`` (labels and ids are copied; no pixel is read)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images.select(index), self.labels[index], [self.ids[i] for i in index])

    @staticmethod
    def concat(parts: Sequence["ImageSet"]) -> "ImageSet":
        return ImageSet(Rows.concat([p.images for p in parts]),
                        np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, dtype=np.int64),
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
