"""The shared training loop. It knows no algorithm by name.

It builds batches with the views the algorithm declares, sums the named loss terms the
algorithm returns and hands statistics to its callbacks. What is built comes from
:mod:`sslzoo.factory` (or is handed in by ``sslzoo.fit``); where numbers go is the
callbacks' business (:mod:`sslzoo.callbacks`); the files a run leaves are
:mod:`sslzoo.run_record`'s and :mod:`sslzoo.checkpoint`'s.

Sync-free steps: :meth:`Trainer.train_step` never reads a device tensor on the host. Loss
terms and statistics are summed on the device (:mod:`sslzoo.meter`) and read once every
``log_interval`` steps; the divergence check reads one flag there, so a run whose loss turned
non-finite stops at the next read, before anything from the bad steps is written.

Reliability (docs/reliability.md): a checkpoint after every epoch and on SIGTERM/SIGINT holds
everything needed to continue bit-exactly; every output is written atomically. Under DDP
every rank takes the same decisions (stop, diverge) at the same steps, from all-reduced
values, and only rank 0 writes files.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from . import checkpoint
from .algorithm import Batch, EpochContext, SSLAlgorithm, StepContext
from .callbacks import Callback, default_callbacks
from .config import config_hash, parse_switch
from .data.pipeline import BatchPlan, StepBatches, augment_config, derive_seed, realize, step_loader
from .data.prepare import RunData, prepare
from .data.views import Views, normalize_batch
from .device import amp_dtype, autocast, default_workers, pick_device
from .distributed import DistContext, init_from_env, shutdown
from .ema import ModelEMA
from .errors import DivergedError, SSLZooError
from .evaluation import Predictor, classification_metrics
from .factory import build_algorithm, build_model, policy_label, seed_everything
from .meter import Divergence, EpochMeter
from .optim import build_optimizer, build_schedule, clip_gradients, clip_norm
from .run_record import package_versions, summarize, write_config, write_metrics, write_split

MARGIN_STREAM = 7
LABELED_LOSS_STREAM = 8   # the views of the labeled-loss pass (StepContext.labeled_loss)


class Trainer:
    """One run. ``stop_after_epoch=k`` checkpoints and returns after epoch k (status
    "interrupted"); a later ``resume=True`` with the same config continues exactly.

    ``model``, ``algorithm`` and ``data`` replace what the config would build (``sslzoo.fit``
    hands in a user's network and arrays this way); ``callbacks`` come after the config's own.
    """

    def __init__(self, cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
                 stop_after_epoch: int | None = None, model: nn.Module | None = None,
                 algorithm: SSLAlgorithm | None = None, data: RunData | None = None,
                 callbacks: Sequence[Callback] = ()):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.resume, self.overwrite = resume, overwrite
        if stop_after_epoch is not None and stop_after_epoch < 1:
            raise SSLZooError(f"--stop-after-epoch must be at least 1; got {stop_after_epoch}.")
        self.stop_after_epoch = stop_after_epoch
        self.dist: DistContext = init_from_env("cuda" if torch.cuda.is_available() and cfg["device"] != "cpu"
                                               else "cpu")
        self.device = pick_device(cfg["device"], self.dist.local_rank if self.dist.enabled else None)
        if self.dist.enabled and self.device.type == "cuda" and self.device.index != self.dist.local_rank:
            raise SSLZooError(f"With several processes use --device cuda (or auto): each process takes the "
                              f"GPU of its local rank; got --device {cfg['device']}.")
        self._given_model, self._given_algorithm, self._given_data = model, algorithm, data
        self.callbacks = default_callbacks(cfg, callbacks) if self.dist.is_main else []
        self.history: list[dict[str, Any]] = []
        self._stop_signal: int | None = None
        self._ready = False
        self._check_out_dir(overwrite)

    # -- setup ------------------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> None:
        """Refuse to touch a finished run unless asked; check the folder is writable (rank 0 decides)."""
        problem = self._out_dir_problem(overwrite) if self.dist.is_main else None
        problem = self.dist.broadcast_object(problem)
        if problem:
            raise SSLZooError(problem)

    def _out_dir_problem(self, overwrite: bool) -> str | None:
        if not (self.resume or overwrite or not (self.out / "metrics.json").exists()):
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
        if self._given_data is not None:
            return self._given_data
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

    def setup(self) -> None:
        """Build data, algorithm, model, EMA, optimizer, schedule and the batch stream (once)."""
        if self._ready:
            return
        cfg = self.cfg
        seed_everything(cfg["seed"])
        self.data = self._prepare_data()
        self.classes = tuple(self.data.classes)
        self.num_classes = len(self.classes)
        size = self.data.bundle.image_size
        self.views = Views(size, augment_config(cfg["augment"]))
        self.algorithm = self._given_algorithm or build_algorithm(cfg, self.num_classes)
        if self.algorithm.unlabeled_views and len(self.data.unlabeled) == 0:
            raise SSLZooError(
                f"'{cfg['algo']}' learns from unlabeled images, but none are left: --labels "
                f"{cfg['labels']} labels all {len(self.data.labeled)} training images of '{cfg['dataset']}' "
                f"that are not held out. Ask for fewer labels, add unlabeled data (--unlabeled-extra), "
                f"or train with --algo supervised.")
        cuda = self.device.type == "cuda"
        channels_last = parse_switch(cfg["channels_last"], "channels_last")
        self.channels_last = cuda if channels_last is None else channels_last
        model = (self._given_model or build_model(cfg, self.num_classes, size)).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.algorithm.bind_backbone(getattr(model, "feature_dim", None))
        self.extra = self.algorithm.extra_modules().to(self.device)
        self.amp_dtype = amp_dtype(cfg["amp"], self.device)
        self.train_model: nn.Module = model
        if self.dist.enabled:   # DDP averages the backbone's gradients (and starts from rank 0's weights)
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if cuda else None)
            self.dist.broadcast_([t for t in (*self.extra.parameters(), *self.extra.buffers())
                                  if not is_lazy(t)])   # lazy heads are made on first use, from the same RNG
        self.ema = ModelEMA(model, cfg["ema"]["decay"], cfg["ema"]["warmup"],   # after DDP's broadcast
                            cfg["ema"]["buffers"])
        self.optimizer = build_optimizer([*model.named_parameters(), *self.extra.named_parameters()], cfg["optim"])
        self.clip_grad = clip_norm(cfg["optim"])
        self.total_steps = cfg["epochs"] * cfg["iters_per_epoch"]
        self.scheduler = build_schedule(self.optimizer, cfg["schedule"], self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if cuda:
            torch.backends.cudnn.benchmark = True
        if cfg["compile"] and cuda:   # CPU runs never compile (slow start, little gain at this scale)
            self.train_model = torch.compile(self.train_model)
        unlabeled = self.data.unlabeled if self.algorithm.unlabeled_views else None
        self.algorithm.setup(len(self.data.unlabeled), self.device, num_labeled=len(self.data.labeled))
        plan = BatchPlan(cfg["batch_size"], cfg["mu"], cfg["iters_per_epoch"], self.dist.world_size, self.dist.rank)
        self.views_on_device = self.views.on_training_device(self.device)
        self.batches = StepBatches(self.data.labeled, unlabeled, plan, cfg["seed"], self.algorithm.labeled_view,
                                   self.algorithm.unlabeled_views, self.views, self.algorithm.extra_labeled_views,
                                   build_views=not self.views_on_device)
        self.predictor = Predictor(self.views, self.device, cfg["eval_batch_size"], self.amp_dtype,
                                   self.channels_last)
        self._ready = True

    def num_workers(self) -> int:
        n = int(self.cfg["num_workers"])
        return n if n >= 0 else default_workers(self.dist.world_size)

    def to_batch(self, raw: dict[str, Any]) -> Batch:
        """A loader item as a normalized :class:`Batch` on the training device (its views built
        there from the raw rows when ``augment.device`` says so)."""
        d, algo = self.device, self.algorithm
        x_l, u_views, l_views = realize(raw, self.views, algo.labeled_view, algo.unlabeled_views,
                                        algo.extra_labeled_views, d)

        def image(x: Tensor) -> Tensor:
            return normalize_batch(x, d, self.channels_last)
        return Batch(image(x_l), raw["y_l"].to(d, non_blocking=True), [image(v) for v in u_views],
                     raw["u_index"].to(d, non_blocking=True), raw["u_true"].to(d, non_blocking=True),
                     raw["l_index"].to(d, non_blocking=True), [image(v) for v in l_views])

    def batch(self, step: int) -> Batch:
        """The batch of global ``step`` (a pure function of seed, step and rank), on the device."""
        return self.to_batch(self.batches[step])

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, images, model: nn.Module | None = None) -> dict[str, Any]:
        """Metrics of the evaluation (EMA) model on a split, sharded over ranks and gathered."""
        probs, labels = self._predict_sharded(model or self.ema.module, images)
        return classification_metrics(probs, labels, self.num_classes)

    def _predict_sharded(self, model: nn.Module, images, view: str = "plain", seed: int = 0) -> tuple[Tensor, Tensor]:
        """(probs, labels) of ``model`` over ``images`` on the device: each rank a shard, gathered in rank order."""
        shard = images.subset(np.arange(self.dist.rank, len(images), self.dist.world_size)) \
            if self.dist.enabled else images
        probs, labels, _ = self.predictor(model, shard, view, seed)
        if probs.dim() == 1:   # an empty shard (fewer images than ranks): keep the [0, C] shape for gathering
            probs = probs.reshape(0, self.num_classes)
        return self.dist.gather_uneven(probs.to(self.device)), self.dist.gather_uneven(labels.to(self.device))

    def labeled_loss(self) -> Tensor:
        """Per-sample CE of the training model (eval mode) over the whole labeled set, in the view the
        algorithm trains on: ``StepContext.labeled_loss`` (Dash's rho_hat). Training data only."""
        probs, labels = self._predict_sharded(self.model, self.data.labeled, self.algorithm.labeled_view,
                                              derive_seed(self.cfg["seed"], LABELED_LOSS_STREAM))
        picked = probs.gather(1, labels.long()[:, None]).squeeze(1)
        return -torch.log(picked.clamp_min(torch.finfo(picked.dtype).tiny))

    def epoch_context(self, epoch: int) -> EpochContext:
        """What policies and algorithms see at the start of ``epoch`` (0-based)."""
        return EpochContext(epoch, self.cfg["epochs"], self.num_classes, self.dist, self.labeled_predictions(epoch),
                            torch.as_tensor(self.data.labeled.labels, device=self.device))

    def labeled_predictions(self, epoch: int):
        """Closure for policies: evaluation-model predictions over the whole labeled set (every rank)."""
        def compute(view: str) -> tuple[Tensor, Tensor]:
            probs, labels, _ = self.predictor(self.ema.module, self.data.labeled, view,
                                              derive_seed(self.cfg["seed"], MARGIN_STREAM, epoch))
            return probs.to(self.device), labels.to(self.device)
        return compute

    # -- one step (sync-free) ---------------------------------------------------------------
    def step_context(self, step: int) -> StepContext:
        """Where training is at global ``step``, with the trainer's capabilities (``labeled_loss``)."""
        epoch, it = divmod(step, self.cfg["iters_per_epoch"])
        return StepContext(epoch, it, step, self.total_steps, self.cfg["iters_per_epoch"], self.num_classes,
                           self.dist, self.train_model, self.ema.module, self.cfg["forward_mode"], self.labeled_loss)

    def before_step(self, step: int) -> None:
        """The policy's per-step hook, outside the sync-free step: rare host-side work (Dash's rho_hat pass)."""
        if self.algorithm.policy is not None:
            self.algorithm.policy.before_step(self.step_context(step))

    def train_step(self, batch: Batch, step: int, meter: EpochMeter) -> None:
        """One optimisation step at global ``step``; its losses and statistics go to ``meter`` on the device."""
        ctx = self.step_context(step)
        self.train_model.train()
        with self.autocast():
            out = self.algorithm.step(self.train_model, batch, ctx)
        terms = {k: v.float() for k, v in out.losses.items()}
        total = torch.stack(list(terms.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._sync_extra_grads()
        if self.clip_grad is not None:   # on the true gradients: fp16's scaler unscales them first
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.optimizer, self.clip_grad)
        if self._optimizer_step():
            self.scheduler.step()
            self.ema.update(self.model)
        meter.add_step(step, {"total": total, **terms}, out.stats)
        meter.images += batch.num_images * self.dist.world_size

    def _optimizer_step(self) -> bool:
        """The optimizer step through the GradScaler; False when fp16's scaler skipped it (inf/NaN
        gradients), so the schedule and the EMA do not advance either. Only fp16 reads the scale
        on the host (GradScaler itself syncs there); bf16 and fp32 steps stay sync-free."""
        if not self.scaler.is_enabled():
            self.optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale   # a skipped step backs the scale off

    def _sync_extra_grads(self) -> None:
        """Average the gradients of the algorithm's own modules (not inside DDP) over ranks, as DDP does."""
        params = [p for p in self.extra.parameters() if not is_lazy(p)]
        if not self.dist.enabled or not params:
            return
        local = [p.grad is not None for p in params]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params])
        if all(local):   # the usual case: one all-reduce, no host read
            flat = self.dist.all_reduce(flat) / self.dist.world_size
            used = [True] * len(params)
        else:            # a head unused on this rank: which ranks used it decides (a host read)
            has = torch.tensor(local, dtype=torch.float32, device=self.device)
            reduced = self.dist.all_reduce(torch.cat([flat, has]))
            flat, used = reduced[:-len(params)] / self.dist.world_size, (reduced[-len(params):] > 0).tolist()
        offset = 0
        for p, was_used in zip(params, used):
            n = p.numel()
            if was_used:   # a gradient on any rank: the mean over ranks (zero where a rank had none)
                p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.setup()
        start_step, meter = 0, EpochMeter()
        has_checkpoint = self.dist.broadcast_object(self.resume and (self.out / "checkpoint.pt").exists())
        if has_checkpoint:   # under DDP every rank loads rank 0's checkpoint
            start_step, meter = self._restore()
        else:
            self._clear_replaced_run()
        if self.dist.is_main:
            write_config(self.out, self.cfg)
            write_split(self.out, self.cfg, self.data.split.as_json(self.data.bundle.train.ids), self.data.test_name)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        iters, interval = self.cfg["iters_per_epoch"], max(1, int(self.cfg["log_interval"]))
        try:
            if start_step >= self.total_steps:
                return self._finish("finished")
            if self.stop_after_epoch is not None and start_step >= self.stop_after_epoch * iters:
                return self._finish("interrupted")
            self._write_metrics("running")
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                # creating the loader iterator draws a base seed: keep it off the training RNG, so a
                # resumed run (which creates its iterator elsewhere in the stream) draws the same dropout
                loader = iter(step_loader(self.batches, start_step, self.total_steps, self.num_workers(),
                                          self.device.type == "cuda"))
            for step in range(start_step, self.total_steps):
                epoch, it = divmod(step, iters)
                if it == 0:
                    self.algorithm.on_epoch_start(self.epoch_context(epoch))
                    meter = EpochMeter()
                if it == 0 or step == start_step:
                    for cb in self.callbacks:
                        cb.on_epoch_start(self, epoch, it)
                tic = time.perf_counter()
                try:
                    raw = next(loader)
                except Exception:
                    # Ctrl-C also reaches loader workers, which then exit: stop cleanly before this step.
                    if self._stop_signal is None or self.dist.enabled:
                        raise
                    self._interrupt(step, meter)
                self.before_step(step)
                self.train_step(self.to_batch(raw), step, meter)
                meter.seconds += time.perf_counter() - tic
                for cb in self.callbacks:
                    cb.on_step_end(self, step)
                last_of_epoch = it == iters - 1
                if last_of_epoch or (step + 1) % interval == 0:
                    self._read(meter, step)                       # the only host reads of the loop
                    if self._stop_requested():
                        self._interrupt(step + 1, meter)
                elif self._stop_signal is not None and not self.dist.enabled:
                    self._read(meter, step)
                    self._interrupt(step + 1, meter)
                if last_of_epoch:
                    self._sync_buffers()
                    self._end_epoch(epoch, meter)
                    self._save_checkpoint(step + 1, EpochMeter())
                    if step + 1 >= self.total_steps:
                        return self._finish("finished")
                    if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch:
                        return self._finish("interrupted")
                    self._write_metrics("running")
                    if self._stop_requested():   # a signal during evaluation
                        self._interrupt(step + 1, EpochMeter(), save=False)
            return self._finish("finished")
        except DivergedError as exc:
            self._finish("diverged", {"message": str(exc), "epoch": exc.epoch + 1,
                                      "iteration": exc.iteration + 1, "term": exc.term})
            self.dist.barrier()   # rank 0 has written before any rank exits (torchrun then stops the rest)
            raise
        except KeyboardInterrupt:
            for cb in self.callbacks:
                cb.on_fit_end(self, self._metrics("interrupted"))
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

    def _read(self, meter: EpochMeter, step: int) -> None:
        """Read the device sums (logging interval): stop as diverged if a loss went non-finite."""
        bad = meter.read(self.dist)
        if self.dist.enabled:   # every rank stops together, at the earliest bad step of any rank
            flag = torch.tensor([float("inf") if bad is None else bad.step], device=self.dist.device)
            earliest = self.dist.all_reduce(flag, op="min").item()
            if bad is None and earliest != float("inf"):
                bad = Divergence(int(earliest), "(on another rank)")
        self._raise_if_diverged(bad)
        means = {k: v for k, v in meter.loss_means().items() if v is not None}
        if meter.mean("mask_ratio") is not None:
            means["mask"] = meter.mean("mask_ratio")
        for cb in self.callbacks:
            cb.on_log(self, step, means)

    def _raise_if_diverged(self, bad: Divergence | None) -> None:
        if bad is not None:
            epoch, it = divmod(bad.step, self.cfg["iters_per_epoch"])
            raise DivergedError(f"The '{bad.term}' loss became non-finite at epoch {epoch + 1}, iteration {it + 1}; "
                                f"the run stopped and is recorded as diverged in {self.out}/metrics.json. "
                                f"Lower the learning rate (optim.lr) or check the data.",
                                epoch=epoch, iteration=it, term=bad.term)

    def _stop_requested(self) -> bool:
        """A SIGTERM/SIGINT on this rank (or, under DDP, on any rank: decided together)."""
        return self.dist.any(self._stop_signal is not None) if self.dist.enabled else self._stop_signal is not None

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def _clear_replaced_run(self) -> None:
        """--overwrite: drop the old run's checkpoint and TensorBoard events, once setup has succeeded."""
        if self.dist.is_main and self.overwrite:
            (self.out / "checkpoint.pt").unlink(missing_ok=True)
            shutil.rmtree(self.out / "tb", ignore_errors=True)

    def _interrupt(self, step: int, meter: EpochMeter, save: bool = True) -> None:
        """Checkpoint at ``step`` (mid-epoch: with the epoch's running sums) and stop."""
        if save:
            self._raise_if_diverged(meter.read())   # never checkpoint a diverged model
            self._save_checkpoint(step, meter)
        self._write_metrics("interrupted")
        self.dist.barrier()
        raise KeyboardInterrupt(f"Stopped by signal {self._stop_signal or '(on another rank)'}; checkpoint "
                                f"saved at step {step} of {self.total_steps} in '{self.out}'. "
                                f"Continue with the same command plus --resume.")

    def _finish(self, status: str, error: dict | None = None) -> dict[str, Any]:
        metrics = self._write_metrics(status, error)
        self._dump_state()
        for cb in self.callbacks:
            cb.on_fit_end(self, metrics)
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

    def _end_epoch(self, epoch: int, meter: EpochMeter) -> None:
        test = self.evaluate(self.data.test)
        val = self.evaluate(self.data.val) if self.data.val is not None else None
        policy = self.algorithm.policy
        thresholds = policy.thresholds() if policy is not None else None
        entry = {
            "epoch": epoch + 1,
            "test_acc": test["acc"], "test_mean_class_acc": test["mean_class_acc"],
            "test_per_class_acc": test["per_class_acc"], "confusion": test["confusion"],
            "val_acc": val["acc"] if val else None,
            "losses": meter.loss_means(),
            "mask_ratio": meter.mean("mask_ratio"), "pseudo_label_acc": meter.mean("pseudo_label_acc"),
            "stats": {k: meter.mean(k) for k in meter.stat_names()           # any other statistic an algorithm reports
                      if k not in ("mask_ratio", "pseudo_label_acc")},
            "thresholds": None if thresholds is None else [float(t) for t in thresholds.tolist()],
            "policy_stats": policy.extra_stats() if policy is not None else {},
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": meter.seconds, "images": meter.images,
            "img_per_s": meter.images / meter.seconds if meter.seconds else None,
        }
        self.history.append(entry)
        for cb in self.callbacks:
            cb.on_epoch_end(self, entry)

    # -- checkpoints and records ----------------------------------------------------------------
    def _save_checkpoint(self, step: int, meter: EpochMeter) -> None:
        if self.dist.is_main:
            checkpoint.save(self.out / "checkpoint.pt", checkpoint.training_state(
                step=step, config_hash=config_hash(self.cfg), world_size=self.dist.world_size,
                model=self.model, ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler,
                scaler=self.scaler, algorithm=self.algorithm, meter=meter.state(), history=self.history))

    def _restore(self) -> tuple[int, EpochMeter]:
        ckpt = checkpoint.load(self.out / "checkpoint.pt")
        if ckpt["config_hash"] != config_hash(self.cfg):
            raise SSLZooError(f"The checkpoint in '{self.out}' was made with a different configuration than "
                              f"the one given now; resume with the same settings (see {self.out}/config.yaml).")
        if int(ckpt.get("world_size", 1)) != self.dist.world_size:
            raise SSLZooError(f"The checkpoint in '{self.out}' was made with {ckpt.get('world_size', 1)} "
                              f"process(es) and this run has {self.dist.world_size}; the data each step sees "
                              f"depends on it, so resume with --nproc {ckpt.get('world_size', 1)}.")
        try:
            checkpoint.restore_training_state(ckpt, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                              scheduler=self.scheduler, scaler=self.scaler, algorithm=self.algorithm)
        except (ValueError, RuntimeError, KeyError) as exc:   # e.g. a checkpoint of another sslzoo version
            raise SSLZooError(f"The checkpoint in '{self.out}' does not fit this run's model or optimizer "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it was probably written by "
                              f"another sslzoo version. Start the run afresh with --overwrite.") from None
        self.history = list(ckpt["history"])
        return int(ckpt["step"]), EpochMeter(ckpt["meter"])

    def _metrics(self, status: str, error: dict | None = None) -> dict[str, Any]:
        return {
            "status": status, "error": error,
            "algorithm": self.cfg["algo"], "policy": self._policy_label(), "dataset": self.cfg["dataset"],
            "test_dataset": self.data.test_name, "labels": self.cfg["labels"], "seed": self.cfg["seed"],
            "classes": list(self.classes), "image_size": self.data.bundle.image_size,
            "epochs": self.cfg["epochs"], **summarize(self.history),
            "config_hash": config_hash(self.cfg), "versions": package_versions(),
            "world_size": self.dist.world_size, "device": str(self.device),
            "history": self.history,
        }

    def _policy_label(self) -> str | None:
        if self.algorithm.policy is None:
            return None
        if self._given_algorithm is not None:
            return self.algorithm.policy.name
        return policy_label(self.cfg)

    def _write_metrics(self, status: str, error: dict | None = None) -> dict[str, Any]:
        metrics = self._metrics(status, error)
        if self.dist.is_main:
            write_metrics(self.out, metrics)
        return metrics


def train(cfg: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
          stop_after_epoch: int | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) one training run; returns its metrics dict.

    ``stop_after_epoch=k`` checkpoints and returns after epoch k with status "interrupted"
    (not part of the config, so ``resume=True`` later continues the very same run).
    """
    try:
        return Trainer(cfg, resume=resume, overwrite=overwrite, stop_after_epoch=stop_after_epoch,
                       callbacks=callbacks).fit()
    finally:
        shutdown()   # the process group, if this call created it
