"""Small helpers shared by the algorithm tests (one home instead of a copy per test file)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sslzoo.policies import build_policy

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero")


def forbid_host_reads(monkeypatch) -> None:
    """Make every host read of a tensor fail (``tests/test_sync_free.py`` counts them instead)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a device tensor was read on the host inside the step")

    for attr in HOST_READS:
        monkeypatch.setattr(torch.Tensor, attr, refuse)


class RecordingPolicy:
    """A policy that trusts everything and records the distributions it was shown."""

    def __init__(self):
        self.inner = build_policy("all")
        self.seen: list[torch.Tensor] = []

    def __call__(self, inp, c):
        self.seen.append(inp.probs.clone())
        return self.inner(inp, c)

    def on_epoch_start(self, c):
        pass

    def setup(self, classes, pool):
        pass

    def to(self, device):
        return self

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def run_metrics(cfg) -> dict:
    """A finished run's ``metrics.json``."""
    return json.loads((Path(cfg["out"]) / "metrics.json").read_text())


def comparable(history: list[dict]) -> list[dict]:
    """Everything an epoch entry records except timings."""
    return [{k: v for k, v in e.items() if k not in ("time_s", "img_per_s")} for e in history]


def bound(algo, feature_dim: int, num_unlabeled: int = 10, num_labeled: int = 6):
    """``algo`` as the trainer hands it over: its extra modules sized (``bind_backbone``), set up on the CPU."""
    algo.bind_backbone(feature_dim)
    algo.setup(num_unlabeled, torch.device("cpu"), num_labeled=num_labeled)
    return algo


def train_two_processes(config: Path, out: Path, dump: Path | None = None, plugin: Path | None = None):
    """``sslzoo train --config CONFIG`` as a real two-process gloo run (torchrun, one thread each);
    with ``dump``, every rank writes its final algorithm state there (``SSLZOO_DUMP_STATE``)."""
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if dump is not None:
        env["SSLZOO_DUMP_STATE"] = str(dump)
    plugin_args = ["--plugin", str(plugin)] if plugin is not None else []
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "sslzoo", "train", *plugin_args, "--config", str(config), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def straight_and_resumed(tmp_path: Path, **settings):
    """The same tiny run twice: straight through (``tmp_path/full``), and stopped after its first
    epoch then resumed (``tmp_path/split``). Returns both results and both final algorithm states."""
    from sslzoo import checkpoint
    from sslzoo.trainer import train
    from tests.conftest import tiny_config
    full_cfg, split_cfg = tiny_config(tmp_path / "full", **settings), tiny_config(tmp_path / "split", **settings)
    full = train(full_cfg)
    assert train(split_cfg, stop_after_epoch=1)["status"] == "interrupted"
    resumed = train(split_cfg, resume=True)
    states = [checkpoint.load(Path(c["out"]) / "checkpoint.pt")["algorithm"] for c in (full_cfg, split_cfg)]
    return full, resumed, states[0], states[1]


def runs_with_seeds(tmp_path: Path, seeds: tuple[int, ...], **settings) -> list[dict]:
    """One finished tiny run per seed (each in its own folder); their metrics.json, in order."""
    from sslzoo.trainer import train
    from tests.conftest import tiny_config
    runs = []
    for i, seed in enumerate(seeds):
        cfg = tiny_config(tmp_path / f"run{i}", seed=seed, **settings)
        assert train(cfg)["status"] == "finished"
        runs.append(run_metrics(cfg))
    return runs
