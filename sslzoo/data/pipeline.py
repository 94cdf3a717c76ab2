"""Training batches indexed by global step.

Why by step: batch k of a run is a pure function of (seed, k, rank): which
labeled and unlabeled images it holds (per-epoch permutations seeded by the run's
seed) and their augmentations (torch's RNG seeded per step). So results do not
depend on the number of loader workers, resuming at step k reproduces the
uninterrupted run exactly, and a DDP rank simply takes its slice of the global
batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import ImageSet
from .views import AugmentConfig, Views, to_chw

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


class StepBatches(Dataset):
    """``dataset[step]`` is the whole uint8 batch of that global step for this rank."""

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet | None, plan: BatchPlan, seed: int,
                 labeled_view: str, unlabeled_views: tuple[str, ...], views: Views):
        self.labeled, self.unlabeled, self.plan, self.seed = labeled, unlabeled, plan, seed
        self.labeled_view, self.unlabeled_views, self.views = labeled_view, unlabeled_views, views
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
        p = self.plan
        torch.manual_seed(derive_seed(self.seed, AUGMENT_STREAM, step, p.rank))
        li = self._indices(LABELED_STREAM, len(self.labeled), p.batch_size, step)
        view = self.views.get(self.labeled_view)
        out: dict[str, Any] = {
            "x_l": torch.stack([view(to_chw(self.labeled.images[i])) for i in li]),
            "y_l": torch.from_numpy(self.labeled.labels[li]),
            "u_views": [], "u_index": torch.zeros(0, dtype=torch.long), "u_true": torch.zeros(0, dtype=torch.long),
        }
        if self.unlabeled_views and self.unlabeled is not None:
            ui = self._indices(UNLABELED_STREAM, len(self.unlabeled), p.batch_size * p.mu, step)
            imgs = [to_chw(self.unlabeled.images[i]) for i in ui]
            out["u_views"] = [torch.stack([self.views.get(v)(img) for img in imgs]) for v in self.unlabeled_views]
            out["u_index"] = torch.from_numpy(ui.astype(np.int64))
            out["u_true"] = torch.from_numpy(self.unlabeled.labels[ui])
        return out


def step_loader(batches: StepBatches, start_step: int, total_steps: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """A loader yielding the batches of steps start_step .. total_steps-1, prefetched by workers."""
    return DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps),
                      num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers > 0 else None,
                      persistent_workers=False)


def view_batches(images: ImageSet, views: Views, view: str, seed: int, chunk: int):
    """Yield (uint8 batch, labels) over a whole set with one named view, deterministically."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    fn = views.get(view)
    try:
        for start in range(0, len(images), chunk):
            idx = range(start, min(start + chunk, len(images)))
            x = torch.stack([fn(to_chw(images.images[i])) for i in idx]) if view != "plain" \
                else torch.from_numpy(np.ascontiguousarray(images.images[start:start + chunk])).permute(0, 3, 1, 2)
            yield x, torch.from_numpy(images.labels[start:start + chunk])
    finally:
        torch.set_rng_state(gen_state)


def augment_config(cfg: dict[str, Any]) -> AugmentConfig:
    return AugmentConfig(**cfg)
