"""A finished run folder loaded back: its config, its data and its EMA model, ready to predict.

Why one loader: the t-SNE figure and the calibration report both need "the model this run
evaluated, on the data it was trained with", rebuilt from ``config.yaml`` and ``checkpoint.pt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import checkpoint
from ..config import load_yaml
from ..data.base import ImageSet
from ..data.pipeline import augment_config, view_batches
from ..data.prepare import RunData, prepare
from ..data.views import Views, normalize_batch
from ..errors import SSLZooError
from ..evaluation import predict
from ..models import build_backbone
from ..trainer import pick_device


@dataclass
class LoadedRun:
    cfg: dict[str, Any]
    data: RunData
    model: nn.Module            # the EMA model, the one the run evaluated
    views: Views
    device: torch.device

    @torch.no_grad()
    def predict(self, images: ImageSet, view: str = "plain", *, with_features: bool = False,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
        """(softmax probabilities [N, C], labels [N], features or None) over ``images``."""
        return predict(self.model, view_batches(images, self.views, view, seed, self.cfg["eval_batch_size"]),
                       lambda x: normalize_batch(x, self.device), with_features=with_features)


def load_run(run_dir: str | Path, device: str = "auto", overrides: dict[str, Any] | None = None) -> LoadedRun:
    """``overrides``: config keys that change what data is loaded (e.g. ``test_dataset``), never the model."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "checkpoint.pt").is_file():
        raise SSLZooError(f"'{run_dir}' is not a finished run folder (needs config.yaml and checkpoint.pt).")
    cfg = {**load_yaml(run_dir / "config.yaml"), **(overrides or {})}
    state = checkpoint.load(run_dir / "checkpoint.pt")
    data = prepare(cfg)
    size = data.bundle.image_size
    # weights come from the checkpoint: do not load (or require) the backbone's initial weights
    backbone = {k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")}
    model = build_backbone(backbone, len(data.classes), size)
    model.load_state_dict(state["ema"]["module"])
    dev = pick_device(device)
    return LoadedRun(cfg, data, model.to(dev).eval(), Views(size, augment_config(cfg["augment"])), dev)
