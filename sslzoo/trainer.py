"""The shared training loop: device, AMP, EMA, checkpoints, evaluation, logging.

It knows no algorithm by name: it builds batches with the views the algorithm
declares, sums the named loss terms the algorithm returns, and logs its stats.

Reliability (docs/reliability.md): a checkpoint after every epoch and on
SIGTERM/SIGINT holds everything needed to continue bit-exactly; every output is
written atomically; a non-finite loss stops the run as "diverged". Under DDP
every rank takes the same decisions (stop, diverge) from all-reduced values, and
only rank 0 writes files.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
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
from torch.nn.parameter import is_lazy

from . import __version__, checkpoint
from .algorithm import Batch, EpochContext, SSLAlgorithm, StepContext
from .config import config_hash
from .data.pipeline import BatchPlan, StepBatches, augment_config, derive_seed, step_loader, view_batches
from .data.prepare import RunData, prepare
from .data.views import Views, normalize_batch
from .distributed import DistContext, init_from_env, shutdown
from .ema import ModelEMA
from .errors import DivergedError, SSLZooError
from .evaluation import classification_metrics, predict
from .io import write_json, write_text
from .models import build_backbone
from .optim import build_optimizer, build_schedule
from .policies import build_policy, parse_policy_spec
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
        spec = cfg["policy"] or cls.default_policy
        name, spec_params = parse_policy_spec(spec)
        # precedence: policies.<name> section < "name:value" spec < policy_args
        params = {**(cfg.get("policies") or {}).get(name, {}), **spec_params, **(cfg.get("policy_args") or {})}
        try:
            policy = build_policy({"name": name, **params})
        except (ValueError, TypeError) as exc:   # a constructor rejecting a value: the user's input
            raise SSLZooError(f"Threshold policy {spec!r} rejected its settings: {exc}") from exc
    elif cfg.get("policy"):
        raise SSLZooError(f"Algorithm '{cfg['algo']}' takes no threshold policy, but policy="
                          f"'{cfg['policy']}' was set.")
    try:
        return cls(num_classes, policy, **cfg.get(cfg["algo"], {}))
    except (ValueError, TypeError) as exc:
        raise SSLZooError(f"Algorithm '{cfg['algo']}' rejected its settings ({cfg['algo']}.*): {exc}") from exc


def _flag(value: Any, key: str) -> bool | None:
    """A config switch given as a bool or a word; None for "auto"."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word == "auto":
        return None
    if word in ("true", "on", "yes", "1"):
        return True
    if word in ("false", "off", "no", "0", "none"):
        return False
    raise SSLZooError(f"Config key '{key}' must be auto, true or false; got {value!r}.")


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
    """One run. ``stop_after_epoch=k`` checkpoints and returns after epoch k (status
    "interrupted"); a later ``resume=True`` with the same config continues exactly."""

    def __init__(self, cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
                 stop_after_epoch: int | None = None):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.resume, self.overwrite = resume, overwrite
        if stop_after_epoch is not None and stop_after_epoch < 1:
            raise SSLZooError(f"--stop-after-epoch must be at least 1; got {stop_after_epoch}.")
        self.stop_after_epoch = stop_after_epoch
        self.dist = init_from_env("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu" else "cpu")
        self.device = pick_device(cfg["device"], self.dist)
        if self.dist.enabled and self.device.type == "cuda" and self.device.index != self.dist.local_rank:
            raise SSLZooError(f"With several processes use --device cuda (or auto): each process takes the "
                              f"GPU of its local rank; got --device {cfg['device']}.")
        self._check_out_dir(overwrite)
        self._stop_signal: int | None = None

    # -- setup ----------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> None:
        """Refuse to touch a finished run unless asked; check the folder is writable (rank 0 decides)."""
        problem = self._out_dir_problem(overwrite) if self.dist.is_main else None
        problem = self.dist.broadcast_object(problem)
        if problem:
            raise SSLZooError(problem)

    def _out_dir_problem(self, overwrite: bool) -> str | None:
        metrics = self.out / "metrics.json"
        if not (self.resume or overwrite or not metrics.exists()):
            return (f"'{self.out}' already holds a run (metrics.json exists). Use --resume to continue "
                    f"it, --overwrite to replace it, or choose another --out.")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            return (f"Cannot write to the output folder '{self.out}': {exc.strerror or exc}. "
                    f"Choose a writable --out.")
        return None

    def _prepare_data(self) -> RunData:
        """Load the data; under DDP rank 0 goes first (it fills the decode cache the others then read)."""
        if not self.dist.enabled:
            return prepare(self.cfg)
        data, problem = None, None
        if self.dist.is_main:
            try:
                data = prepare(self.cfg)
            except SSLZooError as exc:
                problem = str(exc)
            except BaseException as exc:
                self.dist.broadcast_object(f"rank 0 failed while loading the data ({type(exc).__name__}).")
                raise
        problem = self.dist.broadcast_object(problem)
        if problem:
            raise SSLZooError(problem)
        return data if data is not None else prepare(self.cfg)

    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg["seed"])
        self.data: RunData = self._prepare_data()
        self.num_classes = len(self.data.classes)
        size = self.data.bundle.image_size
        self.views = Views(size, augment_config(cfg["augment"]))
        self.algorithm = build_algorithm(cfg, self.num_classes)
        if self.algorithm.unlabeled_views and len(self.data.unlabeled) == 0:
            raise SSLZooError(
                f"'{cfg['algo']}' learns from unlabeled images, but none are left: --labels "
                f"{cfg['labels']} labels all {len(self.data.labeled)} training images of '{cfg['dataset']}' "
                f"that are not held out. Ask for fewer labels, add unlabeled data (--unlabeled-extra), "
                f"or train with --algo supervised.")
        cuda = self.device.type == "cuda"
        channels_last = _flag(cfg["channels_last"], "channels_last")
        self.channels_last = cuda if channels_last is None else channels_last
        model = build_backbone(cfg["backbone"], self.num_classes, size).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.algorithm.bind_backbone(getattr(model, "feature_dim", None))
        self.extra = self.algorithm.extra_modules().to(self.device)
        self.amp_dtype = self._amp_dtype()
        self.train_model: nn.Module = model
        if self.dist.enabled:   # DDP averages the backbone's gradients (and starts from rank 0's weights)
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if cuda else None)
            self.dist.broadcast_([t for t in (*self.extra.parameters(), *self.extra.buffers())
                                  if not is_lazy(t)])   # lazy heads are made on first use, from the same RNG
        self.ema = ModelEMA(model, cfg["ema"]["decay"], cfg["ema"]["warmup"])   # after DDP's broadcast
        self.optimizer = build_optimizer(list(model.parameters()) + list(self.extra.parameters()), cfg["optim"])
        self.total_steps = cfg["epochs"] * cfg["iters_per_epoch"]
        self.scheduler = build_schedule(self.optimizer, cfg["schedule"], self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if cuda:
            torch.backends.cudnn.benchmark = True
        if cfg["compile"] and cuda:   # CPU runs never compile (slow start, little gain at this scale)
            self.train_model = torch.compile(self.train_model)
        unlabeled = self.data.unlabeled if self.algorithm.unlabeled_views else None
        self.algorithm.setup(len(self.data.unlabeled), self.device, num_labeled=len(self.data.labeled))
        plan = BatchPlan(cfg["batch_size"], cfg["mu"], cfg["iters_per_epoch"], self.dist.world_size, self.dist.rank)
        self.batches = StepBatches(self.data.labeled, unlabeled, plan, cfg["seed"], self.algorithm.labeled_view,
                                   self.algorithm.unlabeled_views, self.views,
                                   self.algorithm.extra_labeled_views)

    def _amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype: None on CPU or when off; bf16 where the GPU has it (auto), else fp16 + GradScaler."""
        amp = self.cfg["amp"]
        word = str(amp).strip().lower()
        if isinstance(amp, bool):
            word = "auto" if amp else "off"
        if word not in ("auto", "bf16", "fp16", "off", "none", "false", "fp32"):
            raise SSLZooError(f"Config key 'amp' must be auto, bf16, fp16 or off; got {amp!r}.")
        if self.device.type != "cuda" or word in ("off", "none", "false", "fp32"):
            return None
        if word == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

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
                     raw["u_true"].to(d, non_blocking=True), raw["l_index"].to(d, non_blocking=True),
                     [self._prepare(v) for v in raw["l_views"]])

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
        if probs.dim() == 1:   # an empty shard (fewer images than ranks): keep the [0, C] shape for gathering
            probs = probs.reshape(0, self.num_classes)
        probs, labels = self.dist.gather_uneven(probs.to(self.device)), self.dist.gather_uneven(labels.to(self.device))
        return classification_metrics(probs, labels, self.num_classes)

    def epoch_context(self, epoch: int) -> EpochContext:
        """What policies and algorithms see at the start of ``epoch`` (0-based)."""
        return EpochContext(epoch, self.cfg["epochs"], self.num_classes, self.dist, self.labeled_predictions(epoch),
                            torch.as_tensor(self.data.labeled.labels, device=self.device))

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
            "step": step, "config_hash": config_hash(self.cfg), "world_size": self.dist.world_size,
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
        if int(ckpt.get("world_size", 1)) != self.dist.world_size:
            raise SSLZooError(f"The checkpoint in '{self.out}' was made with {ckpt.get('world_size', 1)} "
                              f"process(es) and this run has {self.dist.world_size}; the data each step sees "
                              f"depends on it, so resume with --nproc {ckpt.get('world_size', 1)}.")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt["scaler"]:   # a checkpoint from a run without fp16 has none
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

    def _rng_isolated(self):
        """Keep the loader's start-up off the training RNG (dropout, mixup).

        Creating a DataLoader iterator draws its base seed from torch's global generator;
        a resumed run creates its iterator at another point of the random stream than the
        uninterrupted run did, so without this the two would draw different dropout masks.
        """
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _clear_replaced_run(self) -> None:
        """--overwrite: drop the old run's checkpoint and TensorBoard events, once setup has succeeded."""
        if self.dist.is_main and self.overwrite:
            (self.out / "checkpoint.pt").unlink(missing_ok=True)
            shutil.rmtree(self.out / "tb", ignore_errors=True)

    def fit(self) -> dict[str, Any]:
        self._setup()
        self.history: list[dict[str, Any]] = []
        start_step, meter = 0, EpochMeter()
        has_checkpoint = self.dist.broadcast_object(self.resume and (self.out / "checkpoint.pt").exists())
        if has_checkpoint:   # under DDP every rank loads rank 0's checkpoint
            start_step, meter = self._restore()
        else:
            self._clear_replaced_run()
        self._write_run_files()
        writer = self._tensorboard()
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if _main_thread() else {}
        cfg, iters = self.cfg, self.cfg["iters_per_epoch"]
        workers = self._num_workers()
        try:
            if start_step >= self.total_steps:
                return self._finish("finished")
            if self.stop_after_epoch is not None and start_step >= self.stop_after_epoch * iters:
                return self._finish("interrupted")
            self._write_metrics("running")
            with self._rng_isolated():   # creating the loader iterator draws a base seed
                loader = iter(step_loader(self.batches, start_step, self.total_steps, workers,
                                          self.device.type == "cuda"))
            bar = None
            for step in range(start_step, self.total_steps):
                epoch, it = divmod(step, iters)
                if it == 0 or bar is None:
                    if it == 0:
                        self.algorithm.on_epoch_start(self.epoch_context(epoch))
                        meter = EpochMeter()
                    bar = self._bar(epoch, it)
                tic = time.perf_counter()
                try:
                    raw = next(loader)
                except Exception:
                    # Ctrl-C also reaches loader workers, which then exit: stop cleanly before this step.
                    if self._stop_signal is None or self.dist.enabled:
                        raise
                    self._interrupt(step, meter)
                stop = self._train_step(self._to_batch(raw), epoch, it, step, meter)
                meter.seconds += time.perf_counter() - tic
                if bar is not None:
                    bar.update(1)
                    if it % 10 == 0 or it == iters - 1:
                        bar.set_postfix_str(self._postfix(meter), refresh=False)
                if stop:
                    self._interrupt(step + 1, meter)
                if it == iters - 1:
                    if bar is not None:
                        bar.close()
                        bar = None
                    self._sync_buffers()
                    self._end_epoch(epoch, meter, writer)
                    self._save_checkpoint(step + 1, EpochMeter())
                    if step + 1 >= self.total_steps:
                        return self._finish("finished")
                    if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch:
                        return self._finish("interrupted")
                    self._write_metrics("running")
                    if self.dist.any(self._stop_signal is not None):   # a signal during evaluation
                        self._interrupt(step + 1, EpochMeter(), save=False)
            return self._finish("finished")
        except DivergedError as exc:
            self._write_metrics("diverged", {"message": str(exc), "epoch": exc.epoch + 1,
                                             "iteration": exc.iteration + 1, "term": exc.term})
            self.dist.barrier()   # rank 0 has written before any rank exits (torchrun then stops the rest)
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()

    def _interrupt(self, step: int, meter: EpochMeter, save: bool = True) -> None:
        """Checkpoint at ``step`` (mid-epoch: with the epoch's running sums) and stop."""
        if save:
            self._save_checkpoint(step, meter)
        self._write_metrics("interrupted")
        self.dist.barrier()
        raise KeyboardInterrupt(f"Stopped by signal {self._stop_signal or '(on another rank)'}; checkpoint "
                                f"saved at step {step} of {self.total_steps} in '{self.out}'. "
                                f"Continue with the same command plus --resume.")

    def _finish(self, status: str) -> dict[str, Any]:
        metrics = self._write_metrics(status)
        self._dump_state()
        return metrics

    def _dump_state(self) -> None:
        """SSLZOO_DUMP_STATE=dir: every rank saves its final model/EMA/policy state to dir/rank<k>.pt.

        A debugging aid (and what tests/test_ddp.py uses to check that all ranks agree).
        """
        folder = os.environ.get("SSLZOO_DUMP_STATE")
        if not folder:
            return
        checkpoint.save(Path(folder) / f"rank{self.dist.rank}.pt", {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "algorithm": self.algorithm.state_dict(), "world_size": self.dist.world_size})

    def _sync_buffers(self) -> None:
        """DDP averages gradients but each rank updates its own batch-norm statistics: take rank 0's
        before evaluating, so every rank evaluates (and estimates Ada-CM's margin with) the same model."""
        if self.dist.enabled:
            self.dist.broadcast_([*self.model.buffers(), *self.ema.module.buffers(), *self.extra.buffers()])

    def _sync_extra_grads(self) -> None:
        """Average the gradients of the algorithm's own modules (not inside DDP) over ranks, as DDP does."""
        params = [p for p in self.extra.parameters() if not is_lazy(p)]
        if not self.dist.enabled or not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [has])
        flat = self.dist.all_reduce(flat)
        offset = 0
        for p, used in zip(params, (flat[-len(params):] > 0).tolist()):
            n = p.numel()
            if used:   # a gradient on any rank: the mean over ranks (zero where a rank had none)
                p.grad = (flat[offset:offset + n] / self.dist.world_size).view_as(p).to(p.dtype)
            offset += n

    def _train_step(self, batch: Batch, epoch: int, it: int, step: int, meter: EpochMeter) -> bool:
        """One optimisation step; returns whether to stop now (a signal on any rank)."""
        ctx = StepContext(epoch, it, step, self.total_steps, self.cfg["iters_per_epoch"], self.num_classes,
                          self.dist, self.train_model, self.ema.module, self.cfg["forward_mode"])
        self.train_model.train()
        with self._autocast():
            out = self.algorithm.step(self.train_model, batch, ctx)
        terms = {k: v.float() for k, v in out.losses.items()}
        total = torch.stack(list(terms.values())).sum()
        values_t = torch.stack([total, *terms.values()]).detach()
        if self.dist.enabled:   # one all-reduce: mean losses (for logging and the divergence check) + stop flag
            flag = torch.tensor([0.0 if self._stop_signal is None else 1.0], device=values_t.device)
            reduced = self.dist.all_reduce(torch.cat([values_t, flag]))
            values_t, stop = reduced[:-1] / self.dist.world_size, reduced[-1]
        values = values_t.cpu().tolist()
        if not all(math.isfinite(v) for v in values):   # name the term that went first, "total" if none did
            bad = next((k for k, v in zip(terms, values[1:]) if not math.isfinite(v)), "total")
            raise DivergedError(f"The '{bad}' loss became non-finite at epoch {epoch + 1}, iteration {it + 1}; "
                                f"the run stopped and is recorded as diverged in {self.out}/metrics.json. "
                                f"Lower the learning rate (optim.lr) or check the data.",
                                epoch=epoch, iteration=it, term=bad)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._sync_extra_grads()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        meter.add("loss/total", values[0])
        for name, v in zip(terms, values[1:]):
            meter.add(f"loss/{name}", v)
        for name, v in out.stats.items():
            meter.add(name, float(v))
        meter.images += (batch.num_labeled + sum(v.shape[0] for v in batch.u_views)) * self.dist.world_size
        return bool(stop.item() > 0) if self.dist.enabled else self._stop_signal is not None

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
            "stats": {k: meter.mean(k) for k in meter.sums           # any other statistic an algorithm reports
                      if not k.startswith("loss/") and k not in ("mask_ratio", "pseudo_label_acc")},
            "thresholds": None if thresholds is None else [float(t) for t in thresholds.tolist()],
            "policy_stats": self.algorithm.policy.extra_stats() if self.algorithm.policy is not None else {},
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": meter.seconds, "images": meter.images,
            "img_per_s": meter.images / meter.seconds if meter.seconds else None,
        }
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
            for k, v in entry["policy_stats"].items():
                writer.add_scalar(f"policy/{k}", v, epoch + 1)
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


def train(cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
          stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) one training run; returns its metrics dict.

    ``stop_after_epoch=k`` checkpoints and returns after epoch k with status "interrupted"
    (not part of the config, so ``resume=True`` later continues the very same run).
    """
    try:
        return Trainer(cfg, resume=resume, overwrite=overwrite, stop_after_epoch=stop_after_epoch).fit()
    finally:
        shutdown()   # the process group, if this call created it
