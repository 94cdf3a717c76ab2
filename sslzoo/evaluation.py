"""Accuracy, per-class accuracy and confusion matrix, in inference mode with large batches."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn


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
