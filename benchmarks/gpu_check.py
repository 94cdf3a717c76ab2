"""The prepared GPU check: everything about the CUDA path that a CPU cannot show, in one run.

    bash benchmarks/gpu_check.sh [OUT_DIR]          # installs sslzoo (no deps, no network), runs this

Steps (each timed; a failing step is recorded and the next one still runs):
  1. ``pytest -m cuda``: views on the GPU equal the CPU's; steps with no host sync under
     ``torch.cuda.set_sync_debug_mode("error")``; a bf16 + channels_last run.
  2. sync debug mode "error" around steps of fixmatch and adacm at the paper's shape (224 px),
     views built on the GPU from pinned uint8 rows.
  3. ``sslzoo throughput --device cuda`` at the paper's shape (ResNet-18, 224 px, B = 16, mu = 1,
     fixmatch and adacm) with torch.compile off, then on; its "augment" field times the views.
  4. the README's default suite for one epoch on the GPU (pretraining its backbone there first).
It writes OUT_DIR/gpu_check.json (and each step's own output beside it) and prints a summary.
Each step has its own time limit, cut to what is left of a 7.5-minute budget for the whole
check (a step with under 10 s left is recorded as not started), so the script ends within 8.
``GPU_CHECK_DEVICE=cpu`` runs the same steps tiny on the CPU: a dry run of the script itself.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
DRY = DEVICE == "cpu"
BUDGET_S = 450                       # the whole check: 7.5 min, so the script ends within 8 on one GPU
DEADLINE = time.monotonic() + BUDGET_S


def remaining() -> float:
    return DEADLINE - time.monotonic()


def run(cmd: list[str], log: Path, timeout: int) -> dict[str, Any]:
    """Run ``cmd`` for at most ``timeout`` seconds, and never past the check's deadline."""
    limit = min(timeout, remaining())
    if limit < 10:
        raise TimeoutError(f"not started: {remaining():.0f} s of the {BUDGET_S} s budget left")
    tic = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
    tail = log.read_text()[-1500:]
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": round(time.perf_counter() - tic, 1),
            "log": log.name, "tail": tail}


def sync_debug_steps(out: Path) -> dict[str, Any]:
    """A few steps of fixmatch and adacm under set_sync_debug_mode("error") at 224 px."""
    import torch
    from sslzoo.config import resolve
    from sslzoo.meter import EpochMeter
    from sslzoo.trainer import Trainer
    from torch.utils.data._utils.pin_memory import pin_memory
    result: dict[str, Any] = {}
    size, backbone = (32, {"name": "smallcnn"}) if DRY else (224, {"name": "resnet18"})
    for algo in ("fixmatch", "adacm"):
        cfg = resolve([{"algo": algo, "dataset": "digits", "image_size": size, "labels": 40, "batch_size": 16,
                        "mu": 1, "epochs": 1, "iters_per_epoch": 8, "device": DEVICE, "backbone": backbone,
                        "num_workers": 0, "tensorboard": False, "progress": False, "out": str(out / f"sync-{algo}")}])
        trainer = Trainer(cfg, overwrite=True)
        trainer.setup()
        trainer.algorithm.on_epoch_start(trainer.epoch_context(0))
        raws = [pin_memory(trainer.batches[s]) if DEVICE == "cuda" else trainer.batches[s] for s in range(6)]
        meter = EpochMeter()
        for s in range(2):
            trainer.train_step(trainer.to_batch(raws[s]), s, meter)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            tic = time.perf_counter()
            for s in range(2, 6):
                trainer.train_step(trainer.to_batch(raws[s]), s, meter)
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
            result[algo] = {"ok": True, "views_on_device": trainer.views_on_device,
                            "amp": str(trainer.amp_dtype), "steps": 4,
                            "seconds": round(time.perf_counter() - tic, 3),
                            # this process's host peak so far: on CUDA the activations are device memory
                            "host_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
        except Exception as exc:  # noqa: BLE001 - record which call synced
            result[algo] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "where": traceback.format_exc()[-2000:]}
        finally:
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    return result


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "gpu_check_out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SSLZOO_CACHE", str(out / "cache"))
    import torch
    report: dict[str, Any] = {"device": DEVICE, "dry_run": DRY, "python": platform.python_version(),
                              "torch": torch.__version__, "cuda": torch.version.cuda,
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    py = sys.executable
    shape = (["--dataset", "digits", "--image-size", "32", "--backbone", "smallcnn", "--augment-size", "32"] if DRY else
             ["--dataset", "digits", "--image-size", "224", "--backbone", "resnet18"])
    quick = ["--repeats", "3", "--iters", "3", "--warmup", "2", "--e2e-steps", "8", "--e2e-warmup", "3",
             "--e2e-repeats", "1", "--loader-steps", "8", "--no-separate"]
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("cuda_tests", lambda: run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                                    "tests/test_cuda.py"], out / "cuda_tests.log", 120)),
        ("sync_debug", lambda: sync_debug_steps(out)),
        ("throughput_eager", lambda: run([py, "-m", "sslzoo", "throughput", "--device", DEVICE, *shape,
                                          "--batch-size", "16", "--mu", "1", "--algos", "fixmatch,adacm", *quick,
                                          "--set", "compile=false", "--json", str(out / "throughput_eager.json")],
                                         out / "throughput_eager.log", 150)),
        ("throughput_compiled", lambda: run([py, "-m", "sslzoo", "throughput", "--device", DEVICE, *shape,
                                             "--batch-size", "16", "--mu", "1", "--algos", "fixmatch", *quick,
                                             "--no-augment", "--no-e2e", "--no-loader", "--no-eval",
                                             "--set", "compile=true", "--json", str(out / "throughput_compiled.json")],
                                            out / "throughput_compiled.log", 150)),
        ("default_suite_1_epoch", lambda: run([py, "-m", "sslzoo", "bench", "--suite", "default", "--epochs", "1",
                                               "--device", DEVICE, "--jobs", "1", "--no-plots", "--no-progress",
                                               *(["--iters-per-epoch", "5", "--seeds", "1",
                                                  "--set", "backbone.pretrained=null"] if DRY else []),
                                               "--out", str(out / "default_suite")],
                                              out / "default_suite.log", 240)),
    ]
    for name, step in steps:
        print(f"[gpu_check] {name} ...", flush=True)
        tic = time.perf_counter()
        try:
            report["steps"][name] = step()
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others
            report["steps"][name] = {"error": f"{type(exc).__name__}: {exc}", "where": traceback.format_exc()[-2000:]}
        report["steps"][name]["wall_s"] = round(time.perf_counter() - tic, 1) if isinstance(report["steps"][name], dict) else None
        print(f"[gpu_check] {name}: {json.dumps(report['steps'][name])[:400]}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))   # partial results survive
    for name in ("throughput_eager", "throughput_compiled"):
        path = out / f"{name}.json"
        if path.is_file():
            report[name] = json.loads(path.read_text())
    table = out / "default_suite" / "table.md"
    if table.is_file():
        report["default_suite_table"] = table.read_text()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[gpu_check] wrote {out / 'gpu_check.json'}", flush=True)
    failed = [n for n, s in report["steps"].items() if s.get("error") or s.get("returncode", 0) != 0
              or any(isinstance(v, dict) and v.get("ok") is False for v in s.values())]
    print(f"[gpu_check] {'all steps passed' if not failed else 'FAILED: ' + ', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
