"""Ranks of a process group simulated by threads of this process, for unit tests of DDP math.

Why threads: each simulated rank runs the same code with its own slice and its own autograd
graph, and its collectives really exchange the other ranks' tensors (no queue of hand-made
peer values to keep in step with the code under test), yet no process is started.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch import Tensor

from sslzoo.distributed import DistContext


class _Exchange:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list[Tensor | None] = [None] * world_size

    def all_gather(self, rank: int, tensor: Tensor) -> list[Tensor]:
        self.slots[rank] = tensor.detach().clone()
        self.barrier.wait()
        parts = [t for t in self.slots if t is not None]
        self.barrier.wait()   # nobody overwrites a slot before every rank has read it
        return parts


class ThreadRank(DistContext):
    """A DistContext whose gather / all_reduce exchange tensors with the other threads' ranks."""

    def __init__(self, exchange: _Exchange, rank: int):
        super().__init__(rank=rank, world_size=exchange.world_size)
        self.exchange = exchange

    def gather(self, tensor: Tensor) -> Tensor:
        return torch.cat(self.exchange.all_gather(self.rank, tensor))

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        stacked = torch.stack(self.exchange.all_gather(self.rank, tensor))
        if op in ("sum", "mean"):
            total = stacked.sum(dim=0)
            return total / self.world_size if op == "mean" else total
        return stacked.amin(dim=0) if op == "min" else stacked.amax(dim=0)


def run_ranks(fn: Callable[[DistContext], Any], world_size: int = 2) -> list[Any]:
    """``fn(dist)`` on every simulated rank at once; the results in rank order (an error is re-raised)."""
    exchange = _Exchange(world_size)
    results: list[Any] = [None] * world_size
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadRank(exchange, rank))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            exchange.barrier.abort()   # the other ranks stop waiting in their collective

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results
