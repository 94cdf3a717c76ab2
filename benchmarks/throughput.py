"""Throughput benchmark: how close a training step gets to the raw network's own cost.

An SSL step runs the network on ``B + mu*B*len(unlabeled_views)`` images; everything
that is not that network's forward/backward/optimizer step is overhead. For each
registered algorithm this measures, in one process and one run:

* ``raw``:   forward + backward + optimizer step of the backbone alone on a synthetic
             batch of the step's concatenated shape (the floor for this step);
* ``step``:  the Trainer's own ``train_step`` (algorithm step, loss sum, optimizer,
             schedule, EMA, device-side statistics) on a pre-filled device batch;
* ``separate``: the same step with ``forward_mode=separate`` (one pass per input, as
             the official Ada-CM code), for algorithms with unlabeled views;
* ``loader``: images/s that ``StepBatches`` + ``step_loader`` deliver (all views);
* ``e2e``:   short real ``Trainer.fit`` runs on the configured data, timed between step
             marks after a warm-up (loader start-up, evaluation and checkpoints excluded;
             evaluation and the per-epoch hook are reported separately), each run paired
             with an equally long pre-filled step timing.

Ratios: ``step_over_raw = raw_img_s / step_img_s`` (step time / raw time; >= 1 is slower
than raw; target <= 1.10), ``separate_over_concat = step_img_s / step_separate_img_s``
(separate time / concat time), ``e2e_over_step = e2e_img_s / step_img_s`` (the fraction of
step speed a real run keeps; target >= 0.9). Raw and step (and separate) repeats are
interleaved so machine noise hits all of them; each value is the median of the repeats.
The ``*_paired`` variants are medians of per-repeat ratios (noise-robust on a shared
machine); ``e2e_in_step_fraction`` is the share of the real loop's time spent inside
``train_step``.

It measures through the trainer's public methods (``setup``, ``batch``, ``train_step``,
``evaluate``, ``epoch_context``) and callbacks, so it times the code users run. The
``benchmarks`` folder is installed as ``sslzoo.benchmarks``: ``sslzoo throughput`` and
``python -m benchmarks.throughput`` (from the repository) run this same module.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch
from sslzoo.callbacks import Callback
from sslzoo.device import cpu_count, pick_device
from sslzoo.meter import EpochMeter

REQUIRED_KEYS = ("raw_img_s", "step_img_s", "e2e_img_s", "step_over_raw", "e2e_over_step")


@dataclass
class BenchOptions:
    """What to measure and for how long (defaults: about a minute per algorithm on 2 CPU cores)."""

    algos: list[str] | None = None           # None: every registered algorithm
    repeats: int = 7                          # timed repeats per measurement (median reported)
    iters: int = 3                            # steps per timed repeat
    warmup: int = 2                           # untimed steps before the repeats
    compare_forward: bool = True              # also time forward_mode=separate
    loader_steps: int = 20                    # batches timed per loader measurement
    loader_workers: list[int] | None = None   # worker counts to sweep (None: the configured count)
    e2e_steps: int = 15                       # timed steps per real training run
    e2e_warmup: int = 5                       # untimed first steps (worker start-up, allocator warm-up)
    e2e_repeats: int = 3                      # real runs, each paired with a pre-filled step timing
    e2e_workers: list[int] | None = None      # worker counts to sweep (None: the configured count)
    loader: bool = True
    e2e: bool = True
    evaluation: bool = True                   # time Trainer.evaluate and the per-epoch hook
    threads: int | None = None                # torch.set_num_threads in this process
    workdir: str | None = None                # where the e2e runs write (default: a temporary folder)
    augment: bool = True                      # also time the views at the paper's shape (JSON field "augment")
    augment_only: bool = False                # only that
    augment_size: int = 224                   # image side for the augmentation timing


# -- helpers ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The facts a throughput number depends on."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": cpu_count(), "logical_cpus": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "python": platform.python_version(), "platform": platform.platform(),
    }
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                   if k in os.environ}
    if hasattr(os, "getloadavg"):
        info["load_avg_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _images(batch: Batch | dict[str, Any]) -> int:
    if isinstance(batch, Batch):
        return batch.num_images
    return (int(batch["x_l"].shape[0]) * (1 + len(batch.get("l_views", [])))
            + sum(int(v.shape[0]) for v in batch["u_views"]))


def interleaved_times(runners: dict[str, Callable[[], None]], iters: int, repeats: int, warmup: int,
                        device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each runner, ``repeats`` times, in rotating order (noise hits all alike)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = runners[name]
            _sync(device)
            tic = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - tic) / iters)
    return times


def _spread(values: list[float]) -> float:
    """(max - min) / median of the repeats: how noisy a measurement was."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else float("nan")


