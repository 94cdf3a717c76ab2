"""Per-epoch running means of loss terms and statistics, accumulated on the training device.

Why on the device: reading a CUDA tensor on the host (``.item()``, ``float(t)``) waits for
every queued kernel, so one read per statistic per step keeps the GPU idle while Python
catches up. Each step here only queues a few tiny kernels (stack, finiteness, add); the
host reads the sums once per logging interval (:meth:`EpochMeter.read`). The divergence
check rides along: the step, and the loss term, of the first non-finite loss are kept on
the device too, so a diverged run still stops before anything from the bad steps is
written, at the next read.

A statistic that is NaN at a step (``pseudo_label_acc`` with nothing trusted) is left out
of its mean, as if the algorithm had not reported it at that step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor


@dataclass
class Divergence:
    """Where the first non-finite loss appeared."""

    step: int
    term: str


class EpochMeter:
    """Running sums of one epoch's loss terms and statistics (saved in mid-epoch checkpoints)."""

    def __init__(self, state: Mapping[str, Any] | None = None):
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.images = int(state.get("images", 0))
        self.seconds = float(state.get("seconds", 0.0))
        self._names: tuple[str, ...] = ()
        self._losses = 0                     # how many of ``_names`` are loss terms (checked for finiteness)
        self._sum: Tensor | None = None       # float64 [K] on the device
        self._count: Tensor | None = None     # float64 [K]
        self._first_bad: Tensor | None = None  # int64 [2]: (step, loss index) of the first non-finite loss, or -1

    # -- per step: device only --------------------------------------------------------
    def add_step(self, step: int, losses: Mapping[str, Tensor], stats: Mapping[str, Tensor | float]) -> None:
        """Accumulate one step's ``losses`` (``total`` first) and ``stats`` without a host read."""
        names = tuple(f"loss/{k}" for k in losses) + tuple(stats)
        first = next(iter(losses.values()))
        values = torch.stack([v.detach().reshape(()).double() for v in losses.values()]
                             + [_scalar(v, first) for v in stats.values()])
        if names != self._names:
            self.read()                       # a new set of names (rare): settle the old sums first
            self._start(names, len(losses), values)
        finite = torch.isfinite(values)
        self._sum += torch.where(finite, values, torch.zeros_like(values))
        self._count += finite.double()
        bad = ~finite[: self._losses]
        term = torch.argmax(bad.long())   # the first non-finite term (total is index 0: named only if none else is)
        if self._losses > 1:
            term = torch.where(bad[1:].any(), torch.argmax(bad[1:].long()) + 1, term)
        fresh = bad.any() & (self._first_bad[0] < 0)
        here = torch.stack([torch.full_like(term, step), term])   # a fill, not a host-to-device copy
        self._first_bad = torch.where(fresh, here, self._first_bad)

    def _start(self, names: tuple[str, ...], n_losses: int, like: Tensor) -> None:
        self._names, self._losses = names, n_losses
        self._sum = torch.zeros(len(names), dtype=torch.float64, device=like.device)
        self._count = torch.zeros_like(self._sum)
        self._first_bad = torch.full((2,), -1, dtype=torch.long, device=like.device)

    # -- per logging interval: one host read --------------------------------------------
    def read(self, dist: Any = None) -> Divergence | None:
        """Move the device sums to the host means (one transfer); the first divergence, if any.

        ``dist`` (a DistContext): sum the sums and counts over the ranks first (one all-reduce), so
        the logged means are over the global batch; every rank must then read at the same step.
        """
        if self._sum is None:
            return None
        totals = torch.cat([self._sum, self._count])
        if dist is not None and dist.enabled:
            totals = dist.all_reduce(totals.to(dist.device)).to(totals.device)
        packed = torch.cat([totals, self._first_bad.double()]).cpu().tolist()
        k = len(self._names)
        for name, total, count in zip(self._names, packed[:k], packed[k:2 * k]):
            if count:
                self.sums[name] = self.sums.get(name, 0.0) + total
                self.counts[name] = self.counts.get(name, 0) + int(count)
        bad_step, bad_term = int(packed[2 * k]), int(packed[2 * k + 1])
        names = self._names
        self._sum.zero_()
        self._count.zero_()
        self._first_bad.fill_(-1)
        if bad_step < 0:
            return None
        term = names[bad_term].split("/", 1)[1]
        return Divergence(bad_step, term)

    def mean(self, name: str) -> float | None:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else None

    def loss_means(self) -> dict[str, float | None]:
        return {k.split("/", 1)[1]: self.mean(k) for k in self.sums if k.startswith("loss/")}

    def stat_names(self) -> list[str]:
        return [k for k in self.sums if not k.startswith("loss/")]

    def state(self) -> dict[str, Any]:
        """Host state for a checkpoint (call :meth:`read` first so nothing is left on the device)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts), "images": self.images,
                "seconds": self.seconds}


def _scalar(value: Tensor | float, like: Tensor) -> Tensor:
    """A statistic as a float64 scalar on ``like``'s device.

    A Python number becomes a fill (``torch.full``): ``torch.tensor(x, device="cuda")`` would be a
    synchronous host-to-device copy, i.e. a sync.
    """
    if isinstance(value, Tensor):
        return value.detach().reshape(()).to(like.device, torch.float64)
    return torch.full((), float(value), dtype=torch.float64, device=like.device)
