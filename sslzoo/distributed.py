"""Process-group helpers: identity when running in one process.

Why a small object: policies need global statistics (Ada-CM's margin over the
whole labeled set, FlexMatch counters) without knowing whether torch.distributed
is initialised; they call ``ctx.dist.gather`` / ``all_reduce`` either way. The
trainer also uses it to make every rank take the same decision (stop on a
signal, stop on a non-finite loss, refuse an output folder), because a rank that
leaves alone makes the others wait in their next collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"   # where collective scratch tensors live ("cuda:<local_rank>" under NCCL)

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
        """Sum, mean, min or max over ranks; returns a new tensor, the input is left unchanged."""
        if op not in ("sum", "mean", "min", "max"):
            raise ValueError(f"all_reduce op must be sum, mean, min or max; got {op!r}")
        if not self.enabled:
            return tensor
        out = tensor.clone()
        reduce_op = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}.get(op, dist.ReduceOp.SUM)
        dist.all_reduce(out, op=reduce_op)
        return out / self.world_size if op == "mean" else out

    # -- losses over the global batch ----------------------------------------------------------
    # DDP averages gradients over ranks. A statistic of the batch (a subset's size, a histogram,
    # the negatives of a contrastive loss) computed per rank makes the N-process step differ from
    # the 1-process step with the N x batch. The pattern that makes it exact with forward
    # collectives only (no collective in the backward pass, nothing read on the host): gather or
    # sum the global value with the gradient flowing through this rank's own part, compute the
    # loss from it (the same value on every rank), then ``replicated``. The gradient a rank gets
    # is then N x the 1-process loss's gradient with respect to its own rows, and DDP's average
    # over ranks is exactly the 1-process gradient (docs/reliability.md).

    def gather_local_grad(self, tensor: Tensor) -> Tensor:
        """Every rank's rows (rank order, equal shapes); the gradient flows through this rank's rows only."""
        if not self.enabled:
            return tensor
        rows = tensor.shape[0]
        full = self.gather(tensor.detach())
        return torch.cat([full[: self.rank * rows], tensor, full[(self.rank + 1) * rows:]])

    def sum_local_grad(self, tensor: Tensor) -> Tensor:
        """The sum over ranks; the gradient flows into this rank's own summand only."""
        if not self.enabled:
            return tensor
        return self.all_reduce(tensor.detach()) + (tensor - tensor.detach())

    def replicated(self, loss: Tensor) -> Tensor:
        """For a loss every rank computes in full from global values: the same value, N times the gradient."""
        if not self.enabled:
            return loss
        return loss + (self.world_size - 1) * (loss - loss.detach())

    def global_ratio(self, numerator: Tensor, denominator: Tensor, min_denominator: float) -> Tensor:
        """sum_ranks(numerator) / max(sum_ranks(denominator), min): a normalised loss over the global batch.

        Per rank, numerator / denominator would make DDP average N ratios instead of taking the
        global one. One process: exactly ``numerator / denominator.clamp_min(min_denominator)``.
        """
        if not self.enabled:
            return numerator / denominator.clamp_min(min_denominator)
        num, den = self.sum_local_grad(torch.stack([numerator, denominator.to(numerator.dtype)])).unbind()
        return self.replicated(num / den.clamp_min(min_denominator))

    @classmethod
    def from_process_group(cls) -> "DistContext":
        """The running torch.distributed group (one process when none): for losses called without a context."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return bool(t.item() > 0)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s (picklable) value on every rank, e.g. an error message."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_(self, tensors: Iterable[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values (batch-norm buffers)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.broadcast(t.data, src=src)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_owns_group = False


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (if any).

    NCCL on CUDA (each process pinned to the GPU of its local rank first, so NCCL
    does not put every rank's communicator on GPU 0), gloo on CPU.
    """
    global _owns_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = "cpu"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            from .errors import SSLZooError
            raise SSLZooError(f"Process with local rank {local_rank} has no GPU of its own (this machine "
                              f"shows {torch.cuda.device_count()}); start at most one process per GPU "
                              f"(--nproc / --nproc_per_node) or train with --device cpu.")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        # Generous: ranks > 0 wait in a collective while rank 0 decodes a data set into the cache
        # the first time (can take long for AffectNet); a crashed rank is handled by torchrun anyway.
        minutes = float(os.environ.get("SSLZOO_DIST_TIMEOUT_MIN", "60"))
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(minutes=minutes))
        _owns_group = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device)


def shutdown() -> None:
    """Destroy the process group if ``init_from_env`` created it (no warning at exit)."""
    global _owns_group
    if _owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owns_group = False
