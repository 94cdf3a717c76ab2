"""Kill a bench's whole process group with SIGKILL at random moments, resume it, compare with an uninterrupted bench.

``python -m benchmarks.kill_resume --out /tmp/kill_resume`` (about 2 minutes on 2 cores).

Why: ``tests/test_bench.py`` kills the bench process once, between two runs, and its run
processes stop cleanly (they checkpoint on the bench's death). A machine that dies, an
out-of-memory killer or ``kill -9`` of a job's process group gives nobody a chance to save:
the runs in flight die mid-step. This script checks what the docs promise then
(docs/reliability.md): the same command resumes; every run in flight loses only its current
partial epoch (the checkpoint on disk is the last finished epoch's and loads); nothing is
trained twice or lost; and the final rows are identical to an uninterrupted bench's.

It runs one 6-run bench (supervised, FixMatch, Ada-CM x 2 seeds on a small synthfer, ``--jobs 2``)
to the end as the reference, then the same bench in another folder, SIGKILLs its process group
``--kills`` times at seeded random moments (uniform over a run's training time, measured on the
reference, after the first of its runs has started training), resumes it with the same command
after each kill and once more at the end. Printed: each kill (when, which runs were done / in flight, what their
checkpoints held), how many kills the bench survived, and whether every row matched.
Exit status 0 only if all of it holds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ALGOS, SEEDS, LABELS = "supervised,fixmatch,adacm", 2, 35
TIMING_KEYS = ("time_s", "img_per_s")   # wall-clock measurements: the only fields allowed to differ


def bench_argv(out: Path, epochs: int, iters: int, jobs: int) -> list[str]:
    """The bench command (tests/test_bench.py's tiny runs, with more epochs so kills land mid-run)."""
    return [sys.executable, "-m", "sslzoo", "bench", "--algos", ALGOS, "--dataset", "synthfer",
            "--labels", str(LABELS), "--seeds", str(SEEDS), "--jobs", str(jobs), "--out", str(out), "--no-plots",
            "--no-progress", "--set", "data.n_train=420", "--set", "data.n_test=140", "--epochs", str(epochs),
            "--iters-per-epoch", str(iters), "--batch-size", "8", "--mu", "1", "--set", "num_workers=0",
            "--set", "tensorboard=false", "--set", "eval_batch_size=256", "--backbone", "smallcnn",
            "--set", "backbone.width=8"]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The bench in a process group of its own (its runs inherit it), so one killpg reaches all of them."""
    with open(log, "a", encoding="utf-8") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the bench's process group and wait until none of its processes is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while group_alive(proc.pid):   # orphaned runs are reaped by init
        if time.time() > deadline:
            raise RuntimeError(f"processes of group {proc.pid} survived SIGKILL")
        time.sleep(0.05)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs").glob("*/*/seed*/cell.yaml"))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def starts(run_dir: Path) -> tuple[int, int]:
    """(fresh starts, resumes) the bench logged for this run."""
    try:
        lines = (run_dir / "log.txt").read_text().splitlines()
    except OSError:
        return 0, 0
    return (sum(ln.startswith("=== ") and " starting " in ln for ln in lines),
            sum(ln.startswith("=== ") and " resuming " in ln for ln in lines))


def training_seconds(run_dir: Path) -> float:
    """A finished run's training and evaluation time (its epochs' time_s), without the process start-up."""
    return sum(e.get("time_s") or 0.0 for e in (read_json(run_dir / "metrics.json") or {}).get("history", []))


def wait_for_training(out: Path, proc: subprocess.Popen, since: float) -> bool:
    """Wait until a run of this bench writes metrics.json (it has set up and starts training); False if the
    bench ends first. A kill before that would only test the start-up, which loses nothing."""
    while proc.poll() is None:
        for d in run_dirs(out):
            m = d / "metrics.json"
            try:
                fresh = m.stat().st_mtime >= since
            except OSError:
                continue
            if fresh and (read_json(m) or {}).get("status") == "running":
                return True
        time.sleep(0.05)
    return False


def inspect_after_kill(out: Path, iters: int) -> tuple[list[str], list[str]]:
    """What each run folder holds after a kill; returns (one line per run, problems).

    A run in flight must have lost at most its current partial epoch: its checkpoint (if any)
    loads, sits on an epoch boundary, and holds every epoch metrics.json records as done (it is
    written just before metrics.json, so it may be one epoch ahead of it).
    """
    from sslzoo import checkpoint
    from sslzoo.errors import SSLZooError
    lines, problems = [], []
    for d in run_dirs(out):
        name = "/".join(d.parts[-2:])
        metrics = read_json(d / "metrics.json") or {}
        status, done = metrics.get("status", "-"), int(metrics.get("epochs_done") or 0)
        tmp = sorted(p.name for p in d.glob(".*.tmp"))
        held = "no checkpoint"
        if (d / "checkpoint.pt").exists():
            try:
                step = int(checkpoint.load(d / "checkpoint.pt")["step"])
            except SSLZooError as exc:
                problems.append(f"{name}: corrupt checkpoint ({exc})")
                step = -1
            if step >= 0:
                epoch, partial = divmod(step, iters)
                held = f"checkpoint at epoch {epoch}"
                if partial:
                    problems.append(f"{name}: checkpoint mid-epoch at step {step} (a SIGKILL leaves no time to save)")
                if status in ("running", "interrupted") and epoch not in (done, done + 1):
                    problems.append(f"{name}: checkpoint at epoch {epoch} but metrics.json says {done} done")
        elif status in ("running", "interrupted") and done > 0:
            problems.append(f"{name}: {done} epoch(s) done but no checkpoint: they will be trained again")
        row = "row" if (d / "result.json").exists() else "no row"
        extra = f", leftover temporary files {tmp}" if tmp else ""
        lines.append(f"    {name}: {status} ({done} epochs done), {held}, {row}{extra}")
    return lines, problems


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"final_acc": metrics.get("final_acc"), "config_hash": metrics.get("config_hash"),
            "history": [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in metrics.get("history", [])]}


def compare(reference: Path, killed: Path) -> tuple[int, list[str]]:
    """(rows identical to the reference, problems): exactly one finished row per run, same numbers."""
    import pandas as pd
    problems = []
    ref, got = pd.read_csv(reference / "results.csv"), pd.read_csv(killed / "results.csv")
    expected = len(ALGOS.split(",")) * SEEDS
    if len(got) != expected:
        problems.append(f"results.csv has {len(got)} rows, expected {expected}")
    dup = got.duplicated(["method", "seed"]).sum()
    if dup:
        problems.append(f"{dup} duplicated row(s) in results.csv")
    if set(got["status"]) != {"finished"}:
        problems.append(f"statuses {sorted(set(got['status']))}")
    same = 0
    for d in run_dirs(reference):
        rel = d.relative_to(reference)
        a, b = read_json(d / "metrics.json"), read_json(killed / rel / "metrics.json")
        if b is None:
            problems.append(f"{rel}: no metrics.json after the resumes")
        elif comparable(a) != comparable(b):
            problems.append(f"{rel}: differs from the uninterrupted run (final_acc {a.get('final_acc')} vs "
                            f"{b.get('final_acc')})")
        else:
            same += 1
    for col in ("final_acc", "config_hash"):
        key = ["method", "seed"]
        merged = ref[key + [col]].merge(got[key + [col]], on=key, suffixes=("_ref", "_killed"))
        if not (merged[f"{col}_ref"] == merged[f"{col}_killed"]).all() or len(merged) != expected:
            problems.append(f"results.csv column {col} differs from the uninterrupted bench's")
    return same, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kill_resume", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="kill_resume_out", help="work folder (replaced)")
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iters-per-epoch", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.environ.setdefault("SSLZOO_CACHE", str(out / "cache"))   # shared by both benches
    rng = random.Random(args.seed)
    iters = args.iters_per_epoch

    reference, killed = out / "reference", out / "killed"
    print(f"reference: {' '.join(bench_argv(reference, args.epochs, iters, args.jobs)[1:])}", flush=True)
    tic = time.time()
    rc = start(bench_argv(reference, args.epochs, iters, args.jobs), out / "reference.log").wait()
    ref_seconds = time.time() - tic
    if rc != 0:
        print(f"the reference bench failed (exit {rc}); see {out / 'reference.log'}")
        return 1
    runs = len(run_dirs(reference))
    print(f"reference bench: {runs} runs, {ref_seconds:.0f} s", flush=True)

    train_s = max(training_seconds(d) for d in run_dirs(reference))
    print(f"longest training of a run (without its process start-up): {train_s:.1f} s", flush=True)
    argv_killed = bench_argv(killed, args.epochs, iters, args.jobs)
    survived, problems = 0, []
    for k in range(1, args.kills + 1):
        delay = rng.uniform(0.0, train_s)
        tic = time.time()
        proc = start(argv_killed, out / "killed.log")
        if not wait_for_training(killed, proc, tic):
            print(f"kill {k}: the bench ended (exit {proc.returncode}) before a run trained; no kill", flush=True)
            continue
        time.sleep(delay)
        if proc.poll() is not None:
            print(f"kill {k}: the bench ended (exit {proc.returncode}) within {delay:.1f} s; no kill", flush=True)
            continue
        kill_group(proc)
        lines, found = inspect_after_kill(killed, iters)
        in_flight = sum(": running (" in ln for ln in lines)
        print(f"kill {k}: SIGKILL to the process group {delay:.1f} s after a run started training "
              f"({time.time() - tic:.1f} s after the bench started); {in_flight} run(s) in flight:", flush=True)
        print("\n".join(lines), flush=True)
        problems += [f"after kill {k}: {x}" for x in found]
        survived += 1

    rc = start(argv_killed, out / "killed.log").wait()
    if rc != 0:
        problems.append(f"the final resume exited {rc} (see {out / 'killed.log'})")
    resumed = sum(starts(d)[1] for d in run_dirs(killed))
    restarted = sum(max(0, starts(d)[0] - 1) for d in run_dirs(killed))
    same, found = compare(reference, killed) if rc == 0 else (0, [])
    problems += found
    kills_ok = survived if not problems else 0
    print(f"\nkills survived: {kills_ok}/{args.kills} (SIGKILL of the whole process group; "
          f"{resumed} run resume(s) from a checkpoint, {restarted} run restart(s) from scratch)")
    print(f"rows: {same}/{runs} identical to the uninterrupted bench (final_acc, history without "
          f"{'/'.join(TIMING_KEYS)}, config hash)")
    for x in problems:
        print(f"PROBLEM: {x}")
    print("OK" if not problems and survived == args.kills and same == runs else "FAILED")
    return 0 if not problems and survived == args.kills and same == runs else 1


if __name__ == "__main__":
    sys.exit(main())
