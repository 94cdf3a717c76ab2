"""Running the cells of a bench: one training process per run, resumable, N at a time.

Why one process per run: a crash, an out-of-memory kill or a diverged loss in one
run never takes the bench (or the other runs) down; every run's output goes to its
own ``<run_dir>/log.txt``; ``--jobs N`` runs N of them at once, splitting the CPU
threads (``OMP_NUM_THREADS``) and spreading them over the visible GPUs
(``CUDA_VISIBLE_DEVICES``, round-robin over the job slots). A run's process is a fresh
interpreter, ``python -m sslzoo.bench.runner RUN_DIR`` started with ``subprocess``, its
environment (GPU, threads) set before it starts, so before anything in it imports torch
or touches CUDA. (An earlier fork-server launcher saved the interpreter + torch start-up,
seconds per run, but had to patch multiprocessing internals and preloaded torch before a
run's GPU was chosen.) The run trains ``RUN_DIR/cell.yaml``, the config exactly as the
bench resolved and hashed it (not resolved again: a built-in YAML edited half-way through
a bench must not change its runs).

Resumability (re-running the same command):

* a run whose ``metrics.json`` says ``finished`` (or ``diverged``) with the same
  config hash is skipped, and its row is rebuilt if ``result.json`` is missing;
* a run that was stopped part-way (status ``running``/``interrupted`` and a
  ``checkpoint.pt`` with the same config) continues with ``--resume``;
* a run recorded as ``failed`` is skipped unless ``--retry-failed`` (which also
  retries diverged runs); anything else (no metrics, another config) starts over.

The run's process takes an exclusive ``flock`` on ``RUN_DIR/.lock`` and decides
skip / resume / start over under it, so two benches sharing a folder (or a re-run
right after a killed bench whose runs are still saving their checkpoint) never
train the same run twice. A run stops (checkpoint, status ``interrupted``) when
the bench that started it dies.

This module's top level imports only the standard library: it is the run
processes' entry point.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Sequence

from ..io import FileLock

DONE, RESUME, FRESH = "done", "resume", "fresh"
RUN_FILES = ("metrics.json", "checkpoint.pt", "best_val.pt", "best_test.pt", "result.json", "config.yaml",
             "split.json")
CELL_CONFIG = "cell.yaml"
LOG = "log.txt"
PARENT_ENV = "SSLZOO_BENCH_PARENT"
_STOPPED_CODES = (130, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM)


# ----------------------------------------------------------------------------- state of a run folder

def inspect_run(run_dir: Path, cfg_hash: str, retry_failed: bool = False) -> tuple[str, dict[str, Any] | None]:
    """What a re-run must do with this run folder: DONE, RESUME or FRESH (and its metrics, if current)."""
    from .results import read_json, read_row
    metrics = read_json(run_dir / "metrics.json")
    if metrics is not None and metrics.get("config_hash") != cfg_hash:
        metrics = None
    row = read_row(run_dir)
    failed_before = (row is not None and row.get("config_hash") == cfg_hash and row.get("status") == "failed")
    status = (metrics or {}).get("status")
    if status == "finished" or (status == "diverged" and not retry_failed):
        return DONE, metrics
    if failed_before and not retry_failed:
        return DONE, metrics
    if status in ("running", "interrupted") and (run_dir / "checkpoint.pt").is_file():
        return RESUME, metrics
    return FRESH, metrics


def clean_run_dir(run_dir: Path) -> None:
    """Remove a previous attempt's outputs (not its log) so a fresh start never mixes two runs."""
    import shutil
    for name in RUN_FILES:
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


def log_error(run_dir: Path, max_chars: int = 600) -> str:
    """The most telling line of a run's log: the CLI's error line, else the last line (a traceback's)."""
    try:
        with open(run_dir / LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16000))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [ln for ln in lines if not ln.startswith("=== ")]
    for ln in reversed(lines):
        if ln.startswith("sslzoo train: "):
            ln = ln[len("sslzoo train: "):]
            for prefix in ("error: ", "diverged: "):
                ln = ln[len(prefix):] if ln.startswith(prefix) else ln
            return ln[:max_chars]
    return lines[-1][:max_chars] if lines else ""


