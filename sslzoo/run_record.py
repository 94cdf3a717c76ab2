"""What a run folder records: ``config.yaml``, ``split.json`` and ``metrics.json``.

Why a module of its own: the trainer writes these files, and ``sslzoo.load_run``, the bench
and the tables read them; the summary rules (which epoch is "best", which is val-selected)
live in one place.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .io import write_json, write_text
from .version import __version__


def package_versions() -> dict[str, str]:
    import torch
    import torchvision
    return {"sslzoo": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """final / best-over-epochs / validation-selected test accuracy from a run's per-epoch history."""
    accs = [e["test_acc"] for e in history]
    best = int(np.argmax(accs)) if accs else None
    vals = [e.get("val_acc") for e in history]
    val_best = int(np.nanargmax([np.nan if v is None else v for v in vals])) \
        if any(v is not None for v in vals) else None
    seconds = sum(e["time_s"] for e in history)
    images = sum(e["images"] for e in history)
    return {
        "epochs_done": len(history),
        "final_acc": accs[-1] if accs else None,
        "best_acc": accs[best] if best is not None else None,
        "best_test_acc": accs[best] if best is not None else None,
        "best_epoch": history[best]["epoch"] if best is not None else None,
        "val_selected_acc": accs[val_best] if val_best is not None else None,
        "val_selected_epoch": history[val_best]["epoch"] if val_best is not None else None,
        "final_mean_class_acc": history[-1]["test_mean_class_acc"] if history else None,
        "final_per_class_acc": history[-1]["test_per_class_acc"] if history else None,
        "wall_time_s": seconds, "img_per_s": images / seconds if seconds else None,
    }


def write_config(out: Path, cfg: dict[str, Any]) -> None:
    write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))


def write_split(out: Path, cfg: dict[str, Any], split_json: dict[str, Any], test_name: str) -> None:
    write_json(out / "split.json", {
        "seed": cfg["seed"], "labels": cfg["labels"], "protocol": cfg["split"], **split_json,
        "unlabeled_extra": cfg["unlabeled_extra"], "test": test_name})


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    write_json(out / "metrics.json", metrics)
