"""The shared training loop: device, AMP, EMA, checkpoints, evaluation, logging.

It knows no algorithm by name: it builds batches with the views the algorithm
declares, sums the named loss terms the algorithm returns, and logs its stats.
"""
from __future__ import annotations

import math
import os
import platform
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from . import __version__, checkpoint
from .algorithm import Batch, EpochContext, SSLAlgorithm, StepContext
from .config import config_hash
from .data.pipeline import BatchPlan, StepBatches, augment_config, derive_seed, step_loader, view_batches
from .data.prepare import RunData, prepare
from .data.views import Views, normalize_batch
from .distributed import DistContext, init_from_env
from .ema import ModelEMA
from .errors import DivergedError, SSLZooError
from .evaluation import classification_metrics, predict
from .io import write_json, write_text
from .models import build_backbone
from .optim import build_optimizer, build_schedule
from .policies import build_policy
from .registry import ALGORITHMS

MARGIN_STREAM = 7


def pick_device(name: str, dist: DistContext | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SSLZooError(f"--device {name} was requested but CUDA is not available here; use --device cpu.")
        if name == "cuda" and dist is not None and dist.enabled:
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_algorithm(cfg: dict[str, Any], num_classes: int) -> SSLAlgorithm:
    cls = ALGORITHMS.get(cfg["algo"])
    policy = None
    if cls.uses_policy:
        policy = build_policy(cfg["policy"] or cls.default_policy, cfg.get("policy_args") or {})
    elif cfg.get("policy"):
        raise SSLZooError(f"Algorithm '{cfg['algo']}' takes no threshold policy, but policy="
                          f"'{cfg['policy']}' was set.")
    return cls(num_classes, policy, **cfg.get(cfg["algo"], {}))


def package_versions() -> dict[str, str]:
    import torchvision
    return {"sslzoo": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


class EpochMeter:
    """Running sums of one epoch's loss terms and statistics (saved in mid-epoch checkpoints)."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.counts: dict[str, int] = dict((state or {}).get("counts", {}))
        self.images = int((state or {}).get("images", 0))
        self.seconds = float((state or {}).get("seconds", 0.0))

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> float | None:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else None

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "images": self.images, "seconds": self.seconds}


class Trainer:
    def __init__(self, cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.resume = resume
        self.dist = init_from_env("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu" else "cpu")
        self.device = pick_device(cfg["device"], self.dist)
        self._check_out_dir(overwrite)
        self._stop_signal: int | None = None

    # -- setup ----------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> None:
        metrics = self.out / "metrics.json"
        if self.resume or overwrite or not metrics.exists():
            if self.dist.is_main:
                try:
                    self.out.mkdir(parents=True, exist_ok=True)
                    probe = self.out / ".write-test"
                    probe.write_text("")
                    probe.unlink()
                except OSError as exc:
                    raise SSLZooError(f"Cannot write to the output folder '{self.out}': {exc.strerror}. "
                                      f"Choose a writable --out.") from None
            return
        raise SSLZooError(f"'{self.out}' already holds a run (metrics.json exists). Use --resume to continue "
                          f"it, --overwrite to replace it, or choose another --out.")

    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg["seed"])
        self.data: RunData = prepare(cfg)
        self.num_classes = len(self.data.classes)
        size = self.data.bundle.image_size
        self.views = Views(size, augment_config(cfg["augment"]))
        self.algorithm = build_algorithm(cfg, self.num_classes)
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if cfg["channels_last"] == "auto" else bool(cfg["channels_last"])
        model = build_backbone(cfg["backbone"], self.num_classes, size).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.extra = self.algorithm.extra_modules().to(self.device)
        self.ema = ModelEMA(model, cfg["ema"]["decay"], cfg["ema"]["warmup"])
        self.optimizer = build_optimizer(list(model.parameters()) + list(self.extra.parameters()), cfg["optim"])
        self.total_steps = cfg["epochs"] * cfg["iters_per_epoch"]
        self.scheduler = build_schedule(self.optimizer, cfg["schedule"], self.total_steps)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.train_model: nn.Module = model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if cuda else None)
        if cfg["compile"] and cuda:
            self.train_model = torch.compile(self.train_model)
        unlabeled = self.data.unlabeled if self.algorithm.unlabeled_views else None
        self.algorithm.setup(len(self.data.unlabeled), self.device)
        plan = BatchPlan(cfg["batch_size"], cfg["mu"], cfg["iters_per_epoch"], self.dist.world_size, self.dist.rank)
        self.batches = StepBatches(self.data.labeled, unlabeled, plan, cfg["seed"], self.algorithm.labeled_view,
                                   self.algorithm.unlabeled_views, self.views)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg["amp"]
        if self.device.type != "cuda" or amp in (False, "off", "none"):
            return None
        if amp in ("auto", "bf16", True):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16

    def _num_workers(self) -> int:
        n = int(self.cfg["num_workers"])
        if n >= 0:
            return n
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, min(4, cores // max(1, self.dist.world_size) - 1))

    def _prepare(self, x: Tensor) -> Tensor:
        return normalize_batch(x, self.device, self.channels_last)

    def _to_batch(self, raw: dict[str, Any]) -> Batch:
        d = self.device
        return Batch(self._prepare(raw["x_l"]), raw["y_l"].to(d, non_blocking=True),
                     [self._prepare(v) for v in raw["u_views"]], raw["u_index"].to(d, non_blocking=True),
                     raw["u_true"].to(d, non_blocking=True))

    # -- evaluation -------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def evaluate(self, images, model: nn.Module | None = None) -> dict[str, Any]:
        """Metrics of the evaluation (EMA) model on a split, sharded over ranks and gathered."""
        model = model or self.ema.module
        shard = images.subset(np.arange(self.dist.rank, len(images), self.dist.world_size)) \
            if self.dist.enabled else images
        with self._autocast():
            probs, labels, _ = predict(model, view_batches(shard, self.views, "plain", 0,
                                                           self.cfg["eval_batch_size"]), self._prepare)
        probs, labels = self.dist.gather_uneven(probs.to(self.device)), self.dist.gather_uneven(labels.to(self.device))
        return classification_metrics(probs, labels, self.num_classes)

    def labeled_predictions(self, epoch: int):
        """Closure for policies: evaluation-model predictions over the whole labeled set (every rank)."""
        def compute(view: str) -> tuple[Tensor, Tensor]:
            seed = derive_seed(self.cfg["seed"], MARGIN_STREAM, epoch)
            with self._autocast():
                probs, labels, _ = predict(self.ema.module, view_batches(self.data.labeled, self.views, view, seed,
                                                                         self.cfg["eval_batch_size"]), self._prepare)
            return probs.to(self.device), labels.to(self.device)
        return compute

    # -- checkpoints --------------------------------------------------------------------
    def _checkpoint_payload(self, step: int, meter: EpochMeter) -> dict[str, Any]:
        return {
            "step": step, "config_hash": config_hash(self.cfg),
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "algorithm": self.algorithm.state_dict(),
            "rng": checkpoint.rng_state(), "meter": meter.state(), "history": self.history,
        }

    def _save_checkpoint(self, step: int, meter: EpochMeter) -> None:
        if self.dist.is_main:
            checkpoint.save(self.out / "checkpoint.pt", self._checkpoint_payload(step, meter))

    def _restore(self) -> tuple[int, EpochMeter]:
        ckpt = checkpoint.load(self.out / "checkpoint.pt")
        if ckpt["config_hash"] != config_hash(self.cfg):
            raise SSLZooError(f"The checkpoint in '{self.out}' was made with a different configuration than "
                              f"the one given now; resume with the same settings (see {self.out}/config.yaml).")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.algorithm.load_state_dict(ckpt["algorithm"])
        checkpoint.set_rng_state(ckpt["rng"])
        self.history = list(ckpt["history"])
        return int(ckpt["step"]), EpochMeter(ckpt["meter"])

    # -- outputs ------------------------------------------------------------------------
    def _metrics(self, status: str, error: dict | None = None) -> dict[str, Any]:
        h = self.history
        accs = [e["test_acc"] for e in h]
        best = int(np.argmax(accs)) if accs else None
        vals = [e.get("val_acc") for e in h]
        val_best = int(np.nanargmax([np.nan if v is None else v for v in vals])) \
            if any(v is not None for v in vals) else None
        seconds = sum(e["time_s"] for e in h)
        images = sum(e["images"] for e in h)
        return {
            "status": status, "error": error,
            "algorithm": self.cfg["algo"], "policy": self._policy_name(), "dataset": self.cfg["dataset"],
            "test_dataset": self.data.test_name, "labels": self.cfg["labels"], "seed": self.cfg["seed"],
            "classes": list(self.data.classes), "epochs_done": len(h), "epochs": self.cfg["epochs"],
            "final_acc": accs[-1] if accs else None,
            "best_acc": accs[best] if best is not None else None,
            "best_test_acc": accs[best] if best is not None else None,
            "best_epoch": h[best]["epoch"] if best is not None else None,
            "val_selected_acc": accs[val_best] if val_best is not None else None,
            "val_selected_epoch": h[val_best]["epoch"] if val_best is not None else None,
            "final_mean_class_acc": h[-1]["test_mean_class_acc"] if h else None,
            "final_per_class_acc": h[-1]["test_per_class_acc"] if h else None,
            "wall_time_s": seconds, "img_per_s": images / seconds if seconds else None,
            "config_hash": config_hash(self.cfg), "versions": package_versions(),
            "world_size": self.dist.world_size, "device": str(self.device),
            "history": h,
        }

    def _policy_name(self) -> str | None:
        p = self.algorithm.policy
        if p is None:
            return None
        spec = self.cfg["policy"] or type(self.algorithm).default_policy
        return spec if isinstance(spec, str) else p.name

    def _write_metrics(self, status: str, error: dict | None = None) -> dict[str, Any]:
        metrics = self._metrics(status, error)
        if self.dist.is_main:
            write_json(self.out / "metrics.json", metrics)
        return metrics

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
        write_json(self.out / "split.json", {
            "seed": self.cfg["seed"], "labels": self.cfg["labels"], "protocol": self.cfg["split"],
            **self.data.split.as_json(self.data.bundle.train.ids),
            "unlabeled_extra": self.cfg["unlabeled_extra"], "test": self.data.test_name})

    # -- the loop -------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def fit(self) -> dict[str, Any]:
        self._setup()
        self.history: list[dict[str, Any]] = []
        start_step, meter = 0, EpochMeter()
        if self.resume and (self.out / "checkpoint.pt").exists():
            start_step, meter = self._restore()
        self._write_run_files()
        writer = self._tensorboard()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if _main_thread() else {}
        cfg, iters = self.cfg, self.cfg["iters_per_epoch"]
        try:
            if start_step >= self.total_steps:
                return self._write_metrics("finished")
            self._write_metrics("running")
            loader = iter(step_loader(self.batches, start_step, self.total_steps, self._num_workers(),
                                      self.device.type == "cuda"))
            bar = None
            for step in range(start_step, self.total_steps):
                epoch, it = divmod(step, iters)
                if it == 0 or bar is None:
                    if it == 0:
                        self.algorithm.on_epoch_start(EpochContext(epoch, cfg["epochs"], self.num_classes, self.dist,
                                                                   self.labeled_predictions(epoch)))
                        meter = EpochMeter()
                    bar = self._bar(epoch, it)
                tic = time.perf_counter()
                batch = self._to_batch(next(loader))
                self._train_step(batch, epoch, it, step, meter)
                meter.seconds += time.perf_counter() - tic
                if bar is not None:
                    bar.update(1)
                    if it % 10 == 0 or it == iters - 1:
                        bar.set_postfix_str(self._postfix(meter), refresh=False)
                if self._stop_signal is not None:
                    self._save_checkpoint(step + 1, meter)
                    self._write_metrics("interrupted")
                    raise KeyboardInterrupt(f"stopped by signal {self._stop_signal}; checkpoint saved at step {step + 1}")
                if it == iters - 1:
                    if bar is not None:
                        bar.close()
                        bar = None
                    self._end_epoch(epoch, meter, writer)
                    self._save_checkpoint(step + 1, EpochMeter())
                    self._write_metrics("running" if step + 1 < self.total_steps else "finished")
            return self._metrics("finished")
        except DivergedError as exc:
            self._write_metrics("diverged", {"message": str(exc), "epoch": exc.epoch + 1,
                                             "iteration": exc.iteration + 1, "term": exc.term})
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()

    def _train_step(self, batch: Batch, epoch: int, it: int, step: int, meter: EpochMeter) -> None:
        ctx = StepContext(epoch, it, step, self.total_steps, self.cfg["iters_per_epoch"], self.num_classes,
                          self.dist, self.train_model, self.ema.module, self.cfg["forward_mode"])
        self.train_model.train()
        with self._autocast():
            out = self.algorithm.step(self.train_model, batch, ctx)
        terms = {k: v.float() for k, v in out.losses.items()}
        total = torch.stack(list(terms.values())).sum()
        values = torch.stack([total, *terms.values()]).detach().cpu().tolist()
        if not all(math.isfinite(v) for v in values):
            bad = next((k for k, v in zip(["total", *terms], values) if not math.isfinite(v)), "total")
            raise DivergedError(f"The '{bad}' loss became non-finite at epoch {epoch + 1}, iteration {it + 1}. "
                                f"Lower the learning rate (optim.lr) or check the data.",
                                epoch=epoch, iteration=it, term=bad)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        meter.add("loss/total", values[0])
        for name, v in zip(terms, values[1:]):
            meter.add(f"loss/{name}", v)
        for name, v in out.stats.items():
            meter.add(name, float(v))
        meter.images += batch.num_labeled + sum(v.shape[0] for v in batch.u_views)

    def _end_epoch(self, epoch: int, meter: EpochMeter, writer) -> None:
        test = self.evaluate(self.data.test)
        val = self.evaluate(self.data.val) if self.data.val is not None else None
        thresholds = self.algorithm.policy.thresholds() if self.algorithm.policy is not None else None
        entry = {
            "epoch": epoch + 1,
            "test_acc": test["acc"], "test_mean_class_acc": test["mean_class_acc"],
            "test_per_class_acc": test["per_class_acc"], "confusion": test["confusion"],
            "val_acc": val["acc"] if val else None,
            "losses": {k.split("/", 1)[1]: meter.mean(k) for k in meter.sums if k.startswith("loss/")},
            "mask_ratio": meter.mean("mask_ratio"), "pseudo_label_acc": meter.mean("pseudo_label_acc"),
            "thresholds": None if thresholds is None else [float(t) for t in thresholds.tolist()],
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": meter.seconds, "images": meter.images,
            "img_per_s": meter.images / meter.seconds if meter.seconds else None,
        }
        if self.algorithm.policy is not None:
            entry.update(self.algorithm.policy.extra_stats())
        self.history.append(entry)
        if writer is not None:
            writer.add_scalar("test/acc", entry["test_acc"], epoch + 1)
            writer.add_scalar("test/mean_class_acc", entry["test_mean_class_acc"], epoch + 1)
            if entry["val_acc"] is not None:
                writer.add_scalar("val/acc", entry["val_acc"], epoch + 1)
            for k, v in entry["losses"].items():
                writer.add_scalar(f"loss/{k}", v, epoch + 1)
            for k in ("mask_ratio", "pseudo_label_acc", "img_per_s"):
                if entry[k] is not None:
                    writer.add_scalar(f"train/{k}", entry[k], epoch + 1)
            for c, t in enumerate(entry["thresholds"] or []):
                writer.add_scalar(f"threshold/{self.data.classes[c]}", t, epoch + 1)
            writer.flush()
        if self.dist.is_main and self.cfg["progress"]:
            print(f"epoch {epoch + 1}/{self.cfg['epochs']}: test acc {entry['test_acc']:.2f}%"
                  + (f", val acc {entry['val_acc']:.2f}%" if entry["val_acc"] is not None else "")
                  + (f", mask {entry['mask_ratio']:.2f}" if entry["mask_ratio"] is not None else ""),
                  file=sys.stderr, flush=True)

    def _tensorboard(self):
        if not (self.cfg["tensorboard"] and self.dist.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(log_dir=str(self.out / "tb"))

    def _bar(self, epoch: int, it: int):
        if not (self.cfg["progress"] and self.dist.is_main):
            return None
        from tqdm import tqdm
        return tqdm(total=self.cfg["iters_per_epoch"], initial=it, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                    unit="it", leave=False, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    @staticmethod
    def _postfix(meter: EpochMeter) -> str:
        parts = [f"{k.split('/', 1)[1]}={meter.mean(k):.3f}" for k in meter.sums if k.startswith("loss/")]
        if meter.mean("mask_ratio") is not None:
            parts.append(f"mask={meter.mean('mask_ratio'):.2f}")
        if meter.seconds:
            parts.append(f"{meter.images / meter.seconds:.0f} img/s")
        return " ".join(parts)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def train(cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()
