"""The bench harness: grid/suite expansion, sharding, resumability, failures, kill-and-rerun, outputs."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from sslzoo.bench import grid as G
from sslzoo.bench.commands import build_cells
from sslzoo.bench.results import BASE_COLUMNS, TAIL_COLUMNS, class_column
from sslzoo.cli import build_parser, main, _register_extra_commands
from sslzoo.errors import SSLZooError

REPO = Path(__file__).resolve().parents[1]
# tests/conftest.py TINY as bench flags (a run takes seconds)
TINY_FLAGS = ["--set", "data.n_train=420", "--set", "data.n_test=140", "--epochs", "1", "--iters-per-epoch", "3",
              "--batch-size", "8", "--mu", "1", "--set", "num_workers=0", "--set", "tensorboard=false", "--set",
              "eval_batch_size=256", "--backbone", "smallcnn", "--set", "backbone.width=8", "--no-progress"]


def _args(argv: list[str]):
    _register_extra_commands()
    return build_parser().parse_args(argv)


def _cells(argv: list[str]):
    return build_cells(_args(["bench", *argv]))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _starts(run_dir: Path) -> int:
    """How many times the bench launched this run (one '=== ... starting' line per launch)."""
    log = run_dir / "log.txt"
    return sum(" starting " in ln or " resuming " in ln for ln in log.read_text().splitlines()) if log.exists() else 0


# ----------------------------------------------------------------------------- parsing and the grid

def test_seeds_labels_shard_parsing():
    assert G.parse_seeds("5") == [0, 1, 2, 3, 4]
    assert G.parse_seeds(5) == [0, 1, 2, 3, 4]
    assert G.parse_seeds("0,3,7") == [0, 3, 7]
    assert G.parse_seeds([0, 3, 7]) == [0, 3, 7]
    assert G.parse_seeds("3,") == [3]
    for bad in ("0", "-1", "a", "1,1", "0,x"):
        with pytest.raises(SSLZooError):
            G.parse_seeds(bad)
    assert G.parse_list("supervised, fixmatch,,adacm") == ["supervised", "fixmatch", "adacm"]
    assert G.parse_labels("70,140") == [70, 140]
    with pytest.raises(SSLZooError, match="whole number"):
        G.parse_labels("70,many")
    assert G.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(SSLZooError, match="--shard"):
            G.parse_shard(bad)
    assert G.slug("FT = 0.5") == "FT_0.5" and G.slug("Ada-CM (L_u + L_c)") == "Ada-CM_L_u_+_L_c"


def test_grid_expansion_count_list_and_flags(tmp_path):
    suite, _, out, cells = _cells(["--algos", "supervised,fixmatch", "--dataset", "synthfer", "--labels", "35,70",
                                   "--seeds", "0,3,7", "--out", str(tmp_path / "b"), *TINY_FLAGS, "--epochs", "2"])
    assert [m.name for m in suite.methods] == ["supervised", "fixmatch"]
    assert len(cells) == 2 * 2 * 3
    assert {c.seed for c in cells} == {0, 3, 7}
    assert len({c.rel_dir for c in cells}) == len(cells)
    assert cells[0].rel_dir == "runs/synthfer-35/supervised/seed0"
    # execution order: every method and setting at the first seed before the next seed
    assert [c.seed for c in cells[:4]] == [0, 0, 0, 0] and cells[4].seed == 3
    for c in cells:
        assert c.cfg["algo"] == c.method and c.cfg["seed"] == c.seed and c.cfg["epochs"] == 2
        assert c.cfg["labels"] == int(c.rel_dir.split("/")[1].split("-")[1])
        assert Path(c.cfg["out"]) == (out / c.rel_dir).resolve()
    # --seeds 5 is a count; the default is 3 seeds
    _, _, _, five = _cells(["--algos", "supervised", "--dataset", "synthfer", "--labels", "35", "--seeds", "5",
                            "--out", str(tmp_path / "c"), *TINY_FLAGS])
    assert [c.seed for c in five] == [0, 1, 2, 3, 4]
    _, _, _, default = _cells(["--algos", "supervised", "--dataset", "synthfer", "--labels", "35",
                               "--out", str(tmp_path / "d"), *TINY_FLAGS])
    assert [c.seed for c in default] == [0, 1, 2]


SUITE = """\
name: mini
description: a test suite in the configs/paper/table1.yaml format
defaults: {backbone: {name: smallcnn, width: 8}, epochs: 3, iters_per_epoch: 5, seeds: [0, 1]}
settings:
  - {dataset: synthfer, labels: 35}
  - {dataset: synthfer, labels: 70, mu: 3}
