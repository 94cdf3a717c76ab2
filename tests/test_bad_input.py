"""Bad input, end to end through the CLI: a non-zero exit, one readable message, no traceback
(unless --debug), and no earlier result in the output folder touched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslzoo import cli
from sslzoo.errors import DivergedError, SSLZooError
from sslzoo.registry import ALGORITHMS, register_algorithm

REPO = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--dataset", "synthfer", "--labels", "35", "--epochs", "1", "--iters-per-epoch", "3",
              "--batch-size", "8", "--num-workers", "0", "--no-progress",
              "--set", "data.n_train=420", "--set", "data.n_test=140", "--set", "tensorboard=false",
              "--set", "eval_batch_size=256", "--set", "backbone.width=8"]



def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert err.startswith("sslzoo "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run whose folder later bad commands point at."""
    out = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", "--algo", "fixmatch", *TINY_FLAGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("argv, fragments", [
    (["--algo", "fixmach"], ["Unknown algorithm 'fixmach'", "Did you mean 'fixmatch'"]),
    (["--dataset", "synthfr"], ["Unknown data set 'synthfr'", "Did you mean 'synthfer'"]),
    (["--set", "policy=flexmach"], ["Unknown threshold policy 'flexmach'"]),
    (["--set", "policy=fixed:abc"], ["'abc' is not a number"]),
    (["--labels", "-5"], ["Config key 'labels' must be >= 1; got -5."]),
    (["--labels", "7000"], ["labels were requested", "Ask for fewer labels"]),
    (["--labels", "420", "--set", "split=stratified"],
     ["'adacm' learns from unlabeled images, but none are left", "--labels 420", "--algo supervised"]),
    (["--set", "epochs"], ["--set expects key=value", "'epochs'"]),
    (["--set", "optim.lrr=1"], ["Unknown config key 'optim.lrr'", "Did you mean 'lr'"]),
    (["--set", "epochs=abc"], ["Config key 'epochs' must be a whole number >= 1; got 'abc'."]),
    (["--epochs", "-3"], ["Config key 'epochs' must be >= 1; got -3."]),
    (["--set", "optim.lr=-1"], ["Config key 'optim.lr' must be > 0; got -1."]),
    (["--set", "schedule.name=cosin"],
     ["Config key 'schedule.name' must be one of constant, cosine; got 'cosin' (did you mean 'cosine'?)."]),
    (["--set", "policies.adacm.B=2"], ["Threshold policy 'adacm' rejected its settings", "0 < B < 1"]),
    (["--set", "policy={name: adacm, Bb: 0.9}"], ["Unknown parameter(s) 'Bb'", "did you mean 'B'"]),
    (["--set", "amp=fast"], ["Config key 'amp' must be one of auto, bf16, fp16, off; got 'fast'."]),
    (["--config", "/nonexistent/c.yaml"], ["Config file '/nonexistent/c.yaml' does not exist"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None)
def test_bad_training_input_is_one_message_and_leaves_the_run_alone(capsys, finished_run, argv, fragments):
    before = snapshot(finished_run)
    for extra in (["--overwrite"], ["--resume"]):   # the flags that let a command touch the folder
        argv_all = ["train", *TINY_FLAGS, *argv, "--out", str(finished_run), *extra]
        if "--algo" not in argv:
            argv_all[1:1] = ["--algo", "adacm"]
        code, _, err = run_cli(capsys, *argv_all)
        assert_user_error(code, err, *fragments)
        assert len(err.strip().split("\n\n")) == 1, err   # one paragraph
    assert snapshot(finished_run) == before


def test_a_second_run_into_a_finished_folder_is_refused(capsys, finished_run):
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, "train", "--algo", "fixmatch", *TINY_FLAGS, "--out", str(finished_run))
    assert_user_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert snapshot(finished_run) == before


def test_missing_data_root_names_the_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--dataset", "rafdb", "--data-root", "/nonexistent/rafdb",
                           "--out", str(tmp_path / "run"))
    assert_user_error(code, err, "/nonexistent/rafdb", "--data-root")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")   # works as root too, unlike chmod
    code, _, err = run_cli(capsys, "train", "--algo", "fixmatch", *TINY_FLAGS, "--out", str(blocker / "run"))
    assert_user_error(code, err, "Cannot write to the output folder", str(blocker / "run"))
    assert blocker.read_text() == "not a folder"


def test_bench_with_zero_seeds(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--algos", "fixmatch", "--dataset", "synthfer", "--labels", "35",
                           "--seeds", "0", "--out", str(tmp_path / "bench"))
    assert_user_error(code, err, "seeds", "at least 1")
    assert not (tmp_path / "bench").exists() or not any((tmp_path / "bench").iterdir())


def test_divergence_exits_3_and_records_where(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--algo", "fixmatch", *TINY_FLAGS, "--set", "optim.lr=1e30",
                           "--out", str(out))
    assert_user_error(code, err, "diverged", "non-finite", "optim.lr", exit_code=3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert metrics["error"]["epoch"] == 1 and metrics["error"]["iteration"] >= 2   # step 1 is still finite
    assert metrics["error"]["term"] in ("sup", "unsup", "total")
    assert not (out / "checkpoint.pt").exists()   # no epoch finished: nothing to resume from


class _NaNAtSecondIteration(ALGORITHMS.get("fixmatch")):
    """FixMatch whose unlabeled term turns NaN at iteration 2 (test only)."""

    def losses(self, out, batch, ctx):
        result = super().losses(out, batch, ctx)
        if ctx.iteration == 1:
            result.losses["unsup"] = result.losses["unsup"] * float("nan")
        return result


def test_divergence_names_the_term_that_went_non_finite(capsys, tmp_path, monkeypatch):
    # registered for this test only (other tests may run every registered algorithm)
    monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))
    register_algorithm("nan_at_iteration_2_test")(_NaNAtSecondIteration)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--algo", "nan_at_iteration_2_test", *TINY_FLAGS, "--out", str(out))
    assert_user_error(code, err, "'unsup' loss became non-finite at epoch 1, iteration 2", exit_code=3)
    error = json.loads((out / "metrics.json").read_text())["error"]
    assert (error["epoch"], error["iteration"], error["term"]) == (1, 2, "unsup")
    with pytest.raises(DivergedError):   # --debug: the exception itself (its traceback)
        cli.main(["train", "--algo", "nan_at_iteration_2_test", *TINY_FLAGS, "--out", str(out),
                  "--overwrite", "--debug"])


def test_plugin_that_raises_without_and_with_debug(capsys, tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise ValueError('my plugin is broken')\n")
    argv = ["train", "--plugin", str(plugin), "--out", str(tmp_path / "run")]
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, "broken.py", "ValueError: my plugin is broken")
    # --debug, in a real process: the traceback, down to the plugin's own line
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    debug = subprocess.run([sys.executable, "-m", "sslzoo", *argv, "--debug"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and f'File "{plugin}", line 1' in debug.stderr
    assert not (tmp_path / "run").exists()


def test_debug_is_accepted_before_or_after_the_command(capsys, tmp_path):
    for argv in (["--debug", "train", "--algo", "fixmach"], ["train", "--algo", "fixmach", "--debug"]):
        with pytest.raises(SSLZooError, match="Unknown algorithm"):
            cli.main([*argv, "--out", str(tmp_path / "run")])
