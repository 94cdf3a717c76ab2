"""Plugins from outside the repository: a --plugin file, an entry point, and a broken plugin."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sslzoo.registry as registry
from sslzoo.algorithm import PolicyInput, StepContext, ThresholdPolicy
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.registry import POLICIES, load_plugin

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "topk_policy.py"
CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=3)


def test_example_is_short():
    assert len(EXAMPLE.read_text().splitlines()) < 30


@pytest.fixture
def topk_loaded():
    """Load the example in this process, and forget it afterwards."""
    load_plugin(EXAMPLE)
    yield
    POLICIES._items.pop("topk", None)
    for name in [n for n, m in sys.modules.items() if n.startswith("sslzoo_plugin_")
                 and getattr(m, "__file__", None) == str(EXAMPLE)]:
        del sys.modules[name]


def test_topk_mask_by_hand(topk_loaded):
    policy = build_policy("topk:0.5")
    assert policy.fraction == 0.5
    probs = torch.tensor([[0.9, 0.05, 0.05],    # class 0, 1st of 3 -> trusted (ceil(1.5) = 2 kept)
                          [0.6, 0.3, 0.1],      # class 0, 3rd of 3 -> not
                          [0.7, 0.2, 0.1],      # class 0, 2nd of 3 -> trusted
                          [0.2, 0.5, 0.3],      # class 1, alone: ceil(0.5) = 1 -> trusted
                          [0.1, 0.1, 0.8],      # class 2, 1st of 2 -> trusted (ceil(1.0) = 1)
                          [0.3, 0.1, 0.6]])     # class 2, 2nd of 2 -> not
    assert policy.weights(PolicyInput(probs), CTX).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert build_policy("topk:1.0").weights(PolicyInput(probs), CTX).tolist() == [1.0] * 6
    assert build_policy("topk:0.0").weights(PolicyInput(probs), CTX).tolist() == [0.0] * 6


def test_plugin_file_outside_the_repo_trains_from_the_cli(tmp_path):
    plugin = tmp_path / "my_policy.py"
    shutil.copy(EXAMPLE, plugin)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sslzoo", "train", "--plugin", str(plugin), "--algo", "fixmatch",
           "--set", "policy=topk:0.5", "--set", "data.n_train=420", "--set", "data.n_test=140",
           "--labels", "35", "--epochs", "1", "--iters-per-epoch", "3", "--batch-size", "8",
           "--set", "num_workers=0", "--set", "tensorboard=false", "--backbone", "smallcnn",
           "--set", "backbone.width=8", "--no-progress", "--out", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["policy"] == "topk:0.5"
    assert 0.0 <= metrics["history"][0]["mask_ratio"] <= 1.0


def test_plugin_file_that_raises_names_the_file(tmp_path):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(SSLZooError, match="broken_plugin.py.*RuntimeError: boom"):
        load_plugin(broken)
    with pytest.raises(SSLZooError, match="does not exist"):
        load_plugin(tmp_path / "missing.py")


class _FakeEntryPoint:
    group = registry.ENTRY_POINT_GROUP

    def __init__(self, name: str, value: str, load):
        self.name, self.value, self._load = name, value, load

    def load(self):
        return self._load()


def _register_entry_point_policy():
    @registry.register_policy("ep_test_policy")
    class EntryPointPolicy(ThresholdPolicy):
        """Registered by a fake installed package."""

        name = "ep_test_policy"

        def weights(self, inp, ctx):
            return inp.probs.new_ones(inp.probs.shape[0])
    return EntryPointPolicy


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Pretend one installed package exposes an `sslzoo.plugins` entry point; force a fresh discovery."""
    entries: list[_FakeEntryPoint] = []
    seen_groups: list[str] = []

    def entry_points(group=None, **kw):
        seen_groups.append(group)
        return list(entries) if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    yield entries, seen_groups
    POLICIES._items.pop("ep_test_policy", None)


def test_entry_point_plugin_is_loaded(fake_entry_points):
    entries, seen_groups = fake_entry_points
    entries.append(_FakeEntryPoint("fake", "fake_pkg.policies", _register_entry_point_policy))
    assert "ep_test_policy" not in POLICIES._items
    assert "ep_test_policy" in POLICIES.names()          # first registry use runs discovery
    assert seen_groups == ["sslzoo.plugins"]
    assert build_policy("ep_test_policy").name == "ep_test_policy"


def test_entry_point_that_raises_names_the_plugin(fake_entry_points):
    entries, _ = fake_entry_points

    def broken():
        raise ImportError("no module named fake_pkg")
    entries.append(_FakeEntryPoint("broken", "fake_pkg.policies", broken))
    with pytest.raises(SSLZooError, match="'broken'.*fake_pkg.policies.*sslzoo.plugins"):
        POLICIES.names()