# ----------------------------------------------------------------------------- child processes

def visible_gpus() -> list[str]:
    """GPU ids a child may be given: CUDA_VISIBLE_DEVICES's list if set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU runs
        return []


def child_env(base: dict[str, str], *, jobs: int, slot: int, device: str, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of one run: its share of the CPU threads, its GPU, the bench's pid."""
    env = dict(base)
    env[PARENT_ENV] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")
    if jobs > 1 and "OMP_NUM_THREADS" not in base:
        from ..device import cpu_count
        threads = str(max(1, cpu_count() // jobs))
        env["OMP_NUM_THREADS"] = threads
        env["MKL_NUM_THREADS"] = threads
    if gpus and str(device) in ("auto", "cuda"):
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def child_args(run_dir: Path, cfg_hash: str, plugins: Sequence[str], retry_failed: bool) -> list[str]:
    args = [str(run_dir), "--hash", cfg_hash]
    for plugin in plugins:
        args += ["--plugin", str(Path(plugin).resolve())]
    if retry_failed:
        args.append("--retry-failed")
    return args


def _child_main(argv: list[str]) -> int:
    """A run's process: lock its folder, decide (skip / resume / start over), then ``sslzoo train``.

    Deciding here, under the lock, and not in the bench means two processes can never
    train the same run folder at once, and a run that another process finished while
    this one waited is not trained again.
    """
    import argparse
    p = argparse.ArgumentParser(prog="python -m sslzoo.bench.runner")
    p.add_argument("run_dir")
    p.add_argument("--hash", required=True)
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--retry-failed", action="store_true")
    args = p.parse_args(argv)
    _watch_parent()
    run_dir = Path(args.run_dir)
    lock = FileLock(run_dir / ".lock")
    from sslzoo.errors import SSLZooError
    try:   # False only while another process holds it; a file system that cannot lock raises
        if not lock.acquire(blocking=False):
            print(f"=== waiting: another process is training {run_dir}", flush=True)
            lock.acquire(blocking=True)
    except SSLZooError as exc:
        print(f"sslzoo train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    for stale in run_dir.glob(".*.tmp"):   # an atomic write cut short by a SIGKILL; under the lock nobody writes
        stale.unlink(missing_ok=True)
    state, _ = inspect_run(run_dir, args.hash, args.retry_failed)
    if state == DONE:
        print(f"=== {run_dir} was completed by another process", flush=True)
        return 0
    if state == FRESH:
        clean_run_dir(run_dir)
    rc = _train_cell(run_dir, args.plugin, resume=state == RESUME)
    if state == RESUME and rc == 2:
        print("=== resuming failed (see above); starting the run over", flush=True)
        clean_run_dir(run_dir)
        rc = _train_cell(run_dir, args.plugin, resume=False)
    return rc


def _train_cell(run_dir: Path, plugins: Sequence[str], *, resume: bool) -> int:
    """``sslzoo train`` on the exact config in ``cell.yaml``, with the CLI's messages and exit codes.

    The config is used as written, not resolved again: the built-in per-data-set and
    per-algorithm YAML files could have changed since the bench resolved it (an upgrade, an
    edit), and the run must train the configuration the bench checked and hashed.
    """
    from sslzoo.config import load_yaml
    from sslzoo.errors import DivergedError, SSLZooError
    from sslzoo.registry import load_plugin
    try:
        for plugin in plugins:
            load_plugin(plugin)
        cfg = load_yaml(run_dir / CELL_CONFIG)
        cfg["out"] = str(run_dir)   # the folder may be mounted elsewhere than where the bench resolved it
        from sslzoo.trainer import train
        metrics = train(cfg, resume=resume)
    except DivergedError as exc:
        print(f"sslzoo train: diverged: {exc}", file=sys.stderr, flush=True)
        return 3
    except SSLZooError as exc:
        print(f"sslzoo train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as exc:
        print(f"sslzoo train: interrupted. {exc}", file=sys.stderr, flush=True)
        return 130
    if metrics.get("final_acc") is not None:
        print(f"run: {cfg['out']}\nfinal test accuracy: {metrics['final_acc']:.2f}% "
              f"(best over epochs: {metrics['best_test_acc']:.2f}% at epoch {metrics['best_epoch']})", flush=True)
    return 0


def _watch_parent(interval: float = 1.0) -> None:
    """Stop (SIGTERM: checkpoint, then exit) when the bench that started this run dies.

    Why: a killed bench must not leave runs training in the background. PR_SET_PDEATHSIG
    covers direct children on Linux; the polling thread also covers a run whose parent changed
    and other systems.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    pid = int(parent)
    if sys.platform.startswith("linux") and os.getppid() == pid:
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort; the thread below still watches
            pass

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:   # a killed but not yet reaped bench is a zombie
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            return True

    def watch() -> None:
        while alive():
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    if not alive():
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


class SubprocessLauncher:
    """Runs a cell as ``python -m sslzoo.bench.runner ...``: a fresh interpreter per run, whose
    environment (``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``) is in place before it starts."""

    def __init__(self, python: str = sys.executable):
        self.python = python

    def start(self, args: list[str], log_path: Path, env: dict[str, str]):
        with open(log_path, "a", encoding="utf-8") as log:
            return subprocess.Popen([self.python, "-m", "sslzoo.bench.runner", *args], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    @staticmethod
    def wait(handle) -> int:
        return handle.wait()

    @staticmethod
    def pid(handle) -> int:
        return handle.pid


def lock_busy(run_dir: Path) -> bool:
    """Whether another process is training this run folder right now.

    Raises SSLZooError where the folder cannot be locked at all (FileLock): reporting that
    as "busy" made a bench defer every run.
    """
    lock = FileLock(run_dir / ".lock")
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


# ----------------------------------------------------------------------------- the runner

@dataclass
class Outcome:
    cell: Any
    status: str                     # finished | diverged | failed | interrupted | deferred | stopped
    row: dict[str, Any] | None = None
    ran: bool = False
    seconds: float = 0.0


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0            # how long this bench took

    def line(self) -> str:
        parts = [f"{v} {k}" for k, v in sorted(self.counts.items())]
        return (f"{self.total} run(s): " + ", ".join(parts) +
                f" ({self.ran} trained now, {self.skipped} already done)" +
                (f" in {_fmt_time(self.seconds)}" if self.ran else ""))


class BenchRunner:
    """Runs resolved cells into ``out``; call :meth:`run`."""

    clock = staticmethod(time.monotonic)   # run times and the time left (tests give a fake clock)

    def __init__(self, cells: list, out: str | Path, *, jobs: int = 1, plugins: Sequence[str] = (),
                 progress: bool = True, retry_failed: bool = False, launcher: Any = None,
                 poll_s: float = 0.5, on_result: Callable[[], None] | None = None,
                 echo: Callable[[str], None] | None = None,
                 before_launch: Callable[[list], None] | None = None):
        """``before_launch(cells)``: called once with the cells still to train, before the first starts."""
        from ..config import config_hash
        self.cells = cells
        self.out = Path(out)
        self.jobs = max(1, int(jobs))
        self.plugins = list(plugins)
        self.progress = progress
        self.retry_failed = retry_failed
        self.launcher = launcher if launcher is not None else SubprocessLauncher()
        self.poll_s = poll_s
        self.on_result = on_result
        self._echo = echo
        self.before_launch = before_launch
        self.hashes = {id(c): config_hash(c.cfg) for c in cells}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._procs: dict[int, Any] = {}
        self._active: dict[int, Any] = {}
        self._gpus: list[str] = []

    # -- public ----------------------------------------------------------------------
    def run(self) -> Summary:
        start = self.clock()
        summary = Summary(total=len(self.cells))
        todo = []
        for cell in self.cells:   # runs already done: rebuild their row if needed, count them
            state, metrics = inspect_run(cell.run_dir(self.out), self.hashes[id(cell)], self.retry_failed)
            if state == DONE:
                row = self._ensure_row(cell, metrics)
                self._count(summary, Outcome(cell, row["status"] if row else "finished", row))
                summary.skipped += 1
            else:
                todo.append(cell)
        if not todo:
            return summary
        if self.before_launch is not None:
            self.before_launch(todo)
        if any(str(c.cfg.get("device")) in ("auto", "cuda") for c in todo):
            self._gpus = visible_gpus()
        jobs = min(self.jobs, len(todo))
        self._slots: Queue[int] = Queue()
        for s in range(jobs):
            self._slots.put(s)
        from tqdm import tqdm
        disable = None if self.progress else True
        self._overall = tqdm(total=len(self.cells), initial=summary.skipped, unit="run",
                             desc=f"bench: {summary.skipped}/{len(self.cells)} runs", position=0,
                             dynamic_ncols=True, disable=disable, file=sys.stderr, smoothing=0,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self._done_runs = summary.skipped
        self._bars: dict[int, Any] = {}
        self._bar_labels: dict[int, str] = {}
        self._tqdm, self._disable = tqdm, disable
        old = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bench") as pool:
                deferred = self._watch(pool, todo, False, summary)
                if deferred and not self.stop.is_set():
                    for cell in deferred:
                        self.echo(f"{cell.rel_dir}: another process is training it; waiting for it")
                    self._watch(pool, deferred, True, summary)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            for bar in self._bars.values():
                bar.close()
            self._overall.close()
            summary.seconds = self.clock() - start
        return summary

    def echo(self, text: str) -> None:
        if self._echo is not None:
            self._echo(text)
        else:
            from tqdm import tqdm
            tqdm.write(text, file=sys.stdout)

    # -- scheduling ---------------------------------------------------------------------
    def _watch(self, pool: ThreadPoolExecutor, cells: list, wait_for_lock: bool, summary: Summary) -> list:
        futures: dict[Future, Any] = {pool.submit(self._work, c, wait_for_lock): c for c in cells}
        pending = set(futures)
        deferred = []
        interrupted = False
        while pending:
            try:
                done, pending = wait(pending, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    cell = futures[fut]
                    exc = fut.exception()
                    if exc is not None:   # a bug in the harness itself: report, keep the other runs going
                        self.echo(f"{cell.describe()}: bench error {type(exc).__name__}: {exc}")
                        outcome = Outcome(cell, "failed")
                    else:
                        outcome = fut.result()
                    if outcome.status == "deferred":
                        deferred.append(cell)
                        continue
                    if outcome.status == "stopped":
                        continue
                    self._count(summary, outcome)
                    self._report(outcome, summary)
                self._update_bars()
            except KeyboardInterrupt:
                if interrupted:   # second interrupt: stop waiting for checkpoints
                    self._signal_children(getattr(signal, "SIGKILL", signal.SIGTERM))
                    raise
                interrupted = True
                self.stop.set()
                self.echo("interrupted: the running runs save a checkpoint and stop; rerun the same command "
                          "to resume them.")
                self._signal_children(signal.SIGTERM)
        if interrupted:
            raise KeyboardInterrupt("bench stopped")
        return deferred

    def _count(self, summary: Summary, outcome: Outcome) -> None:
        summary.counts[outcome.status] = summary.counts.get(outcome.status, 0) + 1
        summary.outcomes.append(outcome)
        if outcome.ran:
            summary.ran += 1

    def _signal_children(self, sig: int) -> None:
        with self._lock:
            pids = [self.launcher.pid(h) for h in self._procs.values()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, OSError):
                pass

    # -- one cell -----------------------------------------------------------------------
    def _work(self, cell, wait_for_lock: bool) -> Outcome:
        if self.stop.is_set():
            return Outcome(cell, "stopped")
        run_dir = cell.run_dir(self.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not wait_for_lock and lock_busy(run_dir):
            return Outcome(cell, "deferred")
        h = self.hashes[id(cell)]
        state, metrics = inspect_run(run_dir, h, self.retry_failed)
        if state == DONE:   # finished meanwhile (by another process)
            row = self._ensure_row(cell, metrics)
            return Outcome(cell, row["status"] if row else "finished", row)
        slot = self._slots.get()
        tic = self.clock()
        try:
            if self.stop.is_set():
                return Outcome(cell, "stopped")
            rc = self._launch(cell, run_dir, h, state, slot)
        finally:
            self._slots.put(slot)
        row = self._record(cell, run_dir, rc)
        return Outcome(cell, row["status"], row, ran=True, seconds=self.clock() - tic)

    def _launch(self, cell, run_dir: Path, cfg_hash: str, state: str, slot: int) -> int:
        import yaml
        from ..io import write_text
        cfg = dict(cell.cfg)
        # Each run's share of the cores follows --jobs, not how many runs are left: a run's numbers
        # depend on its thread count, so the last run of a bench (or a resumed one) must get the
        # same share as it would have had in the full grid.
        if cfg.get("num_workers") == -1 and self.jobs > 1:
            from ..device import default_workers
            cfg["num_workers"] = default_workers(self.jobs)
        write_text(run_dir / CELL_CONFIG, yaml.safe_dump(cfg, sort_keys=False))
        args = child_args(run_dir, cfg_hash, self.plugins, self.retry_failed)
        env = child_env(dict(os.environ), jobs=self.jobs, slot=slot, device=str(cfg.get("device")),
                        gpus=self._gpus)
        gpu = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self._gpus and "CUDA_VISIBLE_DEVICES" in env else ""
        self._append_log(run_dir, f"{'resuming' if state == RESUME else 'starting'} {cell.describe()}{gpu} "
                                  f"(python -m sslzoo.bench.runner {' '.join(args)})")
        handle = self.launcher.start(args, run_dir / LOG, env)
        with self._lock:
            self._procs[slot] = handle
            self._active[slot] = cell
        if self.stop.is_set():
            self._signal_children(signal.SIGTERM)
        try:
            return self.launcher.wait(handle)
        finally:
            with self._lock:
                self._procs.pop(slot, None)
                self._active.pop(slot, None)

    @staticmethod
    def _append_log(run_dir: Path, text: str) -> None:
        with open(run_dir / LOG, "a", encoding="utf-8") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _record(self, cell, run_dir: Path, rc: int) -> dict[str, Any]:
        """Write the run's row from how its process ended and what its metrics.json says."""
        from .results import read_json, read_row
        h = self.hashes[id(cell)]
        metrics = read_json(run_dir / "metrics.json")
        if metrics is not None and metrics.get("config_hash") != h:
            metrics = None
        ms = (metrics or {}).get("status")
        error = None
        if rc == 0 and ms == "finished":
            status = "finished"
        elif ms == "diverged":
            status, error = "diverged", dict(metrics.get("error") or {}, exit_code=rc)
        elif rc in _STOPPED_CODES or ms == "interrupted":
            status = "interrupted"
        else:
            row = read_row(run_dir)
            if rc == 0 and row is not None and row.get("config_hash") == h and row.get("status") == "failed":
                return row   # another process recorded this run's failure while we waited for it
            status = "failed"
            why = log_error(run_dir) or ("exited without writing metrics.json" if rc == 0 else "")
            error = {"message": why, "exit_code": rc}
            if rc < 0:
                error["signal"] = -rc
        self._append_log(run_dir, f"exit code {rc}: {status}")
        return self._write_row(cell, metrics, status, error)

    def _ensure_row(self, cell, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        """For a run that is done: keep its row if current, else rebuild it from metrics.json."""
        from .results import read_row
        run_dir = cell.run_dir(self.out)
        h = self.hashes[id(cell)]
        row = read_row(run_dir)
        if metrics is None or metrics.get("status") not in ("finished", "diverged"):
            return row   # a recorded failure: its row is the record
        current = (row is not None and row.get("config_hash") == h and row.get("method") == cell.method
                   and row.get("status") == metrics.get("status"))
        if current:
            return row
        error = metrics.get("error") if metrics.get("status") != "finished" else None
        return self._write_row(cell, metrics, str(metrics.get("status")), error)

    def _write_row(self, cell, metrics, status: str, error) -> dict[str, Any]:
        from .results import make_row, write_row
        row = make_row(method=cell.method, setting=cell.setting_id, cfg=cell.cfg, rel_dir=cell.rel_dir,
                       config_hash=self.hashes[id(cell)], metrics=metrics, status=status, error=error)
        write_row(cell.run_dir(self.out), row)
        if self.on_result is not None:
            with self._lock:
                try:
                    self.on_result()
                except Exception as exc:  # noqa: BLE001 - a results.csv refresh must not stop the runs
                    self.echo(f"warning: could not refresh results.csv: {exc}")
        return row

    # -- progress -----------------------------------------------------------------------
    def _report(self, outcome: Outcome, summary: Summary) -> None:
        self._done_runs += 1
        if not outcome.ran:
            return
        row = outcome.row or {}
        text = f"[{self._done_runs}/{summary.total}] {outcome.cell.describe()}: {outcome.status}"
        if row.get("final_acc") is not None:
            text += f", final test acc {row['final_acc']:.2f}%"
        left = time_left([o.seconds for o in summary.outcomes if o.ran and o.status == "finished"],
                         summary.total - self._done_runs, self.jobs)
        text += f" ({_fmt_time(outcome.seconds)}" + (f"; {left} left)" if left else ")")
        if outcome.status in ("failed", "diverged") and row.get("error"):
            text += f"\n    {row['error']}\n    log: {outcome.cell.run_dir(self.out) / LOG}"
        self.echo(text)

    def _update_bars(self) -> None:
        from .results import read_json
        with self._lock:
            active = dict(self._active)
        fraction = 0.0
        for slot, cell in active.items():
            metrics = read_json(cell.run_dir(self.out) / "metrics.json") or {}
            total = int(cell.cfg["epochs"]) or 1
            done = min(total, int(metrics.get("epochs_done") or 0))
            fraction += done / total
            bar = self._bars.get(slot)
            if bar is None:
                bar = self._bars[slot] = self._tqdm(total=total, position=slot + 1, unit="epoch", leave=False,
                                                    dynamic_ncols=True, disable=self._disable, file=sys.stderr)
            label = f"  {cell.method} {cell.setting_id} seed {cell.seed}"
            if self._bar_labels.get(slot) != label:
                self._bar_labels[slot] = label
                bar.reset(total=total)
                bar.set_description_str(label, refresh=False)
            if bar.n != done:
                bar.update(done - bar.n)
        for slot, bar in self._bars.items():
            if slot not in active and self._bar_labels.get(slot) != "  (idle)":
                self._bar_labels[slot] = "  (idle)"
                bar.reset()
                bar.set_description_str("  (idle)", refresh=False)
        target = self._done_runs + fraction
        if target > self._overall.n:
            self._overall.update(target - self._overall.n)
        self._overall.set_description_str(f"bench: {self._done_runs}/{len(self.cells)} runs", refresh=True)


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def time_left(durations: Sequence[float], left: int, jobs: int) -> str | None:
    """About how long the ``left`` runs still take, in words: the mean time of the runs finished so
    far, ``jobs`` at a time (None before the first finished run, or when none is left)."""
    if not durations or left <= 0:
        return None
    seconds = sum(durations) / len(durations) * left / min(max(1, jobs), left)
    if seconds < 60:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h" + (f" {minutes} min" if minutes else "")


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
