"""What the trainer tells the outside world: loggers, the progress bar and the selected models
(``best_val.pt``, ``best_test.pt``), as callbacks.

Why callbacks: the loop should read on one screen and not know where numbers go. TensorBoard
is on by default (``tensorboard=true``); ``loggers=[csv]`` adds ``metrics.csv`` (one row per
epoch) and ``loggers=[wandb]`` a Weights & Biases run (``pip install wandb``; imported only
when asked for). A Python user passes any :class:`Callback` to ``sslzoo.fit(callbacks=[...])``.
Only the main process (rank 0) gets callbacks.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import LOGGERS
from .errors import SSLZooError

Trainer = Any   # the trainer hands itself in (not imported: callbacks sit below the trainer)



class Callback:
    """Hooks the trainer calls on the main process; override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once, before the first step (also when resuming)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int, iteration: int) -> None:
        """At the start of an epoch (``iteration`` > 0 when a run resumes mid-epoch); 0-based ``epoch``."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After every optimisation step. Never reads device tensors (the step is sync-free)."""

    def on_log(self, trainer: Trainer, step: int, means: dict[str, float]) -> None:
        """Every ``log_interval`` steps: the epoch's running means so far (host numbers)."""

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        """After an epoch's evaluation, with its metrics.json history entry."""

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """When the run ends (finished, interrupted or diverged), with the metrics.json content."""


class TensorBoardLogger(Callback):
    """Per-epoch scalars in ``<run>/tb`` (test/val accuracy, losses, mask ratio, thresholds, policy stats)."""

    def __init__(self, log_dir: str | Path | None = None):
        self.log_dir = log_dir
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir or trainer.out / "tb"))

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        w, epoch = self.writer, entry["epoch"]
        w.add_scalar("test/acc", entry["test_acc"], epoch)
        w.add_scalar("test/mean_class_acc", entry["test_mean_class_acc"], epoch)
        if entry["val_acc"] is not None:
            w.add_scalar("val/acc", entry["val_acc"], epoch)
        for k, v in entry["losses"].items():
            if v is not None:
                w.add_scalar(f"loss/{k}", v, epoch)
        for k in ("mask_ratio", "pseudo_label_acc", "img_per_s"):
            if entry[k] is not None:
                w.add_scalar(f"train/{k}", entry[k], epoch)
        for k, v in entry["policy_stats"].items():
            w.add_scalar(f"policy/{k}", v, epoch)
        for c, t in enumerate(entry["thresholds"] or []):
            w.add_scalar(f"threshold/{trainer.classes[c]}", t, epoch)
        w.flush()

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CSVLogger(Callback):
    """``metrics.csv``: one row per epoch (accuracies, loss terms, mask ratio, lr, speed).

    Rows are rewritten from the run's history each epoch, so a resumed run's file is whole.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = path

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        from .io import atomic_write
        rows = [flat_entry(e) for e in trainer.history]
        columns = list(dict.fromkeys(k for row in rows for k in row))

        def write(f: Any) -> None:
            out = csv.DictWriter(f, fieldnames=columns)
            out.writeheader()
            out.writerows(rows)
        atomic_write(self.path or trainer.out / "metrics.csv", write, newline="")


def flat_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One history entry as flat CSV columns (nested losses/stats as ``loss/<term>``, ``<stat>``)."""
    row = {k: entry.get(k) for k in ("epoch", "test_acc", "test_mean_class_acc", "val_acc", "mask_ratio",
                                     "pseudo_label_acc", "lr", "time_s", "img_per_s")}
    row.update({f"loss/{k}": v for k, v in entry.get("losses", {}).items()})
    row.update(entry.get("stats", {}))
    row.update({f"policy/{k}": v for k, v in entry.get("policy_stats", {}).items()})
    return row


class WandbLogger(Callback):
    """A Weights & Biases run with the per-epoch metrics; ``wandb`` is imported only here."""

    def __init__(self, project: str = "sslzoo", **init_kwargs: Any):
        self.project, self.init_kwargs, self.run = project, init_kwargs, None

    def on_fit_start(self, trainer: Trainer) -> None:
        try:
            import wandb
        except ImportError:
            raise SSLZooError("loggers=[wandb] needs the wandb package: pip install wandb "
                              "(or drop 'wandb' from loggers).") from None
        self.run = wandb.init(project=self.project, config=trainer.cfg, dir=str(trainer.out),
                              name=Path(trainer.out).name, **self.init_kwargs)

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in flat_entry(entry).items() if isinstance(v, (int, float))},
                     step=entry["epoch"])

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


