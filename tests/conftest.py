"""Shared fixtures: an isolated cache and a tiny, fast training configuration."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch is imported (see sslzoo/cli.py)

from pathlib import Path
from typing import Any

import pytest
import torch.nn.functional as F
from torch import nn

from sslzoo.config import resolve


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny runs are dominated by thread start-up and contention: one thread is ~20x cheaper."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a private data cache, shared within the session for speed."""
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _no_real_pretraining(monkeypatch):
    """The built-in recipes train for minutes: a test that reaches one fails instead of being slow."""
    import dataclasses
    from sslzoo.registry import PRETRAINED

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a test started real simclr_faces pretraining (minutes); set "
                             "backbone.pretrained=None or register a fake recipe (tests/test_pretrain_store.py)")

    monkeypatch.setitem(PRETRAINED._items, "simclr_faces",
                        dataclasses.replace(PRETRAINED.get("simclr_faces"), method=refuse))


TINY: dict[str, Any] = {
    "dataset": "synthfer", "data": {"n_train": 420, "n_test": 140}, "labels": 35,
    "epochs": 1, "iters_per_epoch": 3, "batch_size": 8, "mu": 1, "num_workers": 0,
    "eval_batch_size": 256, "tensorboard": False, "progress": False,
    "backbone": {"name": "smallcnn", "width": 8},
}


def tiny_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A resolved config for a seconds-long run on a small synthfer; ``overrides`` as config keys."""
    layer = dict(TINY, out=str(tmp_path / "run"))
    layer.update(overrides)
    return resolve([layer])


@pytest.fixture
def tiny():
    return tiny_config



class TinyNet(nn.Module):
    """conv -> BN -> pooled features -> linear, returning (logits, feature) like every backbone.

    No dropout, so repeated passes are deterministic (the algorithm tests rely on it).
    """

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, classes)
        self.feature_dim = 4

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(h), h
