"""Training batches indexed by global step, and the evaluation stream.

Why by step: batch k of a run is a pure function of (seed, k, rank): which labeled and
unlabeled images it holds (per-epoch permutations seeded by the run's seed) and their
augmentations (every view parameter drawn from a ``torch.Generator`` seeded by (seed, k,
rank)). So results do not depend on the number of loader workers, nor on where the views
are built, resuming at step k reproduces the uninterrupted run exactly, and a DDP rank simply
takes its slice of the global batch. Nothing here touches torch's global random state.

Where the work happens: a loader worker reads the step's rows from the memory-mapped cache
(a few images, never a whole split) and draws the views' parameters; then either it builds
the views itself on the CPU (``augment.device=loader``: the default without a GPU, where
workers overlap with training) or it hands the raw uint8 rows and the parameters over
(pinned, copied without blocking) and :func:`realize` builds the views on the training GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .augment import to_device
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


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by ``derive_seed(*parts)``: where every view parameter comes from."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_order(pool_size: int, needed: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: concatenated independent permutations of the pool."""
    rng = np.random.default_rng([seed, stream, epoch])
    reps = max(1, math.ceil(needed / max(1, pool_size)))
    return np.concatenate([rng.permutation(pool_size) for _ in range(reps)])[:needed]


class StepBatches(Dataset):
    """``dataset[step]`` is the whole batch of that global step for this rank (a dict, see :func:`realize`).

    ``build_views``: make the views here (on the CPU, in the loader worker); otherwise hand over
    the raw rows and the views' parameters for the training device to apply.
    """

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet | None, plan: BatchPlan, seed: int,
                 labeled_view: str, unlabeled_views: tuple[str, ...], views: Views,
                 extra_labeled_views: tuple[str, ...] = (), build_views: bool = True):
        self.labeled, self.unlabeled, self.plan, self.seed = labeled, unlabeled, plan, seed
        self.labeled_view, self.unlabeled_views, self.views = labeled_view, unlabeled_views, views
        self.extra_labeled_views, self.build_views = extra_labeled_views, build_views
        self._cache: dict[tuple[int, int], np.ndarray] = {}

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
        gen = generator(self.seed, AUGMENT_STREAM, step, p.rank)
        li = self._indices(LABELED_STREAM, len(self.labeled), p.batch_size, step)
        labeled = gather_images(self.labeled.images, li)
        out: dict[str, Any] = {"y_l": torch.from_numpy(self.labeled.labels[li]),
                               "l_index": torch.from_numpy(li.astype(np.int64)),
                               "u_index": torch.zeros(0, dtype=torch.long), "u_true": torch.zeros(0, dtype=torch.long)}
        # parameters in a fixed order: the labeled view, the unlabeled views, the extra labeled views
        l_params = self.views.sample(self.labeled_view, len(li), gen)
        unlabeled, u_params = None, []
        if self.unlabeled_views and self.unlabeled is not None:
            ui = self._indices(UNLABELED_STREAM, len(self.unlabeled), p.batch_size * p.mu, step)
            unlabeled = gather_images(self.unlabeled.images, ui)   # read once, shared by every view
            u_params = [self.views.sample(v, len(ui), gen) for v in self.unlabeled_views]
            out["u_index"] = torch.from_numpy(ui.astype(np.int64))
            out["u_true"] = torch.from_numpy(self.unlabeled.labels[ui])
        e_params = [self.views.sample(v, len(li), gen) for v in self.extra_labeled_views]
        if self.build_views:
            out["x_l"] = self.views.apply(self.labeled_view, labeled, l_params)
            out["u_views"] = [self.views.apply(v, unlabeled, q) for v, q in zip(self.unlabeled_views, u_params)]
            out["l_views"] = [self.views.apply(v, labeled, q) for v, q in zip(self.extra_labeled_views, e_params)]
        else:
            out["raw"] = {"labeled": labeled.contiguous(),
                          "unlabeled": unlabeled.contiguous() if unlabeled is not None else None,
                          "l_params": l_params, "u_params": u_params, "e_params": e_params}
        return out


def realize(raw: dict[str, Any], views: Views, labeled_view: str, unlabeled_views: tuple[str, ...],
            extra_labeled_views: tuple[str, ...], device: torch.device) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(labeled view, unlabeled views, extra labeled views) of a loader item, as uint8 on ``device``.

    Views built in the worker are only copied; otherwise the raw rows go over once and every
    view is built from them on the device.
    """
    if "raw" not in raw:
        move = lambda x: x.to(device, non_blocking=True)   # noqa: E731
        return move(raw["x_l"]), [move(v) for v in raw["u_views"]], [move(v) for v in raw["l_views"]]
    r = to_device(raw["raw"], device)
    labeled = r["labeled"]
    x_l = views.apply(labeled_view, labeled, r["l_params"])
    u_views = []
    if r["unlabeled"] is not None:
        unlabeled = r["unlabeled"]
        u_views = [views.apply(v, unlabeled, q) for v, q in zip(unlabeled_views, r["u_params"])]
    l_views = [views.apply(v, labeled, q) for v, q in zip(extra_labeled_views, r["e_params"])]
    return x_l, u_views, l_views


def step_loader(batches: StepBatches, start_step: int, total_steps: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """A loader yielding the batches of steps start_step .. total_steps-1, prefetched by workers."""
    return DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps),
                      num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers > 0 else None,
                      persistent_workers=False)


def view_batches(images: ImageSet, views: Views, view: str, seed: int, chunk: int,
                 device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 view on ``device``, labels) over a whole set in chunks, deterministically.

    Chunk i's view parameters come from a generator seeded by (``seed``, i) alone, so a pass
    neither depends on nor disturbs any other random stream; rows are read chunk by chunk.
    """
    device = device or torch.device("cpu")
    for i, start in enumerate(range(0, len(images), chunk)):
        part = slice(start, min(start + chunk, len(images)))
        x = gather_images(images.images, part).to(device, non_blocking=True)
        if view != "plain":
            x = views.apply(view, x, views.sample(view, x.shape[0], generator(seed, i)))
        yield x, torch.from_numpy(images.labels[part])


def augment_config(cfg: dict[str, Any]) -> AugmentConfig:
    return AugmentConfig(**cfg)