# -- the pieces -------------------------------------------------------------------------------
def _make_trainer(cfg: dict[str, Any]):
    from sslzoo.trainer import Trainer
    trainer = Trainer(cfg, overwrite=True)
    trainer.setup()
    return trainer


def raw_runner(trainer, n_images: int) -> Callable[[], None]:
    """Backbone forward + CE + backward + optimizer step on a synthetic [n, 3, H, W] batch.

    A copy of the trainer's model, with the same optimizer kind, layout, autocast and
    compile setting, so the only difference from ``step`` is everything around the network.
    """
    from sslzoo.optim import build_optimizer
    cfg, device = trainer.cfg, trainer.device
    model = copy.deepcopy(trainer.model)
    run_model = torch.compile(model) if cfg["compile"] and device.type == "cuda" else model
    optimizer = build_optimizer(model.parameters(), cfg["optim"])
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp_dtype == torch.float16)
    size = trainer.data.bundle.image_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_images, 3, size, size, generator=gen).to(device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, trainer.num_classes, (n_images,), generator=gen).to(device)

    def run() -> None:
        model.train()
        with trainer.autocast():
            logits, _ = run_model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return run


def step_runner(trainer, batch: Batch, forward_mode: str | None = None) -> Callable[[], None]:
    """The Trainer's real ``train_step`` on a fixed device batch (optionally another forward_mode)."""
    meter, counter = EpochMeter(), itertools.count()

    def run() -> None:
        step = next(counter) % max(1, trainer.total_steps)
        saved = trainer.cfg["forward_mode"]
        if forward_mode is not None:
            trainer.cfg["forward_mode"] = forward_mode
        try:
            trainer.train_step(batch, step, meter)
        finally:
            trainer.cfg["forward_mode"] = saved
        if step % 50 == 49:   # what the loop does every log_interval steps: read the device sums
            meter.read()
    return run


def measure_loader(trainer, steps: int, workers: int) -> float:
    """Images/s that StepBatches + step_loader deliver with ``workers`` processes (start-up excluded)."""
    from sslzoo.data.pipeline import step_loader
    skip = max(1, workers)
    loader = step_loader(trainer.batches, 0, steps + skip, workers, trainer.device.type == "cuda")
    it = iter(loader)
    try:
        for _ in range(skip):
            next(it)
        tic, images = time.perf_counter(), 0
        for raw in it:
            images += _images(raw)
        return images / max(1e-9, time.perf_counter() - tic)
    finally:
        del it


class _EpochTimer(Callback):
    """Time marks of a real run, from its callbacks: when each step ended and the epoch's evaluation."""

    def __init__(self) -> None:
        self.step_end = 0.0
        self.eval_s = 0.0

    def on_step_end(self, trainer, step: int) -> None:
        self.step_end = time.perf_counter()

    def on_epoch_end(self, trainer, entry: dict[str, Any]) -> None:
        self.eval_s += time.perf_counter() - self.step_end