BEST_FILES = {"val": "best_val.pt", "best": "best_test.pt"}   # ``--which`` name -> file in the run folder


class BestCheckpoints(Callback):
    """``best_val.pt`` (a run with a validation split) and ``best_test.pt`` (``save_best_test``): the
    EMA model of the epoch metrics.json names ``val_selected_epoch`` / ``best_epoch``.

    Why: checkpoint.pt holds the last step only, so the model behind ``val_selected_acc`` and
    ``best_test_acc`` was lost. The epoch is chosen by :func:`sslzoo.run_record.summarize`, the
    rule metrics.json uses (ties keep the first epoch), over the whole history: a resumed run has
    its earlier epochs back, so a better earlier model is never overwritten. Only rank 0 gets
    callbacks, so only it writes; ``checkpoint.save`` writes atomically.
    """

    def __init__(self) -> None:
        self.config_hash = ""

    def on_fit_start(self, trainer: Trainer) -> None:
        from .config import config_hash
        self.config_hash = config_hash(trainer.cfg)
        if not trainer.history:   # a fresh start (or --overwrite): files left in the folder are another run's
            for name in BEST_FILES.values():
                (trainer.out / name).unlink(missing_ok=True)

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        from .run_record import summarize
        summary = summarize(trainer.history)
        if entry["val_acc"] is not None and summary["val_selected_epoch"] == entry["epoch"]:
            self.save(trainer, "val", entry, entry["val_acc"])
        if trainer.cfg.get("save_best_test") and summary["best_epoch"] == entry["epoch"]:
            self.save(trainer, "best", entry, entry["test_acc"])

    def save(self, trainer: Trainer, which: str, entry: dict[str, Any], acc: float) -> None:
        from .checkpoint import save
        save(trainer.out / BEST_FILES[which], {
            "which": which, "epoch": entry["epoch"], "acc": acc, "val_acc": entry["val_acc"],
            "test_acc": entry["test_acc"], "config_hash": self.config_hash,
            "ema": {"module": trainer.ema.module.state_dict()}})


class ProgressBar(Callback):
    """A tqdm bar per epoch (``tqdm.auto``: a widget in notebooks), and one line per finished epoch."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, trainer: Trainer, epoch: int, iteration: int) -> None:
        from tqdm.auto import tqdm
        self.close()
        self.bar = tqdm(total=trainer.cfg["iters_per_epoch"], initial=iteration,
                        desc=f"epoch {epoch + 1}/{trainer.cfg['epochs']}", unit="it", leave=False,
                        dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, trainer: Trainer, step: int, means: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(f"{k}={v:.3f}" for k, v in means.items()), refresh=False)

    def on_epoch_end(self, trainer: Trainer, entry: dict[str, Any]) -> None:
        self.close()
        print(f"epoch {entry['epoch']}/{trainer.cfg['epochs']}: test acc {entry['test_acc']:.2f}%"
              + (f", val acc {entry['val_acc']:.2f}%" if entry["val_acc"] is not None else "")
              + (f", mask {entry['mask_ratio']:.2f}" if entry["mask_ratio"] is not None else ""),
              file=sys.stderr, flush=True)

    def on_fit_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_callbacks(cfg: dict[str, Any], extra: Sequence[Callback] = ()) -> list[Callback]:
    """The run's best-model files, the callbacks a config asks for (TensorBoard, ``loggers``, the
    progress bar), then ``extra``."""
    out: list[Callback] = [BestCheckpoints()]
    names = list(cfg.get("loggers") or [])
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise SSLZooError(f"Config key 'loggers' has unknown logger(s) {unknown}; known: {', '.join(LOGGERS)}.")
    if cfg.get("tensorboard") and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    for name in names:
        out.append({"tensorboard": TensorBoardLogger, "csv": CSVLogger, "wandb": WandbLogger}[name]())
    if cfg.get("progress"):
        out.append(ProgressBar())
    return out + list(extra)
