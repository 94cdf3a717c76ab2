"""best_val.pt / best_test.pt: the selected models are kept, load back, and survive a resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sslzoo
from sslzoo import checkpoint, cli
from sslzoo.callbacks import Callback
from sslzoo.errors import SSLZooError
from sslzoo.trainer import Trainer, train
from tests.conftest import tiny_config


class EmaRecorder(Callback):
    """A copy of the EMA model's weights after every epoch's evaluation (epoch number -> state)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer, entry) -> None:
        self.states[entry["epoch"]] = {k: v.detach().clone() for k, v in trainer.ema.module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A tiny 3-epoch run with a validation split and save_best_test, and each epoch's EMA weights."""
    tmp = tmp_path_factory.mktemp("best")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    recorder = EmaRecorder()
    try:
        cfg = tiny_config(tmp, algo="fixmatch", epochs=3, val_per_class=2, save_best_test=True)
        metrics = train(cfg, callbacks=[recorder])
    finally:
        torch.set_num_threads(threads)
    return Path(cfg["out"]), metrics, recorder.states


def test_the_selected_epochs_models_are_saved(selected):
    out, metrics, states = selected
    val, best = checkpoint.load(out / "best_val.pt"), checkpoint.load(out / "best_test.pt")
    assert val["epoch"] == metrics["val_selected_epoch"] and best["epoch"] == metrics["best_epoch"]
    assert val["acc"] == metrics["history"][val["epoch"] - 1]["val_acc"]
    assert best["acc"] == metrics["best_test_acc"] and val["test_acc"] == metrics["val_selected_acc"]
    assert val["config_hash"] == best["config_hash"] == metrics["config_hash"]
    assert _same(val["ema"]["module"], states[val["epoch"]]) and _same(best["ema"]["module"], states[best["epoch"]])


def test_eval_which_reproduces_the_selected_accuracies(selected, capsys):
    out, metrics, _ = selected
    for which, key in (("val", "val_selected_acc"), ("best", "best_test_acc"), ("final", "final_acc")):
        assert cli.main(["eval", str(out), "--which", which, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)[0]
        assert result["acc"] == metrics[key], which          # exactly: same weights, same evaluation path
        assert result["which"] == which
    run = sslzoo.load_run(out, "cpu", which="val")
    assert run.which == "val" and run.epoch == metrics["val_selected_epoch"]
    assert sslzoo.load_run(out, "cpu").epoch == metrics["epochs_done"]
    assert cli.main(["eval", str(out), "--which", "val"]) == 0
    assert f"best_val.pt (epoch {metrics['val_selected_epoch']})" in capsys.readouterr().out


def test_missing_or_foreign_selected_models_say_why(selected, tmp_path, capsys):
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg)
    out = Path(cfg["out"])
    assert not (out / "best_val.pt").exists() and not (out / "best_test.pt").exists()
    with pytest.raises(SSLZooError, match=r"no validation split \(val_per_class=0\)"):
        sslzoo.load_run(out, "cpu", which="val")
    with pytest.raises(SSLZooError, match="save_best_test=true"):
        sslzoo.load_run(out, "cpu", which="best")
    with pytest.raises(SSLZooError, match="final, val or best"):
        sslzoo.load_run(out, "cpu", which="last")
    assert cli.main(["eval", str(out), "--which", "val"]) == 2
    err = capsys.readouterr().err
    assert "best_val.pt" in err and "val_per_class" in err and "Traceback" not in err
    shutil.copy(selected[0] / "best_val.pt", out / "best_val.pt")       # another run's file in this folder
    with pytest.raises(SSLZooError, match="saved by another run"):
        sslzoo.load_run(out, "cpu", which="val")


def test_a_fresh_run_in_the_folder_drops_the_old_runs_selected_models(tmp_path):
    train(tiny_config(tmp_path, epochs=1, val_per_class=2, save_best_test=True))
    out = tmp_path / "run"
    assert (out / "best_val.pt").is_file() and (out / "best_test.pt").is_file()
    train(tiny_config(tmp_path, epochs=1), overwrite=True)   # no validation split, no save_best_test
    assert not (out / "best_val.pt").exists() and not (out / "best_test.pt").exists()


def _scripted(monkeypatch, val: list[float], test: list[float]) -> None:
    """Replace each epoch's accuracies (by epoch index) so the selected epochs are known in advance."""
    real = Trainer.evaluate

    def evaluate(self, images, model=None):
        result = real(self, images, model)
        result["acc"] = (val if images is self.data.val else test)[len(self.history)]
        return result
    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_a_resumed_run_keeps_a_better_earlier_model(tmp_path, monkeypatch):
    _scripted(monkeypatch, val=[20.0, 60.0, 40.0, 50.0], test=[30.0, 10.0, 70.0, 50.0])
    cfg = tiny_config(tmp_path, epochs=4, val_per_class=2, save_best_test=True)
    out = Path(cfg["out"])
    first = EmaRecorder()
    train(cfg, stop_after_epoch=2, callbacks=[first])
    assert checkpoint.load(out / "best_val.pt")["epoch"] == 2 and checkpoint.load(out / "best_test.pt")["epoch"] == 1
    second = EmaRecorder()
    metrics = train(cfg, resume=True, callbacks=[second])
    assert metrics["val_selected_epoch"] == 2 and metrics["best_epoch"] == 3 and set(second.states) == {3, 4}
    val, best = checkpoint.load(out / "best_val.pt"), checkpoint.load(out / "best_test.pt")
    assert val["epoch"] == 2 and val["acc"] == 60.0 and _same(val["ema"]["module"], first.states[2])
    assert best["epoch"] == 3 and best["acc"] == 70.0 and _same(best["ema"]["module"], second.states[3])


def test_ties_keep_the_first_epoch_as_metrics_json_does(tmp_path, monkeypatch):
    _scripted(monkeypatch, val=[50.0, 50.0], test=[40.0, 40.0])
    cfg = tiny_config(tmp_path, epochs=2, val_per_class=2, save_best_test=True)
    metrics = train(cfg)
    out = Path(cfg["out"])
    assert metrics["val_selected_epoch"] == metrics["best_epoch"] == 1
    assert checkpoint.load(out / "best_val.pt")["epoch"] == 1 and checkpoint.load(out / "best_test.pt")["epoch"] == 1


def test_under_ddp_rank_0_alone_writes_them(tmp_path):
    import yaml

    from tests.algo_testkit import train_two_processes
    from tests.conftest import TINY
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**TINY, "algo": "fixmatch", "epochs": 2, "device": "cpu", "val_per_class": 2,
                                      "save_best_test": True}))
    out = tmp_path / "run"
    train_two_processes(config, out)
    assert sorted(p.name for p in out.iterdir()) == ["best_test.pt", "best_val.pt", "checkpoint.pt", "config.yaml",
                                                    "metrics.json", "split.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert checkpoint.load(out / "best_val.pt")["epoch"] == metrics["val_selected_epoch"]
    assert checkpoint.load(out / "best_test.pt")["epoch"] == metrics["best_epoch"]
