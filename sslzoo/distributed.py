"""Process-group helpers: identity when running in one process.

Why a small object: policies need global statistics (Ada-CM's margin over the
whole labeled set, FlexMatch counters) without knowing whether torch.distributed
is initialised; they call ``ctx.dist.gather`` / ``all_reduce`` either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, tensor: Tensor) -> Tensor:
        """Concatenate equally-shaped tensors from all ranks along dim 0 (rank order)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_uneven(self, tensor: Tensor) -> Tensor:
        """Like ``gather`` for tensors whose first dimension differs between ranks."""
        if not self.enabled:
            return tensor
        n = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [int(s) for s in self.gather(n)]
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = self.gather(padded).split(max(sizes))
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size if op == "mean" else out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
