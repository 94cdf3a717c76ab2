"""Peak memory of a short ``sslzoo train`` on a data set whose decoded cache is over 4 GB.

    python -m benchmarks.rss_check [--images 27000] [--batch-size 16] [--amp off|bf16]
                                   [--backbone smallcnn|resnet18] [--json PATH]

The data set, ``faces224``, is synthfer_faces (200 identities) drawn at 32 px and enlarged
7x (nearest) to 224 px, written chunk by chunk into a decode-cache entry: 27,000 images =
4.06 GB of uint8 on disk (rendering 27,000 faces at 224 px directly would take an hour).
It registers itself as a plugin, so the run reads it exactly as it reads RAF-DB or AffectNet:
a memory-mapped ``images.npy``, a split of row indices, rows gathered per batch.

Three measurements, same run (fixmatch, smallcnn of width 16 -- at 224 px its first convolution
has stride 2 -- or ``--backbone resnet18``, 400 labels, 1 epoch of 3 steps,
B = 16 by default, mu = 1, evaluation of the 2,000 test images in chunks of 64 at the end):
  * ``sslzoo train`` with one loader worker, /proc sampled every 50 ms: the peak resident set of
    the training process (VmHWM) and the peak sum over it and its worker;
  * the same run driven stage by stage in one process (no worker), with the resident set after
    each stage: what importing torch, preparing the data, building the model, the training
    steps and the evaluation each add. The data's share is the "prepare" and "setup" lines;
  * the reference point: the backbone alone, forward + backward on a random batch of the step's
    shape in a fresh process (no trainer, no data): what the network itself needs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sslzoo.data.base import DataBundle, ImageSet
from sslzoo.data.cache import allocate, get_or_build, make_key
from sslzoo.registry import DATASETS, register_dataset

SIDE, SCALE = 224, 7
N_TEST = 2000


def _build(n: int):
    def build(tmp: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
        from sslzoo.data.synthfaces import SynthFacesOptions, load_arrays
        small, _ = load_arrays(SynthFacesOptions(n_train=n - N_TEST, n_test=N_TEST, image_size=SIDE // SCALE))
        images = allocate(tmp, "images.npy", (n, SIDE, SIDE, 3))
        sources = [small["train_images"], small["test_images"]]
        row = 0
        for src in sources:
            for start in range(0, len(src), 500):
                part = np.asarray(src[start:start + 500])
                images[row:row + len(part)] = part.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
                row += len(part)
        labels = np.concatenate([small["train_labels"], small["test_labels"]])
        meta = {"loader": "faces224", "generated": True, "root": None, "image_size": SIDE,
                "labels": labels.tolist(), "ids": [f"faces224/{i:06d}" for i in range(n)],
                "ranges": {"train": [0, n - N_TEST], "test": [n - N_TEST, n]},
                "key_options": {"loader": "faces224", "n": n}}
        return images, meta
    return build


def _images() -> int:
    return int(os.environ.get("SSLZOO_RSS_IMAGES", "27000"))


if "faces224" not in DATASETS._items:
    @register_dataset("faces224")
    def faces224(*, root: str | None = None, image_size: int = SIDE, **options: Any) -> DataBundle:
        """synthfer_faces enlarged to 224 px (benchmarks/rss_check.py): a decode cache over 4 GB."""
        n = _images()
        entry = get_or_build(make_key("faces224", SIDE, f"n{n}x{SCALE}"), _build(n))
        labels = np.asarray(entry.meta["labels"], dtype=np.int64)
        classes = tuple(f"person{i:03d}" for i in range(200))
        train = ImageSet(entry.images[:n - N_TEST], labels[:n - N_TEST], entry.meta["ids"][:n - N_TEST])
        test = ImageSet(entry.images[n - N_TEST:], labels[n - N_TEST:], entry.meta["ids"][n - N_TEST:])
        return DataBundle(name="faces224", classes=classes, train=train, test=test,
                          info={"cache_dir": str(entry.path), "bytes": int(entry.images.nbytes)})


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _proc_kb(pid: int, name: str, field: str) -> int:
    """The kB value of ``field`` in /proc/PID/NAME (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _status_kb(pid: int, field: str) -> int:
    return _proc_kb(pid, "status", field)


BACKBONES = {"smallcnn": {"name": "smallcnn", "width": 16}, "resnet18": {"name": "resnet18"}}


def run_settings(batch_size: int = 16, amp: str = "off", backbone: str = "smallcnn") -> dict[str, Any]:
    """The measured run's config (one place: the CLI run and the in-process probe both use it)."""
    return {"dataset": "faces224", "algo": "fixmatch", "labels": 400, "epochs": 1, "iters_per_epoch": 3,
            "batch_size": batch_size, "mu": 1, "eval_batch_size": 64, "tensorboard": False, "progress": False,
            "backbone": dict(BACKBONES[backbone]), "amp": amp}


def _flags(run: dict[str, Any]) -> list[str]:
    """``run_settings()`` as ``sslzoo train`` flags."""
    width = ["--set", f"backbone.width={run['backbone']['width']}"] if "width" in run["backbone"] else []
    return ["--dataset", run["dataset"], "--algo", run["algo"], "--labels", str(run["labels"]),
            "--epochs", str(run["epochs"]), "--iters-per-epoch", str(run["iters_per_epoch"]),
            "--batch-size", str(run["batch_size"]), "--mu", str(run["mu"]), "--backbone", run["backbone"]["name"],
            "--set", f"eval_batch_size={run['eval_batch_size']}", "--set", "tensorboard=false", *width,
            "--set", f"amp={run['amp']}", "--set", f"progress={str(run['progress']).lower()}"]


def _rss() -> dict[str, float]:
    """This process's resident set now and at its peak, and its anonymous / file-backed parts (GB)."""
    fields = {k: _status_kb(os.getpid(), k) / 2 ** 20 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
    return {k: round(v, 3) for k, v in fields.items()}


def stages(out: Path, run: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """Resident memory after each stage of the run, driven in this process (no loader worker)."""
    report = [("python started", _rss())]
    import torch  # noqa: F401

    from sslzoo.config import resolve
    from sslzoo.data.prepare import prepare
    from sslzoo.meter import EpochMeter
    from sslzoo.trainer import Trainer
    report.append(("torch and sslzoo imported", _rss()))
    cfg = resolve([{**run, "num_workers": 0, "out": str(out)}])
    prepare(cfg)
    report.append(("data prepared (split of a 4 GB cache)", _rss()))
    trainer = Trainer(cfg, overwrite=True)
    trainer.setup()
    report.append(("trainer set up (model, optimizer, data stream)", _rss()))
    trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
    meter = EpochMeter()
    for step in range(3):
        trainer.train_step(trainer.batch(step), step, meter)
    b = run["batch_size"]
    report.append((f"3 training steps (B = {b} + 2 x {b} views, 224 px)", _rss()))
    trainer.evaluate(trainer.data.test)
    report.append(("2,000 test images evaluated", _rss()))
    return report


def bare_step(run: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """The reference point: the same backbone's forward + backward on a random batch of the step's
    shape (B labeled + 2 x B unlabeled views, 224 px), no trainer, no data; resident memory after each."""
    import torch

    from sslzoo.models.build import build_backbone
    report = [("torch imported", _rss())]
    model = build_backbone(run["backbone"], 200, SIDE)
    x = torch.randn(3 * run["batch_size"], 3, SIDE, SIDE)
    report.append(("backbone and a random float batch", _rss()))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run["amp"] == "bf16"):
        logits, _ = model(x)
    logits.float().sum().backward()
    report.append(("forward + backward", _rss()))
    return report


def _pss_kb(pid: int) -> int:
    """Proportional set size: pages shared between the trainer and its forked workers counted once."""
    return _proc_kb(pid, "smaps_rollup", "Pss")


def measure(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sslzoo", "train", "--plugin", str(Path(__file__).resolve()),
           *_flags(run), "--num-workers", "1", "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    main_hwm = tree_peak = file_at_peak = anon_at_peak = pss_peak = 0
    while proc.poll() is None:
        main_hwm = max(main_hwm, _status_kb(proc.pid, "VmHWM"))
        pids = _tree(proc.pid)
        total = sum(_status_kb(p, "VmRSS") for p in pids)
        pss_peak = max(pss_peak, sum(_pss_kb(p) for p in pids))
        if total > tree_peak:
            tree_peak = total
            file_at_peak = sum(_status_kb(p, "RssFile") for p in pids)
            anon_at_peak = sum(_status_kb(p, "RssAnon") for p in pids)
        time.sleep(0.05)
    log = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"the training run failed (exit {proc.returncode}):\n{log[-3000:]}")
    return {"main_peak_rss_gb": main_hwm / 2 ** 20, "tree_peak_rss_gb": tree_peak / 2 ** 20,
            "tree_peak_pss_gb": pss_peak / 2 ** 20,
            "tree_peak_file_backed_gb": file_at_peak / 2 ** 20, "tree_peak_anonymous_gb": anon_at_peak / 2 ** 20,
            "command": " ".join(cmd[2:]), "final_line": log.strip().splitlines()[-1] if log.strip() else ""}


def _probe(flag: str, args: argparse.Namespace) -> Any:
    """One of the in-process measurements, in a fresh interpreter (its peak is its own)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.rss_check", flag, "--images", str(args.images),
                          "--batch-size", str(args.batch_size), "--amp", args.amp, "--backbone", args.backbone],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=27000, help="images in the data set (27,000 = 4.06 GB)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="labeled batch B (the step sees B labeled + 2 x B unlabeled views; mu = 1)")
    p.add_argument("--amp", default="off", choices=("off", "bf16"),
                   help="autocast of the run (off: float32, the CPU default; bf16: the CUDA default)")
    p.add_argument("--backbone", default="smallcnn", choices=sorted(BACKBONES),
                   help="smallcnn of width 16 (default) or resnet18, the paper's network")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--stages-only", action="store_true", help=argparse.SUPPRESS)   # the in-process probe
    p.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)     # the network alone
    args = p.parse_args()
    os.environ["SSLZOO_RSS_IMAGES"] = str(args.images)
    run = run_settings(args.batch_size, args.amp, args.backbone)
    if args.bare_only:
        os.environ["OMP_NUM_THREADS"] = "1"
        print(json.dumps(bare_step(run)))
        return 0
    if args.stages_only:
        os.environ["OMP_NUM_THREADS"] = "1"
        with tempfile.TemporaryDirectory(prefix="sslzoo-rss-") as tmp:
            print(json.dumps(stages(Path(tmp) / "run", run)))
        return 0
    tic = time.perf_counter()
    bundle = DATASETS.get("faces224")()
    built_s = time.perf_counter() - tic
    size_gb = bundle.info["bytes"] / 1e9
    print(f"faces224: {len(bundle.train) + len(bundle.test)} images at {SIDE} px, decode cache "
          f"{size_gb:.2f} GB at {bundle.info['cache_dir']} (ready in {built_s:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sslzoo-rss-") as tmp:
        result = measure(Path(tmp) / "run", run)
    result["stages"] = _probe("--stages-only", args)
    result["bare_network_step"] = _probe("--bare-only", args)
    result.update(cache_gb=size_gb, images=args.images, batch_size=args.batch_size, amp=args.amp,
                  backbone=run["backbone"])
    print("resident memory after each stage, one process (GB: now / peak so far / anonymous / mapped files):")
    for name, r in result["stages"]:
        print(f"  {name:<50} {r['VmRSS']:.2f} / {r['VmHWM']:.2f} / {r['RssAnon']:.2f} / {r['RssFile']:.2f}")
    print("the backbone alone on a random batch of the step's shape (GB: now / peak so far):")
    for name, r in result["bare_network_step"]:
        print(f"  {name:<50} {r['VmRSS']:.2f} / {r['VmHWM']:.2f}")
    print(f"peak RSS of the training process: {result['main_peak_rss_gb']:.2f} GB; of it and its loader "
          f"workers together: {result['tree_peak_rss_gb']:.2f} GB ({result['tree_peak_file_backed_gb']:.2f} GB "
          f"mapped file pages, {result['tree_peak_anonymous_gb']:.2f} GB anonymous; proportional set size, "
          f"shared pages counted once: {result['tree_peak_pss_gb']:.2f} GB), on a {size_gb:.2f} GB cache")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