def measure_e2e(cfg: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """A real one-epoch ``Trainer.fit`` of warmup + steps iterations; img/s between step marks."""
    from sslzoo.trainer import Trainer

    class TimedTrainer(Trainer):
        marks: list[tuple[float, int]]
        in_step_s = 0.0

        def train_step(self, batch, step, meter):  # the public step, plus time marks
            tic = time.perf_counter()
            super().train_step(batch, step, meter)
            if step in (warmup - 1, self.total_steps - 1):   # only there: a sync per step would stop
                _sync(self.device)                           # CUDA overlapping data and compute
            toc = time.perf_counter()
            if step >= warmup:
                self.in_step_s += toc - tic
            self.marks.append((toc, _images(batch)))

    cfg = dict(cfg, epochs=1, iters_per_epoch=warmup + steps, tensorboard=False, progress=False)
    timer = _EpochTimer()
    trainer = TimedTrainer(cfg, overwrite=True, callbacks=[timer])
    trainer.marks = []
    trainer.fit()
    (t0, _), timed = trainer.marks[warmup - 1], trainer.marks[warmup:]
    seconds = timed[-1][0] - t0
    return {"img_s": sum(n for _, n in timed) / seconds, "seconds": seconds, "steps": len(timed),
            "num_workers": trainer.num_workers(), "end_epoch_s": timer.eval_s,
            # the same run's time inside train_step / its whole loop time: the e2e/step ratio
            # measured under the same machine noise (the rest is waiting for data, H2D, logging)
            # (on CUDA, the host's share: kernels still running when a step returns are not counted)
            "in_step_fraction": trainer.in_step_s / seconds}


def measure_evaluation(trainer, repeats: int) -> dict[str, float]:
    """Trainer.evaluate on the test split (img/s) and the per-epoch hook (e.g. Ada-CM's margin pass)."""
    n = len(trainer.data.test)
    times = []
    for _ in range(max(1, repeats)):
        tic = time.perf_counter()
        trainer.evaluate(trainer.data.test)
        _sync(trainer.device)
        times.append(time.perf_counter() - tic)
    saved = copy.deepcopy(trainer.algorithm.state_dict())
    tic = time.perf_counter()
    trainer.algorithm.on_epoch_start(trainer.epoch_context(1))
    _sync(trainer.device)
    hook = time.perf_counter() - tic
    trainer.algorithm.load_state_dict(saved)
    return {"eval_img_s": n / statistics.median(times), "eval_images": n, "epoch_start_s": hook}


# -- the benchmark ----------------------------------------------------------------------------
def _resolve(layers: list[dict[str, Any]], algo: str, out: Path, **extra: Any) -> dict[str, Any]:
    from sslzoo.config import resolve
    return resolve(layers + [{"algo": algo, "tensorboard": False, "progress": False, "out": str(out), **extra}])


def bench_algorithm(layers: list[dict[str, Any]], algo: str, opts: BenchOptions, workdir: Path,
                    log: Callable[[str], None]) -> dict[str, Any]:
    cfg = _resolve(layers, algo, workdir / algo)
    trainer = _make_trainer(cfg)
    device = trainer.device
    trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
    batch = trainer.batch(0)
    n = _images(batch)
    res: dict[str, Any] = {"images_per_step": n, "batch_size": cfg["batch_size"], "mu": cfg["mu"],
                           "labeled_view": trainer.algorithm.labeled_view,
                           "unlabeled_views": list(trainer.algorithm.unlabeled_views),
                           "runtime": runtime_settings(trainer)}

    runners: dict[str, Callable[[], None]] = {"raw": raw_runner(trainer, n), "step": step_runner(trainer, batch)}
    separate = opts.compare_forward and bool(batch.u_views)
    if separate:
        runners["separate"] = step_runner(trainer, batch, "separate")
    log(f"[{algo}] timing {', '.join(runners)}: {opts.repeats} x {opts.iters} steps of {n} images")
    times = interleaved_times(runners, opts.iters, opts.repeats, opts.warmup, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    res["raw_img_s"] = n / med["raw"]
    res["step_img_s"] = n / med["step"]
    res["step_over_raw"] = med["step"] / med["raw"]
    if separate:
        res["step_separate_img_s"] = n / med["separate"]
        res["separate_over_concat"] = med["separate"] / med["step"]
    res["step_over_raw_paired"] = statistics.median(s / r for s, r in zip(times["step"], times["raw"]))
    res["spread"] = {k: round(_spread(v), 3) for k, v in times.items()}

    if opts.evaluation:
        log(f"[{algo}] evaluation and per-epoch hook")
        res.update(measure_evaluation(trainer, 2))

    configured = trainer.num_workers()
    if opts.loader:
        sweep = sorted(set(opts.loader_workers or []) | {configured})
        res["loader_workers"] = {}
        for w in sweep:
            log(f"[{algo}] loader, {w} worker(s)")
            res["loader_workers"][str(w)] = measure_loader(trainer, opts.loader_steps, w)
        res["loader_img_s"] = res["loader_workers"][str(configured)]
        res["loader_num_workers"] = configured

    res["e2e_img_s"] = res["e2e_over_step"] = None
    if opts.e2e:
        step_fn = runners["step"]
        sweep = list(dict.fromkeys([configured, *(opts.e2e_workers or [])]))
        res["e2e_workers"] = {}
        for w in sweep:
            log(f"[{algo}] end-to-end, {w} worker(s): {opts.e2e_repeats} x ({opts.e2e_warmup} + "
                f"{opts.e2e_steps} steps), each paired with {opts.e2e_steps} pre-filled steps")
            e2e_cfg = dict(cfg, num_workers=w, out=str(workdir / f"{algo}-e2e-{w}"))
            res["e2e_workers"][str(w)] = paired_e2e(e2e_cfg, step_fn, n, opts, device)
        main = res["e2e_workers"][str(configured)]
        res["e2e_img_s"], res["e2e_num_workers"] = main["img_s"], configured
        res["e2e_over_step"] = main["img_s"] / res["step_img_s"]
        res["e2e_over_step_paired"] = main["over_step_paired"]
        res["e2e_in_step_fraction"] = main["in_step_fraction"]
        res["end_epoch_s"] = main["end_epoch_s"]
    return res


def paired_e2e(cfg: dict[str, Any], step_fn: Callable[[], None], n_images: int, opts: BenchOptions,
               device: torch.device) -> dict[str, Any]:
    """``e2e_repeats`` short real runs, each next to an equally long pre-filled step timing.

    Why paired: on a shared machine the load drifts over tens of seconds, so e2e and step
    measured minutes apart can differ by +-20% for no reason of ours; the median of the
    per-pair ratios (order alternating) cancels most of that.
    """
    runs, ratios = [], []
    for r in range(max(1, opts.e2e_repeats)):
        def step_img_s() -> float:
            _sync(device)
            tic = time.perf_counter()
            for _ in range(opts.e2e_steps):
                step_fn()
            _sync(device)
            return n_images * opts.e2e_steps / (time.perf_counter() - tic)
        first = step_img_s() if r % 2 else None
        run = measure_e2e(cfg, opts.e2e_steps, max(1, opts.e2e_warmup))
        step = first if first is not None else step_img_s()
        runs.append(run)
        ratios.append(run["img_s"] / step)
    return {"img_s": statistics.median(r["img_s"] for r in runs), "over_step_paired": statistics.median(ratios),
            "in_step_fraction": statistics.median(r["in_step_fraction"] for r in runs),
            "end_epoch_s": statistics.median(r["end_epoch_s"] for r in runs),
            "num_workers": runs[0]["num_workers"], "steps": sum(r["steps"] for r in runs),
            "runs_img_s": [r["img_s"] for r in runs], "paired_ratios": ratios}


def run_benchmark(layers: list[dict[str, Any]], opts: BenchOptions | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every selected algorithm; returns {"machine", "config", "algorithms", "augment"}."""
    from sslzoo.registry import ALGORITHMS
    from .augment_speed import AugmentBenchOptions, measure_augment
    opts = opts or BenchOptions()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.augment_only:
        from sslzoo.config import resolve
        device = pick_device(resolve(layers)["device"])
        log(f"augmentation at {opts.augment_size} px (batched / per-image torchvision / per-image PIL)")
        return {"machine": machine_info(device),
                "augment": measure_augment(AugmentBenchOptions(image_size=opts.augment_size), str(device))}
    names = opts.algos or ALGORITHMS.names()
    for name in names:
        ALGORITHMS.get(name)   # unknown names -> a clear error before any work
    tmp = tempfile.TemporaryDirectory(prefix="sslzoo-throughput-") if opts.workdir is None else None
    workdir = Path(opts.workdir or tmp.name)
    try:
        base = _resolve(layers, names[0], workdir / "base")
        device = pick_device(base["device"])
        result: dict[str, Any] = {"machine": machine_info(device), "config": {}, "algorithms": {}}
        for name in names:
            try:
                result["algorithms"][name] = bench_algorithm(layers, name, opts, workdir, log)
            except Exception as exc:  # one algorithm's problem (even a config error) must not hide the others
                log(f"[{name}] failed: {type(exc).__name__}: {exc}")
                result["algorithms"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                              **{k: None for k in REQUIRED_KEYS}}
        if opts.augment:
            log(f"augmentation at {opts.augment_size} px (batched / per-image torchvision / per-image PIL)")
            result["augment"] = measure_augment(AugmentBenchOptions(image_size=opts.augment_size), str(device))
        runtime = next((r["runtime"] for r in result["algorithms"].values() if r.get("runtime")),
                       {"device": str(device)})
        result["config"] = _config_summary(base, runtime, opts)
        if hasattr(os, "getloadavg"):
            result["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def runtime_settings(trainer) -> dict[str, Any]:
    """What the Trainer actually switched on for this device (read back, not re-derived)."""
    return {"device": str(trainer.device), "amp": None if trainer.amp_dtype is None else str(trainer.amp_dtype),
            "channels_last": bool(trainer.channels_last),
            "compile": trainer.train_model is not trainer.model and hasattr(trainer.train_model, "_orig_mod"),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if trainer.device.type == "cuda" else False,
            "num_workers": trainer.num_workers(), "image_size": trainer.data.bundle.image_size}


def _config_summary(cfg: dict[str, Any], runtime: dict[str, Any], opts: BenchOptions) -> dict[str, Any]:
    keep = ("dataset", "data", "backbone", "batch_size", "mu", "optim", "forward_mode", "num_workers",
            "eval_batch_size", "seed")
    return {**{k: cfg[k] for k in keep}, "num_workers_config": cfg["num_workers"], **runtime,
            "bench": {k: v for k, v in asdict(opts).items() if k != "workdir"},
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


# -- output -----------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the main numbers, plus the worker sweeps and the augmentation timing."""
    from .augment_speed import format_augment
    if "algorithms" not in result:
        return format_augment(result["augment"])
    cols = ["algorithm", "img/step", "raw img/s", "step img/s", "step/raw", "step/raw paired",
            "separate/concat", "loader img/s", "e2e img/s", "e2e/step", "e2e/step paired", "e2e in-step share",
            "eval img/s", "epoch hook s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in result["algorithms"].items():
        if r.get("error"):
            lines.append(f"| {name} | error: {r['error']} |")
            continue
        cells = [name, str(r["images_per_step"]), _fmt(r["raw_img_s"]), _fmt(r["step_img_s"]),
                 _fmt(r["step_over_raw"], 3), _fmt(r.get("step_over_raw_paired"), 3),
                 _fmt(r.get("separate_over_concat"), 3), _fmt(r.get("loader_img_s")), _fmt(r["e2e_img_s"]),
                 _fmt(r["e2e_over_step"], 3), _fmt(r.get("e2e_over_step_paired"), 3),
                 _fmt(r.get("e2e_in_step_fraction"), 3),
                 _fmt(r.get("eval_img_s")), _fmt(r.get("epoch_start_s"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for name, r in result["algorithms"].items():
        for kind, key in (("loader", "loader_workers"), ("e2e", "e2e_workers")):
            data = r.get(key) or {}
            if len(data) > 1:
                parts = []
                for w, v in sorted(data.items(), key=lambda kv: int(kv[0])):
                    if isinstance(v, dict):
                        parts.append(f"{w} workers: {_fmt(v['img_s'])} img/s (e2e/step paired "
                                     f"{_fmt(v.get('over_step_paired'), 3)}, in-step share "
                                     f"{_fmt(v.get('in_step_fraction'), 2)})")
                    else:
                        parts.append(f"{w} workers: {_fmt(v)} img/s")
                notes.append(f"- {name} {kind}: " + ", ".join(parts))
        if r.get("spread"):
            notes.append(f"- {name} repeat spread (max-min)/median: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in r["spread"].items()))
    m, c = result["machine"], result["config"]
    intro = (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, device {m['device']}"
             + (f" ({m['gpu']})" if m.get("gpu") else "")
             + (f", load {m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}" if "load_avg_end" in m else "")
             + f"; {c.get('dataset')} {c.get('backbone', {}).get('name')} B={c.get('batch_size')} mu={c.get('mu')}")
    if m.get("device") == "cpu" and "OMP_WAIT_POLICY" not in m.get("env", {}):
        notes.append("- note: OMP_WAIT_POLICY is not set; on a machine whose cores are busy, torch's spin-waiting "
                     "OpenMP threads can make CPU steps several times slower (see docs/performance.md)")
    tail = ["", format_augment(result["augment"])] if "augment" in result else []
    return "\n".join([intro, "", *lines, *([""] + notes if notes else []), *tail])


# -- command line -----------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sslzoo.flags import add_train_flags
    add_train_flags(p, with_single=False)
    p.add_argument("--dataset", dest="dataset", default=None, help="data set name (default synthfer)")
    p.add_argument("--labels", dest="labels", type=int, default=None, help="number of labeled training images")
    p.add_argument("--seed", dest="seed", type=int, default=None, help="random seed")
    p.add_argument("--algos", default=None, help="comma-separated algorithms (default: every registered one)")
    d = BenchOptions()
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats (median reported)")
    p.add_argument("--iters", type=int, default=d.iters, help="steps per timed repeat")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first")
    p.add_argument("--loader-steps", type=int, default=d.loader_steps, help="batches per loader measurement")
    p.add_argument("--loader-workers", type=_int_list, default=None, metavar="N,N",
                   help="also measure the loader with these worker counts, e.g. 0,1,2")
    p.add_argument("--e2e-steps", type=int, default=d.e2e_steps, help="timed steps of the real training loop")
    p.add_argument("--e2e-warmup", type=int, default=d.e2e_warmup, help="untimed first steps of that loop")
    p.add_argument("--e2e-repeats", type=int, default=d.e2e_repeats,
                   help="real runs (each paired with a pre-filled step timing; medians reported)")
    p.add_argument("--e2e-workers", type=_int_list, default=None, metavar="N,N",
                   help="also run end-to-end with these worker counts, e.g. 0,1,2")
    p.add_argument("--no-loader", action="store_true", help="skip the loader measurement")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--no-eval", action="store_true", help="skip timing evaluation and the per-epoch hook")
    p.add_argument("--no-separate", action="store_true", help="skip forward_mode=separate")
    p.add_argument("--no-augment", action="store_true", help="skip the augmentation timing")
    p.add_argument("--augment-only", action="store_true",
                   help="only time the views at the paper's shape (224 px, B=16, mu=1, Ada-CM's weak, weak, "
                        "strong): batched vs per-image torchvision vs per-image PIL")
    p.add_argument("--augment-size", type=int, default=224, help="image side for the augmentation timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process")
    p.add_argument("--workdir", default=None, help="folder for the end-to-end runs (default: temporary)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        algos=[a.strip() for a in args.algos.split(",") if a.strip()] if args.algos else None,
        repeats=max(1, args.repeats), iters=max(1, args.iters), warmup=max(0, args.warmup),
        compare_forward=not args.no_separate, loader_steps=max(1, args.loader_steps),
        loader_workers=args.loader_workers, e2e_steps=max(1, args.e2e_steps), e2e_warmup=max(1, args.e2e_warmup),
        e2e_repeats=max(1, args.e2e_repeats),
        e2e_workers=args.e2e_workers, loader=not args.no_loader, e2e=not args.no_e2e,
        evaluation=not args.no_eval, threads=args.threads,
        augment=not args.no_augment, augment_only=args.augment_only, augment_size=args.augment_size,
        workdir=args.workdir)


def cmd_throughput(args: argparse.Namespace) -> int:
    from sslzoo.flags import config_layers
    from sslzoo.io import write_json
    layers = config_layers(args)
    result = run_benchmark(layers, options_from_args(args))
    print(format_table(result))
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``sslzoo throughput`` (called by sslzoo.cli)."""
    p = subparsers.add_parser("throughput", help="measure training-step overhead against the raw network",
                              description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=cmd_throughput)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.throughput``: the same command without the ``sslzoo`` prefix."""
    from sslzoo.errors import run_command
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("throughput", lambda: cmd_throughput(args))


if __name__ == "__main__":
    sys.exit(main())
