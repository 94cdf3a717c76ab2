"""Checkpoints that resume a run exactly and load safely.

Everything is stored as tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` reads it (no pickled code runs).
"""
from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SSLZooError
from .io import atomic_write

FORMAT = "sslzoo-checkpoint-v1"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, **payload}
    atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SSLZooError(f"No checkpoint at '{path}' to resume from (run without --resume to start fresh).")
    try:
        with warnings.catch_warnings():   # torch's notes about foreign pickles: we explain those ourselves
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SSLZooError(f"'{path}' holds Python objects that a safe load (torch.load with "
                          f"weights_only=True) refuses to run, so it is not an sslzoo checkpoint; "
                          f"delete it (or choose another --out) to start the run afresh.") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt files: a clear message, not torch internals
        first = (str(exc).splitlines() or [""])[0][:120]
        raise SSLZooError(f"Checkpoint '{path}' could not be read ({type(exc).__name__}"
                          f"{': ' + first if first else ''}); it is truncated, corrupt or not an sslzoo "
                          f"checkpoint. Delete it to start the run afresh.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SSLZooError(f"'{path}' is not an sslzoo checkpoint (expected format '{FORMAT}').")
    return payload


def training_state(*, step: int, config_hash: str, world_size: int, model: Any, ema: Any, optimizer: Any,
                   scheduler: Any, scaler: Any, algorithm: Any, meter: dict[str, Any],
                   history: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything a run needs to continue exactly from ``step`` (with the random generators' states)."""
    return {
        "step": step, "config_hash": config_hash, "world_size": world_size,
        "model": model.state_dict(), "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "algorithm": algorithm.state_dict(),
        "rng": rng_state(), "meter": meter, "history": history,
    }


def restore_training_state(ckpt: dict[str, Any], *, model: Any, ema: Any, optimizer: Any, scheduler: Any,
                           scaler: Any, algorithm: Any) -> None:
    """Load :func:`training_state`'s parts back into the run's objects and generators."""
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt["scaler"]:   # a checkpoint from a run without fp16 has none
        scaler.load_state_dict(ckpt["scaler"])
    algorithm.load_state_dict(ckpt["algorithm"])
    set_rng_state(ckpt["rng"])
