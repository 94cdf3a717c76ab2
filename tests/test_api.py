"""The Python API: sslzoo.fit with your own network and data, components by name, runs loaded back."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sslzoo
from sslzoo.callbacks import Callback
from sslzoo.errors import SSLZooError

REPO = Path(__file__).resolve().parent.parent
QUICK = dict(batch_size=8, num_workers=0, tensorboard=False, progress=False, eval_batch_size=64)


class LogitsOnly(nn.Module):
    """A user's network: returns logits only."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def toy_images(n: int, seed: int, classes: int = 3, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class c = a bright square in corner c: learnable, uint8 NHWC."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, side, side, 3)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] = 220
    return x, y


def test_the_documented_call_works(tmp_path):
    """The issue's call, as written: a registered name, your nn.Module, NHWC arrays, overrides."""
    x_l, y_l = toy_images(24, 0)
    x_u, _ = toy_images(48, 1)
    x_t, y_t = toy_images(30, 2)
    result = sslzoo.fit(
        algorithm="adacm", backbone=LogitsOnly(), labeled=(x_l, y_l), unlabeled=x_u, test=(x_t, y_t),
        epochs=2, iters_per_epoch=3, out=str(tmp_path / "api"), seed=0,
        policy="fixed:0.8", adacm={"lambda_c": 0}, **QUICK)
    assert result.status == "finished" and len(result.history) == 2
    assert 0 <= result.final_acc <= 100 and result.best_test_acc >= result.final_acc
    assert isinstance(result.model, nn.Module) and not result.model.training
    assert result.config["policy"] == "fixed:0.8" and result.config["adacm"]["lambda_c"] == 0
    assert result.metrics["policy"] == "fixed:0.8" and result.classes == ("0", "1", "2")
    probs = result.predict(x_t)
    assert probs.shape == (30, 3) and torch.allclose(probs.sum(1), torch.ones(30))
    assert (100 * (probs.argmax(1).numpy() == y_t).mean()) == pytest.approx(result.final_acc)


def test_same_seed_same_numbers_and_features_come_from_the_last_linear(tmp_path):
    x_l, y_l = toy_images(24, 0)
    x_u, _ = toy_images(48, 1)
    x_t, y_t = toy_images(30, 2)
    runs = []
    for i in range(2):   # your network is initialised when you build it: seed that yourself
        torch.manual_seed(0)
        runs.append(sslzoo.fit("fixmatch", LogitsOnly(), (x_l, y_l), x_u, (x_t, y_t), epochs=1, iters_per_epoch=3,
                               out=str(tmp_path / f"r{i}"), seed=3, **QUICK))
    assert runs[0].history[0]["test_acc"] == runs[1].history[0]["test_acc"]
    assert runs[0].history[0]["losses"] == runs[1].history[0]["losses"]
    logits, feats = runs[0].model(torch.zeros(2, 3, 8, 8))
    assert logits.shape == (2, 3) and feats.shape == (2, 8) and runs[0].model.feature_dim == 8


def test_a_dataset_and_an_algorithm_instance(tmp_path):
    from PIL import Image

    class Faces(torch.utils.data.Dataset):
        def __init__(self, x, y=None):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            img = Image.fromarray(self.x[i])
            return (img, int(self.y[i])) if self.y is not None else img

    x_l, y_l = toy_images(24, 0)
    x_u, _ = toy_images(40, 1)
    x_t, y_t = toy_images(20, 2)
    algo = sslzoo.create_algorithm("fixmatch", 3, policy="fixed:0.7", lambda_u=2.0)
    assert algo.policy.threshold == 0.7 and algo.lambda_u == 2.0
    result = sslzoo.fit(algo, LogitsOnly(), Faces(x_l, y_l), Faces(x_u), Faces(x_t, y_t), classes=["a", "b", "c"],
                        epochs=1, iters_per_epoch=2, out=str(tmp_path / "ds"), **QUICK)
    assert result.status == "finished" and result.classes == ("a", "b", "c")
    assert (tmp_path / "ds" / "user_data" / "unlabeled.npy").is_file()   # a Dataset is read once, to disk
    assert result.metrics["algorithm"] == "fixmatch" and result.metrics["policy"] == "fixed"


