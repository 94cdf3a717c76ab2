"""The training step reads nothing from the device on the host (issue: a sync-free step).

On a GPU every host read of a device tensor (``.item()``, ``bool(t)``, ``float(t)``,
``.tolist()``, ``.cpu()``, boolean-mask indexing, ``nonzero``) waits for all queued kernels.
On the CPU there is no device to wait for, so this test counts the calls themselves: every
such call made from sslzoo's own code (the trainer, the meter, algorithms, policies, mixup)
while ``Trainer.train_step`` runs, for each algorithm on the list. Calls inside torch itself
are not counted here (torch keeps its CPU-side optimizer step counters on the host by
design); ``benchmarks/gpu_check.sh`` runs the same steps under
``torch.cuda.set_sync_debug_mode("error")`` on a GPU, which catches those too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from sslzoo.meter import EpochMeter
from sslzoo.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
OURS = tuple(str(REPO / d) for d in ("sslzoo", "algorithms"))
SINGLE_PASS = ["fixmatch", "flexmatch", "freematch", "softmatch", "dash", "uda", "pseudolabel", "adacm"]
OWN_PASSES = ["supervised", "meanteacher", "mixmatch", "remixmatch", "pimodel", "vat", "adamatch",
              "defixmatch", "simmatch", "comatch", "marginmix"]


class HostReadCounter:
    """Wraps the Tensor methods that read values on the host; records calls made from our code."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero",
               "unique", "masked_select", "bincount")
    FUNCTIONS = ("nonzero", "unique", "masked_select", "argwhere", "bincount")   # bincount reads max() on a GPU

    def __init__(self, monkeypatch, roots: tuple[str, ...] = OURS):
        self.calls: list[str] = []
        self.roots = roots
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), name))
        for name in self.FUNCTIONS:
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name), f"torch.{name}"))
        getitem = torch.Tensor.__getitem__

        def checked_getitem(t, index):
            keys = index if isinstance(index, tuple) else (index,)
            if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                self._record("boolean-mask indexing")
            return getitem(t, index)
        monkeypatch.setattr(torch.Tensor, "__getitem__", checked_getitem)
        self.active = False

    def _record(self, name: str) -> None:
        if not self.active:
            return
        frame = sys._getframe(2)
        if frame.f_code.co_filename.startswith(self.roots):
            self.calls.append(f"{name} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")

    def _wrap(self, fn, name: str):
        def wrapper(*args, **kwargs):
            self._record(name)
            return fn(*args, **kwargs)
        return wrapper


def steps_reads(tmp_path, algo: str, monkeypatch, roots: tuple[str, ...] = OURS, **overrides) -> list[str]:
    cfg = tiny_config(tmp_path, algo=algo, iters_per_epoch=6, **overrides)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
    batches = [trainer.batch(s) for s in range(4)]
    meter = EpochMeter()
    trainer.train_step(batches[0], 0, meter)    # first step: lazy initialisations may read once
    counter = HostReadCounter(monkeypatch, roots)
    counter.active = True
    for step in (1, 2, 3):
        trainer.train_step(batches[step], step, meter)
    counter.active = False
    assert meter.read() is None                   # the reads happen here, once per logging interval
    return counter.calls


@pytest.mark.parametrize("algo", SINGLE_PASS)
def test_single_pass_algorithms_step_without_host_reads(tmp_path, algo, monkeypatch):
    assert steps_reads(tmp_path, algo, monkeypatch) == []


@pytest.mark.parametrize("algo", OWN_PASSES)
def test_algorithms_with_their_own_passes_step_without_host_reads(tmp_path, algo, monkeypatch):
    assert steps_reads(tmp_path, algo, monkeypatch) == []


def test_the_counter_sees_a_host_read(tmp_path, monkeypatch):
    """The check can fail: a statistic read with .item() inside the step is caught."""
    from sslzoo.algorithms.fixmatch import FixMatch
    real = FixMatch.losses

    def reading(self, out, batch, ctx):
        res = real(self, out, batch, ctx)
        res.stats["read"] = res.stats["mask_ratio"].item()
        return res
    monkeypatch.setattr(FixMatch, "losses", reading)
    calls = steps_reads(tmp_path, "fixmatch", monkeypatch, roots=(*OURS, str(REPO / "tests")))
    assert [c.split(" at ")[0] for c in calls] == ["item"] * 3


def test_divergence_is_still_caught_at_the_next_read(tmp_path):
    """A non-finite loss is kept on the device and named at the read: epoch, iteration, term."""
    from sslzoo.errors import DivergedError
    from sslzoo.trainer import train
    cfg = tiny_config(tmp_path, algo="fixmatch", iters_per_epoch=4, log_interval=3, optim={"lr": 1e30})
    with pytest.raises(DivergedError) as info:
        train(cfg)
    assert info.value.term in ("sup", "unsup", "total") and info.value.epoch == 0