methods:
  - {name: Baseline, algo: supervised}
  - {name: "FT = 0.5", algo: adacm, policy: "fixed:0.5", adacm: {lambda_c: 0.0}}
  - {name: Ada-CM, algo: adacm, epochs: 4}
"""


def test_suite_parsing_and_per_row_overrides(tmp_path):
    path = _write(tmp_path / "mini.yaml", SUITE)
    suite, _, _, cells = _cells(["--suite", str(path), "--out", str(tmp_path / "b"), "--set", "data.n_train=420"])
    assert suite.name == "mini" and suite.seeds == [0, 1] and suite.default_baseline() == "Baseline"
    assert len(cells) == 3 * 2 * 2
    by = {(c.method, c.cfg["labels"], c.seed): c.cfg for c in cells}
    ft = by[("FT = 0.5", 35, 0)]
    assert ft["policy"] == "fixed:0.5" and ft["adacm"]["lambda_c"] == 0.0
    assert ft["adacm"]["lambda_u"] == 1.0                       # untouched keys keep their defaults
    assert by[("Ada-CM", 35, 1)]["adacm"]["lambda_c"] == 0.1    # rows do not leak into each other
    assert by[("Ada-CM", 70, 0)]["epochs"] == 4 and by[("Baseline", 70, 0)]["epochs"] == 3   # method key
    assert by[("Baseline", 70, 0)]["mu"] == 3 and by[("Baseline", 35, 0)]["mu"] != 3         # setting key
    assert all(c["backbone"]["name"] == "smallcnn" and c["backbone"]["width"] == 8 for c in by.values())
    assert all(c["data"] == {"n_train": 420} for c in by.values())
    assert next(c for c in cells if c.method == "FT = 0.5").rel_dir.startswith("runs/synthfer-35/FT_0.5/")

    # the command line overrides the suite (defaults and rows); --seeds and filters select
    _, _, _, smoke = _cells(["--suite", str(path), "--out", str(tmp_path / "b"), "--epochs", "1", "--seeds", "1",
                             "--algos", "adacm", "--labels", "70"])
    assert {(c.method, c.cfg["labels"], c.seed, c.cfg["epochs"]) for c in smoke} == \
        {("FT = 0.5", 70, 0, 1), ("Ada-CM", 70, 0, 1)}

    # a typo in a row fails before anything runs, naming the row
    _write(path, SUITE.replace("adacm: {lambda_c: 0.0}", "adacm: {lambda_cc: 0.0}"))
    with pytest.raises(SSLZooError, match=r"FT = 0.5.*adacm\.lambda_cc.*lambda_c"):
        _cells(["--suite", str(path), "--out", str(tmp_path / "b")])
    _write(path, SUITE.replace("settings:", "setings:"))
    with pytest.raises(SSLZooError, match="Did you mean 'settings'"):
        _cells(["--suite", str(path), "--out", str(tmp_path / "b")])


def test_builtin_suites_parse_and_default_resolves(tmp_path, monkeypatch):
    for name in ("default", "scratch", "paper/table1_synthfer", "paper/table2", "paper/table3", "paper/table4"):
        suite = G.load_suite(name)
        assert suite.methods and suite.settings and len(suite.seeds) >= 3
    # the main command fine-tunes the SimCLR-pretrained backbone; `scratch` is the same without it
    default, scratch = G.load_suite("default"), G.load_suite("scratch")
    assert default.defaults["backbone"] == {"name": "smallcnn", "pretrained": "simclr_faces"}
    assert scratch.defaults == {**default.defaults, "backbone": {"name": "smallcnn"}}
    assert [m.overrides for m in scratch.methods] == [m.overrides for m in default.methods]
    t2 = G.load_suite("paper/table2")
    assert [m.name for m in t2.methods] == ["Baseline", "Pseudo-Labeling", "MixMatch", "UDA", "ReMixMatch",
                                            "FixMatch", "Ada-CM", "Fully Supervised"]
    assert [(s.dataset, s.labels) for s in t2.settings] == [
        ("rafdb", 100), ("rafdb", 400), ("rafdb", 2000), ("rafdb", 4000), ("sfew", 100), ("sfew", 400),
        ("affectnet", 2000), ("affectnet", 10000), ("rafdb", "all"), ("sfew", "all"), ("affectnet", "all")]
    assert t2.seeds == [0, 1, 2, 3, 4] and all(s.overrides.get("unlabeled_extra") == "rafdb"
                                                for s in t2.settings if s.dataset == "sfew" and s.labels != "all")
    _, _, _, cells = _cells(["--out", str(tmp_path / "b")])     # bare `sslzoo bench` = the default suite
    assert {c.cfg["algo"] for c in cells} == {"supervised", "fixmatch", "adacm"} and len(cells) == 9
    assert all(c.cfg["backbone"]["pretrained"] == "simclr_faces" for c in cells)
    # data folders come from ${VAR}s; an unset one is named before anything runs
    monkeypatch.delenv("RAFDB_ROOT", raising=False)
    with pytest.raises(SSLZooError, match="RAFDB_ROOT"):
        _cells(["--suite", "paper/table3", "--algos", "supervised", "--out", str(tmp_path / "t3")])
    monkeypatch.setenv("RAFDB_ROOT", str(tmp_path))
    _, _, _, t3 = _cells(["--suite", "paper/table3", "--algos", "supervised", "--out", str(tmp_path / "t3")])
    assert all(c.cfg["data_root"] == str(tmp_path) and c.cfg["backbone"]["name"] == "wrn28_2" for c in t3)


def test_unknown_algorithm_fails_before_any_run(tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["bench", "--algos", "supervised,fixmatc", "--dataset", "synthfer", "--labels", "35",
               "--out", str(out), *TINY_FLAGS])
    assert rc == 2
    assert "Did you mean 'fixmatch'" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_shards_cover_the_grid_exactly_once(tmp_path):
    _, _, _, cells = _cells(["--algos", "supervised,fixmatch,adacm", "--dataset", "synthfer", "--labels", "35,70",
                             "--seeds", "5", "--out", str(tmp_path / "b"), *TINY_FLAGS])
    assert len(cells) == 30
    everything = sorted(c.rel_dir for c in cells)
    for n in range(1, 5):
        parts = [[c.rel_dir for c in G.shard(cells, i, n)] for i in range(n)]
        assert sorted(d for p in parts for d in p) == everything          # covered exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1            # balanced
    # deterministic: another process building the same grid (in another order) gets the same shard
    again = list(reversed(_cells(["--algos", "supervised,fixmatch,adacm", "--dataset", "synthfer", "--labels",
                                  "35,70", "--seeds", "5", "--out", str(tmp_path / "b"), *TINY_FLAGS])[3]))
    assert {c.rel_dir for c in G.shard(again, 1, 3)} == {c.rel_dir for c in G.shard(cells, 1, 3)}


# ----------------------------------------------------------------------------- running

E2E_SUITE = """\
name: e2e
defaults: {seeds: 1}
settings:
  - {dataset: synthfer, labels: 35}
