"""Accuracy, per-class accuracy and confusion matrix, in inference mode with large batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from .data.base import ImageSet
from .data.pipeline import view_batches
from .data.views import Views, normalize_batch
from .device import autocast


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], prepare, *,
            with_features: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Softmax probabilities (and features) of ``model`` in eval mode; restores its mode."""
    was_training = model.training
    model.eval()
    probs, labels, feats = [], [], []
    try:
        for x, y in batches:
            logits, f = model(prepare(x))
            probs.append(torch.softmax(logits.float(), dim=-1))
            labels.append(y.to(probs[-1].device))
            if with_features:
                feats.append(f.float())
    finally:
        model.train(was_training)
    if not probs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), None
    return torch.cat(probs), torch.cat(labels), (torch.cat(feats) if with_features else None)


def classification_metrics(probs: Tensor, labels: Tensor, num_classes: int) -> dict:
    """Overall accuracy (the paper's metric), mean per-class accuracy and confusion (rows = truth), in %."""
    pred = probs.argmax(dim=1).cpu().numpy()
    truth = labels.cpu().numpy()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (truth, pred), 1)
    support = conf.sum(axis=1)
    per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1) * 100.0, np.nan)
    return {
        "acc": float(np.diag(conf).sum() / max(1, conf.sum()) * 100.0),
        "mean_class_acc": float(np.nanmean(per_class)) if (support > 0).any() else float("nan"),
        "per_class_acc": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion": conf.tolist(),
    }


@dataclass
class Predictor:
    """The one evaluation path: how a model is run over an image set, wherever that happens.

    The trainer's per-epoch test and Ada-CM's margin pass, ``sslzoo eval``, ``calibration``,
    ``plot --tsne`` and ``predict`` all go through here, with the run's device, autocast and
    memory layout, so re-evaluating a checkpoint reproduces what the run measured.
    """

    views: Views
    device: torch.device
    batch_size: int
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def prepare(self, x: Tensor) -> Tensor:
        return normalize_batch(x, self.device, self.channels_last)

    def __call__(self, model: nn.Module, images: ImageSet, view: str = "plain", seed: int = 0, *,
                 with_features: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(softmax probabilities [N, C], labels [N], features or None) of ``model`` on ``images``."""
        with autocast(self.device, self.amp_dtype):
            return predict(model, view_batches(images, self.views, view, seed, self.batch_size, self.device),
                           self.prepare, with_features=with_features)
