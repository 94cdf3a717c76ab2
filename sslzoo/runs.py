"""A finished run folder loaded back: its config, metrics, classes and EMA model, ready to predict.

``sslzoo.load_run(path)`` returns a :class:`Run`; ``sslzoo eval``, ``calibration``, ``plot --tsne``
and ``predict`` are built on it. Predictions go through the run's own evaluation path
(:class:`sslzoo.evaluation.Predictor`: same device type, autocast and memory layout as the
trainer), so re-evaluating a run reproduces its ``final_acc`` (``which="val"``: its
``val_selected_acc``, ``which="best"``: its ``best_test_acc``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint
from .callbacks import BEST_FILES
from .config import API_BACKBONE, load_yaml, parse_switch
from .data.base import ImageSet
from .data.pipeline import augment_config
from .data.prepare import RunData, prepare
from .data.views import Views
from .device import amp_dtype, pick_device
from .errors import SSLZooError
from .evaluation import Predictor
from .models import build_backbone
from .predict import Predictions, predict_images

MODEL_FILES = {"final": "checkpoint.pt", **BEST_FILES}   # load_run's ``which`` -> the file of that model


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
    which: str = "final"             # final | val | best: which of the run's saved models this is
    epoch: int | None = None         # the epoch after which that model was saved (None: mid-epoch)
    image_size: int = 0              # the side the run's images were resized to

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

    def predict(self, images: Any) -> Predictions:
        """Predict image files, folders, glob patterns, PIL images or uint8 arrays (one or a list).

        Files are decoded and resized as the run's data sets were (no face-box crop: give aligned
        face crops) and go through :meth:`predict_set`, in chunks. Unreadable files are skipped and
        listed in the result's ``skipped``; an SSLZooError when nothing is readable.
        """
        return predict_images(self, images)


def load_run(path: str | Path, device: str | None = "auto", overrides: dict[str, Any] | None = None, *,
             model: nn.Module | None = None, which: str = "final") -> Run:
    """Load ``path`` (``config.yaml`` + the model ``which`` names: ``final``, checkpoint.pt's EMA
    model, the one metrics.json's ``final_acc`` measured; ``val``, best_val.pt, the epoch with the best
    validation accuracy; ``best``, best_test.pt, the best test epoch). ``device``: ``None`` is the run's
    own setting. ``overrides``: config keys that change which data is loaded (e.g. ``test_dataset``),
    never the model. ``model``: the network of a run trained with your own module
    (``sslzoo.fit(backbone=net)``), whose weights are then loaded."""
    path = Path(path)
    if which not in MODEL_FILES:
        raise SSLZooError(f"which (--which) must be final, val or best; got {which!r}.")
    if not (path / "config.yaml").is_file():
        raise SSLZooError(f"'{path}' is not a finished run folder (no config.yaml).")
    cfg = load_yaml(path / "config.yaml")
    metrics = _read_json(path / "metrics.json") or {}
    file = model_file(path, cfg, metrics, which)
    state = checkpoint.load(file)
    if state.get("config_hash") and metrics.get("config_hash") and state["config_hash"] != metrics["config_hash"]:
        raise SSLZooError(f"'{file}' was saved by another run in this folder (config hash {state['config_hash']}; "
                          f"metrics.json's is {metrics['config_hash']}): delete it, or evaluate another --which.")
    classes, size = tuple(metrics.get("classes") or ()), cfg.get("image_size") or metrics.get("image_size")
    data = None
    if not classes or not size:   # an older run folder: its data set says
        data = prepare({**cfg, **(overrides or {})})
        classes, size = tuple(data.classes), data.bundle.image_size
    if model is not None:
        from .models.wrap import as_backbone
        model = as_backbone(model)
    elif str(cfg["backbone"].get("name", "")).startswith(API_BACKBONE):
        raise SSLZooError(f"'{path}' was trained with your own network; pass it: "
                          f"sslzoo.load_run(path, model=MyNet()).")
    else:   # the weights come from the checkpoint: never build (or require) the backbone's initial ones
        model = build_backbone({k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")},
                               len(classes), int(size))
    model.load_state_dict(state["ema"]["module"])
    dev = pick_device(device or str(cfg.get("device", "auto")))
    channels_last = parse_switch(cfg.get("channels_last", "auto"), "channels_last")
    channels_last = dev.type == "cuda" if channels_last is None else channels_last
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    predictor = Predictor(Views(int(size), augment_config(cfg["augment"])), dev, int(cfg["eval_batch_size"]),
                          amp_dtype(cfg.get("amp", "auto"), dev), channels_last)
    return Run(path, cfg, metrics or None, model, classes, predictor, dict(overrides or {}), data, which,
               _model_epoch(state, cfg), int(size))


def model_file(path: Path, cfg: dict[str, Any], metrics: dict[str, Any], which: str) -> Path:
    """The file holding the model ``which`` names, or an SSLZooError that says why it is not there."""
    name = MODEL_FILES[which]
    if (path / name).is_file():
        return path / name
    history = metrics.get("history") or []
    if which == "final":
        raise SSLZooError(f"'{path}' is not a finished run folder: it holds no model (no checkpoint.pt; the "
                          f"run did not finish an epoch, or its checkpoint was deleted).")
    if which == "val" and not _had_val_split(cfg, history):
        why = ("the run had no validation split (val_per_class=0); train with --val-per-class N to keep the "
               "model of the best validation epoch")
    elif which == "best" and not cfg.get("save_best_test"):
        why = ("the run did not keep it; train with --set save_best_test=true to keep the model of the best "
               "test epoch (or use --which val: model selection on a validation split)")
    elif not history:
        why = "the run has not finished an epoch yet"
    else:
        why = "it was deleted, or the run was trained by an sslzoo version that did not keep it"
    raise SSLZooError(f"'{path}' holds no {name} (the model --which {which} asks for): {why}.")


def _had_val_split(cfg: dict[str, Any], history: list[dict[str, Any]]) -> bool:
    """Whether the run evaluated a validation split (``sslzoo.fit(val=...)`` brings one with val_per_class=0)."""
    if history:
        return any(e.get("val_acc") is not None for e in history)
    return bool(cfg.get("val_per_class"))


def _model_epoch(state: dict[str, Any], cfg: dict[str, Any]) -> int | None:
    """The epoch a saved model ends (a best_*.pt says; checkpoint.pt: its step, None mid-epoch)."""
    if state.get("epoch") is not None:
        return int(state["epoch"])
    step, iters = state.get("step"), int(cfg.get("iters_per_epoch") or 0)
    return int(step) // iters if step is not None and iters and int(step) % iters == 0 else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