methods:
  - {name: supervised, algo: supervised}
  - {name: fixmatch, algo: fixmatch}
  - {name: exploding, algo: supervised, optim: {lr: 1.0e+30}}   # the loss becomes non-finite: diverged
  - {name: greedy, algo: supervised, labels: 9999}              # more labels than a class has: fails at start
"""


def test_bench_records_failures_writes_outputs_and_resumes(tmp_path, capsys):
    suite = _write(tmp_path / "e2e.yaml", E2E_SUITE)
    out = tmp_path / "bench"
    argv = ["bench", "--suite", str(suite), "--out", str(out), *TINY_FLAGS]
    assert main(argv + ["--jobs", "2"]) == 1           # 1: not every run finished (all are recorded)
    printed = capsys.readouterr().out
    assert "| supervised |" in printed and "| fixmatch |" in printed

    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and not df.duplicated(["method", "labels", "seed"]).any()
    status = dict(zip(df["method"], df["status"]))
    assert status == {"supervised": "finished", "fixmatch": "finished", "exploding": "diverged", "greedy": "failed"}
    errors = dict(zip(df["method"], df["error"].fillna("")))
    assert "non-finite" in errors["exploding"] and "exit code 3" in errors["exploding"]
    assert "labels" in errors["greedy"] and "exit code 2" in errors["greedy"]
    assert errors["supervised"] == "" and df.set_index("method").loc["greedy", "setting"] == "synthfer-9999"
    classes = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    assert list(df.columns) == BASE_COLUMNS + [class_column(c) for c in classes] + TAIL_COLUMNS
    fin = df[df["status"] == "finished"]
    assert fin[["final_acc", "best_test_acc", "mean_class_acc", "wall_time_s", "img_per_s"]].notna().all().all()
    assert (fin["epochs"] == 1).all() and (fin["epochs_done"] == 1).all()
    assert set(df["torch_version"].astype(str)) == {__import__("torch").__version__}
    fm = df[df["method"] == "fixmatch"].iloc[0]
    metrics = json.loads((out / fm["run_dir"] / "metrics.json").read_text())
    assert fm["final_acc"] == pytest.approx(metrics["final_acc"]) and fm["config_hash"] == metrics["config_hash"]
    assert fm["policy"] == metrics["policy"]
    for name in ("table.md", "table.csv", "table.tex", "comparison.csv", "bench.json", "plots/accuracy_curves.png"):
        assert (out / name).is_file(), name
    assert "exploding" in (out / "table.md").read_text()

    # rerun after losing one run's files: only that run trains again; failed/diverged ones are kept
    runs = {r.method: out / r.run_dir for r in df.itertuples()}
    kept = runs["supervised"] / "metrics.json"
    before = kept.stat().st_mtime_ns
    for name in ("result.json", "metrics.json"):
        (runs["fixmatch"] / name).unlink()
    assert main(argv + ["--no-plots"]) == 1
    assert _starts(runs["fixmatch"]) == 2
    assert all(_starts(d) == 1 for m, d in runs.items() if m != "fixmatch")
    assert kept.stat().st_mtime_ns == before
    df2 = pd.read_csv(out / "results.csv")
    assert len(df2) == 4 and dict(zip(df2["method"], df2["status"])) == status

    # a lost row file alone is rebuilt from metrics.json by the next bench, without training
    (runs["supervised"] / "result.json").unlink()
    assert main(argv + ["--no-plots"]) == 1
    assert (runs["supervised"] / "result.json").is_file() and _starts(runs["supervised"]) == 1
    assert len(pd.read_csv(out / "results.csv")) == 4
    capsys.readouterr()
    assert main(["table", str(out), "--format", "latex", "--metric", "best"]) == 0
    assert "\\begin{tabular}" in capsys.readouterr().out and "[metric: best]" in (out / "table.md").read_text()


PAUSE_PLUGIN = '''
import os
import time
from pathlib import Path

from sslzoo.algorithms.supervised import Supervised
from sslzoo.registry import register_algorithm


@register_algorithm("supervised_pause_test")
class PauseOnce(Supervised):
    """Supervised; the first run to reach the 2nd step of its 2nd epoch writes a marker file and waits
    there (test only: a kill then lands mid-epoch, known without timing)."""

    name = "supervised_pause_test"

    def step(self, model, batch, ctx):
        marker = Path(os.environ["SSLZOO_TEST_PAUSE"])
        if (ctx.epoch, ctx.iteration) == (1, 1) and not marker.exists():
            marker.write_text("paused")
            time.sleep(600)
        return super().step(model, batch, ctx)
'''


def _bench_in_own_group(argv: list[str]) -> None:
    os.setpgid(0, 0)   # the bench and the runs it starts form one process group, as a batch job's do
    main(argv)


@pytest.mark.parametrize("kill", ["bench", "group"])
def test_killed_bench_loses_and_duplicates_nothing(tmp_path, monkeypatch, kill):
    """SIGKILL a bench (a forked copy of this process: no interpreter start-up).

    "bench": the bench process alone, after its first run; the orphaned second run checkpoints and stops.
    "group": the bench's whole process group (as a dying node or ``kill -9`` of a job does) while its first
    run is in the middle of its 2nd epoch: the run dies without saving, and the rerun continues it from its
    epoch-1 checkpoint, losing only the partial epoch. benchmarks/kill_resume.py SIGKILLs the group of a
    6-run ``--jobs 2`` bench at random moments and compares the rows with an uninterrupted bench's.
    """
    import multiprocessing
    from sslzoo import checkpoint
    from sslzoo.registry import ALGORITHMS
    out, algo, extra = tmp_path / "bench", "supervised", []
    paused = tmp_path / "paused"
    if kill == "group":
        (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)
        monkeypatch.setenv("SSLZOO_TEST_PAUSE", str(paused))
        monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))   # the test algorithm: this test only
        algo, extra = "supervised_pause_test", ["--plugin", str(tmp_path / "pause.py"), "--epochs", "2"]
    argv = ["bench", "--algos", algo, "--dataset", "synthfer", "--labels", "35", "--seeds", "2",
            "--out", str(out), "--no-plots", *TINY_FLAGS, *extra]
    first, second = out / f"runs/synthfer-35/{algo}/seed0", out / f"runs/synthfer-35/{algo}/seed1"
    bench = multiprocessing.get_context("fork").Process(target=_bench_in_own_group if kill == "group" else main,
                                                        args=(argv,))
    bench.start()
    try:   # "bench": once the first run has finished and the second one has been started
        deadline = time.time() + 120
        while not (paused.exists() if kill == "group" else (first / "result.json").exists() and _starts(second)):
            assert bench.is_alive() and time.time() < deadline, "the bench ended before the moment to kill it"
            time.sleep(0.05)
        if kill == "bench":
            time.sleep(0.3)
    finally:
        if kill == "group" and paused.exists():
            os.killpg(bench.pid, signal.SIGKILL)
        else:
            os.kill(bench.pid, signal.SIGKILL)
        bench.join()
    if kill == "group":
        while True:   # the paused run is gone too (killed with its group, then reaped)
            try:
                os.killpg(bench.pid, 0)
            except ProcessLookupError:
                break
            assert time.time() < deadline + 60, "a process of the killed group is still alive"
            time.sleep(0.05)
        assert checkpoint.load(first / "checkpoint.pt")["step"] == 3           # the end of epoch 1 (3 iterations)
        assert json.loads((first / "metrics.json").read_text())["status"] == "running"
        assert not (first / "result.json").exists() and _starts(second) == 0
    before = (first / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0     # "bench": waits for the orphaned run to stop (it checkpoints), then resumes it
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["seed"]) == [0, 1] and set(df["status"]) == {"finished"}
    if kill == "group":
        assert (first / "log.txt").read_text().count(" resuming ") == 1 and _starts(first) == 2
        assert _starts(second) == 1
        assert [json.loads((d / "metrics.json").read_text())["epochs_done"] for d in (first, second)] == [2, 2]
        return
    assert (first / "metrics.json").stat().st_mtime_ns == before and _starts(first) == 1
    assert _starts(second) == 2
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs_done"] == 1


def test_a_runs_thread_share_follows_jobs_not_the_runs_left(tmp_path, monkeypatch):
    """A run's numbers depend on its thread count: one run left of a --jobs 2 bench still gets cores / 2."""
    from sslzoo.bench import runner
    seen = []
    real = runner.child_env

    def spy(base, *, jobs, **kwargs):
        seen.append(jobs)
        return real(base, jobs=jobs, **kwargs)

    monkeypatch.setattr(runner, "child_env", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = ["bench", "--algos", "supervised", "--labels", "35", "--seeds", "1", "--out", str(tmp_path / "b"),
            "--no-plots", *TINY_FLAGS]
    assert main(argv + ["--jobs", "2"]) == 0
    assert seen == [2]
    env = real({}, jobs=2, slot=0, device="cpu", gpus=[])
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
