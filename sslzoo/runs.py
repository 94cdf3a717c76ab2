"""A finished run folder loaded back: its config, metrics, classes and EMA model, ready to predict.

``sslzoo.load_run(path)`` returns a :class:`Run`; ``sslzoo eval``, ``calibration``, ``plot --tsne``
and ``predict`` are built on it. Predictions go through the run's own evaluation path
(:class:`sslzoo.evaluation.Predictor`: same device type, autocast and memory layout as the
trainer), so re-evaluating a run reproduces its ``final_acc``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint
from .config import load_yaml, parse_switch
from .data.base import ImageSet
from .data.pipeline import augment_config
from .data.prepare import RunData, prepare
from .data.views import Views
from .device import amp_dtype, pick_device
from .errors import SSLZooError
from .evaluation import Predictor
from .models import build_backbone


@dataclass
class Run:
    """A finished (or stopped) run: what it was, what it measured, and its evaluation model."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    model: nn.Module                 # the EMA model, in eval mode: the one the run evaluated
    classes: tuple[str, ...]
    predictor: Predictor
    overrides: dict[str, Any] = field(default_factory=dict)
    _data: RunData | None = None

    @property
    def cfg(self) -> dict[str, Any]:
        return self.config

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def data(self) -> RunData:
        """The run's image sets (labeled, unlabeled, val, test), loaded on first use."""
        if self._data is None:
            self._data = prepare({**self.config, **self.overrides})
        return self._data

    @torch.no_grad()
    def predict_set(self, images: ImageSet, view: str = "plain", *, with_features: bool = False,
                    seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
        """(softmax probabilities [N, C], labels [N], features or None) over an image set."""
        return self.predictor(self.model, images, view, seed, with_features=with_features)


def load_run(path: str | Path, device: str = "auto", overrides: dict[str, Any] | None = None, *,
             model: nn.Module | None = None) -> Run:
    """Load ``path`` (``config.yaml`` + ``checkpoint.pt``). ``overrides``: config keys that change
    which data is loaded (e.g. ``test_dataset``), never the model. ``model``: the network of a run
    trained with your own module (``sslzoo.fit(backbone=net)``), whose weights are then loaded."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise SSLZooError(f"'{path}' is not a finished run folder (no config.yaml).")
    if not (path / "checkpoint.pt").is_file():
        raise SSLZooError(f"'{path}' is not a finished run folder: it holds no model (no checkpoint.pt; the "
                          f"run did not finish an epoch, or its checkpoint was deleted).")
    cfg = load_yaml(path / "config.yaml")
    metrics = _read_json(path / "metrics.json") or {}
    state = checkpoint.load(path / "checkpoint.pt")
    classes, size = tuple(metrics.get("classes") or ()), cfg.get("image_size") or metrics.get("image_size")
    data = None
    if not classes or not size:   # an older run folder: its data set says
        data = prepare({**cfg, **(overrides or {})})
        classes, size = tuple(data.classes), data.bundle.image_size
    if model is not None:
        from .models.wrap import as_backbone
        model = as_backbone(model)
    elif str(cfg["backbone"].get("name", "")).startswith("user"):
        raise SSLZooError(f"'{path}' was trained with your own network; pass it: "
                          f"sslzoo.load_run(path, model=MyNet()).")
    else:   # the weights come from the checkpoint: never build (or require) the backbone's initial ones
        model = build_backbone({k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")},
                               len(classes), int(size))
    model.load_state_dict(state["ema"]["module"])
    dev = pick_device(device)
    channels_last = parse_switch(cfg.get("channels_last", "auto"), "channels_last")
    channels_last = dev.type == "cuda" if channels_last is None else channels_last
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    predictor = Predictor(Views(int(size), augment_config(cfg["augment"])), dev, int(cfg["eval_batch_size"]),
                          amp_dtype(cfg.get("amp", "auto"), dev), channels_last)
    return Run(path, cfg, metrics or None, model, classes, predictor, dict(overrides or {}), data)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
