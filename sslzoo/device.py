"""Where a run computes: the device, mixed precision, and its share of the CPU.

One home for these rules: the trainer, the evaluation path, the bench launcher and the
throughput benchmark all ask here, so a run, its re-evaluation and its benchmark use the
same device, the same autocast and the same number of loader workers.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, ContextManager

import torch

from .errors import SSLZooError

AMP_WORDS = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
             "off": "off", "none": "off", "false": "off", "fp32": "off", "no": "off"}


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(processes: int = 1) -> int:
    """Loader workers for one of ``processes`` runs (DDP ranks or bench jobs) sharing this machine:
    one per spare core of its share, at most 4, none when its share is a single core."""
    return max(0, min(4, cpu_count() // max(1, processes) - 1))


def device_type(name: str) -> str:
    """"cuda" or "cpu" (or another torch device type) for a ``--device`` value, resolving "auto"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device for ``--device``; under DDP plain "cuda" means the local rank's GPU."""
    kind = device_type(name)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SSLZooError(f"--device {name} was requested but CUDA is not available here; use --device cpu.")
        if name in ("auto", "cuda") and local_rank is not None:
            return torch.device("cuda", local_rank)
        return torch.device("cuda") if name == "auto" else torch.device(name)
    return torch.device(name if name != "auto" else "cpu")


def amp_dtype(setting: Any, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for config key ``amp``: auto | bf16 | fp16 | off.

    ``auto`` is bf16 on a CUDA GPU that has it (fp16 + GradScaler otherwise) and off on the
    CPU; ``bf16`` and ``fp16`` are honoured on the CPU too (tests run autocast there).
    """
    word = ("auto" if setting else "off") if isinstance(setting, bool) else AMP_WORDS.get(str(setting).strip().lower())
    if word is None:
        raise SSLZooError(f"Config key 'amp' must be auto, bf16, fp16 or off; got {setting!r}.")
    if word == "off" or (word == "auto" and device.type != "cuda"):
        return None
    if word == "fp16":
        return torch.float16
    if word == "bf16" or device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
