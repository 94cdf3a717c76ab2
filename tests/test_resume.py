"""Exact resume: stopping after an epoch (or on SIGTERM mid-epoch) and resuming gives the same run.

"1 epoch + resume + 1 epoch" is the 2-epoch config run with ``stop_after_epoch=1``
(``--stop-after-epoch 1``), which is not part of the config: the config hash, and
so the checkpoint, are the 2-epoch run's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sslzoo import checkpoint, cli
from sslzoo.errors import SSLZooError
from sslzoo.trainer import train
from tests.algo_testkit import comparable
from tests.conftest import TINY, tiny_config

REPO = Path(__file__).resolve().parent.parent
# Ada-CM without the official 0.8 floor: the tiny model's margin then really depends on the
# epoch-1 EMA model, so a resume that lost the policy state or the EMA would show.
ADACM = {"algo": "adacm", "policies": {"adacm": {"floor": None}}}
FIXMATCH = {"algo": "fixmatch", "policy": "fixed:0.3"}


def _state(out: Path) -> dict:
    return checkpoint.load(out / "checkpoint.pt")


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"
        elif isinstance(a[k], dict):
            _assert_same_tensors(a[k], b[k], f"{what}.{k}")
        else:
            assert a[k] == b[k], f"{what}: {k} differs"


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["status"] == mb["status"] == "finished"
    assert [e["test_acc"] for e in ma["history"]] == [e["test_acc"] for e in mb["history"]]
    assert comparable(ma["history"]) == comparable(mb["history"])
    sa, sb = _state(a), _state(b)
    assert sa["step"] == sb["step"]
    _assert_same_tensors(sa["model"], sb["model"], "model")
    _assert_same_tensors(sa["ema"]["module"], sb["ema"]["module"], "ema")
    assert sa["ema"]["updates"] == sb["ema"]["updates"]
    _assert_same_tensors(sa["optimizer"]["state"], sb["optimizer"]["state"], "optimizer")
    _assert_same_tensors(sa["algorithm"]["policy"], sb["algorithm"]["policy"], "policy")
    _assert_same_tensors(sa["rng"], sb["rng"], "rng")


@pytest.mark.parametrize("algo", [ADACM, FIXMATCH], ids=["adacm", "fixmatch"])
def test_stop_after_epoch_then_resume_equals_straight_run(tmp_path, algo):
    straight = tiny_config(tmp_path / "straight", epochs=2, **algo)
    train(straight)
    split = tiny_config(tmp_path / "split", epochs=2, **algo)
    first = train(split, stop_after_epoch=1)
    assert first["status"] == "interrupted" and first["epochs_done"] == 1
    saved = json.loads((Path(split["out"]) / "metrics.json").read_text())
    assert saved["status"] == "interrupted" and _state(Path(split["out"]))["step"] == split["iters_per_epoch"]
    train(split, resume=True)
    _assert_same_run(Path(straight["out"]), Path(split["out"]))
    if algo is ADACM:   # the margin of epoch 2 came from the (restored) epoch-1 EMA model
        margin = _state(Path(split["out"]))["algorithm"]["policy"]["margin"]
        assert not torch.allclose(margin, torch.full_like(margin, 0.8))
    # resuming a finished run trains nothing and changes no byte
    out = Path(straight["out"])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = train(straight, resume=True)
    assert again["status"] == "finished" and again["epochs_done"] == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_same_seed_same_command_gives_identical_metrics(tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = tiny_config(tmp_path / name, seed=seed, **FIXMATCH)
        train(cfg)
        runs.append(json.loads((Path(cfg["out"]) / "metrics.json").read_text()))
    assert [e["test_acc"] for e in runs[0]["history"]] == [e["test_acc"] for e in runs[1]["history"]]
    assert runs[0]["final_acc"] == runs[1]["final_acc"] and runs[0]["best_acc"] == runs[1]["best_acc"]
    assert comparable(runs[0]["history"]) == comparable(runs[1]["history"])
    # ... and the comparison can fail: another seed is another run
    assert comparable(runs[0]["history"]) != comparable(runs[2]["history"])


def test_a_stopped_run_is_protected_from_wrong_commands(tmp_path):
    cfg = tiny_config(tmp_path, epochs=2, **FIXMATCH)
    train(cfg, stop_after_epoch=1)
    out = Path(cfg["out"])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(SSLZooError, match="different configuration"):
        train(tiny_config(tmp_path, epochs=3, **FIXMATCH), resume=True)
    with pytest.raises(SSLZooError, match="already holds a run"):
        train(cfg)
    with pytest.raises(SSLZooError, match="Unknown threshold policy"):   # fails before replacing anything
        train(tiny_config(tmp_path, epochs=2, algo="fixmatch", policy="nope"), overwrite=True)
    with pytest.raises(SSLZooError, match="at least 1"):
        train(cfg, resume=True, stop_after_epoch=0)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(before["checkpoint.pt"][:1000])
    with pytest.raises(SSLZooError, match="truncated"):
        train(cfg, resume=True)


# -- a real signal, through the CLI ------------------------------------------------------------

def _cli(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sslzoo", "train", "--config", str(config), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_sigterm_mid_epoch_then_resume_equals_straight_run(tmp_path):
    iters = 8
    settings = {**TINY, **FIXMATCH, "epochs": 2, "iters_per_epoch": iters}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings))
    train(tiny_config(tmp_path / "straight", **settings))   # one thread (fixture), as the subprocesses

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli(config, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 90
    while not (out / "metrics.json").exists():   # written (status "running") once the loop starts
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    step = _state(out)["step"]
    assert step % iters != 0, f"the signal should have landed inside an epoch (checkpoint at step {step})"

    assert cli.main(_cli(config, out, "--resume")[3:]) == 0   # in-process: saves a second start-up
    _assert_same_run(tmp_path / "straight" / "run", out)