def test_components_by_name():
    assert {"adacm", "fixmatch", "supervised"} <= set(sslzoo.list_algorithms())
    assert {"fixed", "adacm", "flexmatch"} <= set(sslzoo.list_policies())
    assert "synthfer" in sslzoo.list_datasets() and "resnet18" in sslzoo.list_backbones()
    algo = sslzoo.create_algorithm("adacm", 7, lambda_c=0)
    assert algo.lambda_c == 0 and algo.policy.name == "adacm"
    assert sslzoo.create_policy("fixed:0.6").threshold == 0.6
    with pytest.raises(SSLZooError, match="Did you mean 'fixmatch'"):
        sslzoo.create_algorithm("fixmath", 7)
    with pytest.raises(SSLZooError, match="rejected its settings"):
        sslzoo.create_algorithm("adacm", 7, not_a_key=1)


def test_bad_user_data_gets_clear_errors(tmp_path):
    x, y = toy_images(10, 0)
    with pytest.raises(SSLZooError, match=r"uint8 array \[N, H, W, 3\]"):
        sslzoo.fit("supervised", LogitsOnly(), (x.astype(np.float32), y), None, (x, y), out=str(tmp_path / "a"))
    with pytest.raises(SSLZooError, match="10 images but 9 labels"):
        sslzoo.fit("supervised", LogitsOnly(), (x, y[:9]), None, (x, y), out=str(tmp_path / "b"))
    with pytest.raises(SSLZooError, match="channels last"):
        sslzoo.fit("supervised", LogitsOnly(), (x.transpose(0, 3, 1, 2), y), None, (x, y), out=str(tmp_path / "c"))
    with pytest.raises(SSLZooError, match="learns from unlabeled images"):
        sslzoo.fit("fixmatch", LogitsOnly(), (x, y), None, (x, y), out=str(tmp_path / "d"), **QUICK)


def test_load_run_gives_back_the_model_it_measured(tmp_path, tiny):
    from sslzoo.trainer import train
    cfg = tiny(tmp_path, algo="fixmatch")
    metrics = train(cfg)
    run = sslzoo.load_run(cfg["out"])
    assert run.classes == tuple(metrics["classes"]) and run.metrics["final_acc"] == metrics["final_acc"]
    probs, labels, _ = run.predict_set(run.data.test)
    assert 100 * float((probs.argmax(1) == labels).float().mean()) == pytest.approx(metrics["final_acc"])
    with pytest.raises(SSLZooError, match="not a finished run folder"):
        sslzoo.load_run(tmp_path / "nowhere")


def test_load_run_of_a_users_network(tmp_path):
    x_l, y_l = toy_images(24, 0)
    x_u, _ = toy_images(40, 1)
    x_t, y_t = toy_images(20, 2)
    result = sslzoo.fit("fixmatch", LogitsOnly(), (x_l, y_l), x_u, (x_t, y_t), epochs=1, iters_per_epoch=2,
                        out=str(tmp_path / "u"), **QUICK)
    with pytest.raises(SSLZooError, match="pass it"):
        sslzoo.load_run(result.out)
    run = sslzoo.load_run(result.out, model=LogitsOnly())
    from sslzoo.data.user import image_set
    probs, _, _ = run.predict_set(image_set((x_t, y_t), "test", labeled=True))
    assert torch.allclose(probs, result.predict(x_t), atol=1e-6)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer):
        self.events.append("start")

    def on_epoch_end(self, trainer, entry):
        self.events.append(("epoch", entry["epoch"]))

    def on_fit_end(self, trainer, metrics):
        self.events.append(("end", metrics["status"]))


def test_callbacks_and_the_csv_logger(tmp_path, tiny):
    from sslzoo.trainer import train
    rec = Recorder()
    cfg = tiny(tmp_path, epochs=2, loggers=["csv"])
    train(cfg, callbacks=[rec])
    assert rec.events == ["start", ("epoch", 1), ("epoch", 2), ("end", "finished")]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and "loss/sup" in rows[0] and "test_acc" in rows[0]


def test_wandb_is_optional_and_asked_for_clearly(tmp_path, tiny, monkeypatch):
    from sslzoo.trainer import train
    monkeypatch.setitem(sys.modules, "wandb", None)     # as if not installed
    with pytest.raises(SSLZooError, match="pip install wandb"):
        train(tiny(tmp_path, loggers=["wandb"]))
    with pytest.raises(SSLZooError, match="must be a list of any of tensorboard, csv, wandb.*did you mean .tensorboard."):
        train(tiny(tmp_path, loggers=["tensorbord"]))


def test_the_example_runs_from_a_folder_outside_the_repository(tmp_path):
    env = {**os.environ, "SSLZOO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final test accuracy" in proc.stdout and (tmp_path / "out" / "metrics.json").is_file()
