"""Training batches indexed by global step.

Why by step: batch k of a run is a pure function of (seed, k, rank): which
labeled and unlabeled images it holds (per-epoch permutations seeded by the run's
seed) and their augmentations (torch's CPU RNG seeded per step, and restored
afterwards, so the training process's own random stream is untouched even with
``num_workers=0``). So results do not depend on the number of loader workers,
resuming at step k reproduces the uninterrupted run exactly, and a DDP rank
simply takes its slice of the global batch.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import ImageSet
from .views import AugmentConfig, Views, gather_images

LABELED_STREAM, UNLABELED_STREAM, AUGMENT_STREAM = 1, 2, 3


@dataclass
class BatchPlan:
    batch_size: int        # labeled images per step per process
    mu: int                # unlabeled images per labeled image
    iters_per_epoch: int
    world_size: int = 1
    rank: int = 0


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts, stable across processes and platforms."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def epoch_order(pool_size: int, needed: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: concatenated independent permutations of the pool."""
    rng = np.random.default_rng([seed, stream, epoch])
    reps = max(1, math.ceil(needed / max(1, pool_size)))
    return np.concatenate([rng.permutation(pool_size) for _ in range(reps)])[:needed]


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator (which the views draw from), then restore it.

    Why not ``torch.manual_seed``: that also reseeds every CUDA generator and leaves the
    CPU one reseeded, so with ``num_workers=0`` the training process's own random
    numbers (dropout) would depend on the loader, i.e. on the number of workers.
    """
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(state)


class StepBatches(Dataset):
    """``dataset[step]`` is the whole uint8 batch of that global step for this rank."""

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet | None, plan: BatchPlan, seed: int,
                 labeled_view: str, unlabeled_views: tuple[str, ...], views: Views,
                 extra_labeled_views: tuple[str, ...] = ()):
        self.labeled, self.unlabeled, self.plan, self.seed = labeled, unlabeled, plan, seed
        self.labeled_view, self.unlabeled_views, self.views = labeled_view, unlabeled_views, views
        self.extra_labeled_views = extra_labeled_views
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:  # steps are addressed directly; the sampler decides which
        return 1 << 62

    def _indices(self, stream: int, pool_size: int, per_rank: int, step: int) -> np.ndarray:
        p = self.plan
        epoch, it = divmod(step, p.iters_per_epoch)
        key = (stream, epoch)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != stream}
            self._cache[key] = epoch_order(pool_size, p.iters_per_epoch * per_rank * p.world_size,
                                           self.seed, stream, epoch)
        start = (it * p.world_size + p.rank) * per_rank
        return self._cache[key][start:start + per_rank]

    def __getitem__(self, step: int) -> dict[str, Any]:
        with seeded_cpu_rng(derive_seed(self.seed, AUGMENT_STREAM, step, self.plan.rank)):
            return self._build(step)

    def _build(self, step: int) -> dict[str, Any]:
        p = self.plan
        li = self._indices(LABELED_STREAM, len(self.labeled), p.batch_size, step)
        labeled = gather_images(self.labeled.images, li)
        out: dict[str, Any] = {
            "x_l": self.views.batch(self.labeled_view, labeled),
            "y_l": torch.from_numpy(self.labeled.labels[li]),
            "l_index": torch.from_numpy(li.astype(np.int64)),
            "u_views": [], "u_index": torch.zeros(0, dtype=torch.long), "u_true": torch.zeros(0, dtype=torch.long),
        }
        if self.unlabeled_views and self.unlabeled is not None:
            ui = self._indices(UNLABELED_STREAM, len(self.unlabeled), p.batch_size * p.mu, step)
            imgs = gather_images(self.unlabeled.images, ui)   # read once, shared by every view
            out["u_views"] = [self.views.batch(v, imgs) for v in self.unlabeled_views]
            out["u_index"] = torch.from_numpy(ui.astype(np.int64))
            out["u_true"] = torch.from_numpy(self.unlabeled.labels[ui])
        out["l_views"] = [self.views.batch(v, labeled) for v in self.extra_labeled_views]   # drawn last
        return out


def step_loader(batches: StepBatches, start_step: int, total_steps: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """A loader yielding the batches of steps start_step .. total_steps-1, prefetched by workers."""
    return DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps),
                      num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers > 0 else None,
                      persistent_workers=False)


def view_batches(images: ImageSet, views: Views, view: str, seed: int, chunk: int):
    """Yield (uint8 batch, labels) over a whole set with one named view, deterministically.

    The views draw from a stream seeded by ``seed`` alone: the caller's CPU random state is
    swapped out while a chunk is built and restored before it is yielded, so whatever runs
    between chunks neither perturbs the views nor is perturbed by them.
    """
    own = torch.Generator().manual_seed(seed).get_state()
    for start in range(0, len(images), chunk):
        part = slice(start, min(start + chunk, len(images)))
        outer = torch.default_generator.get_state()
        torch.default_generator.set_state(own)
        try:
            x = views.batch(view, gather_images(images.images, part))
            own = torch.default_generator.get_state()
        finally:
            torch.default_generator.set_state(outer)
        yield x, torch.from_numpy(images.labels[part])


def augment_config(cfg: dict[str, Any]) -> AugmentConfig:
    return AugmentConfig(**cfg)
