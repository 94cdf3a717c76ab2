"""``sslzoo eval``: a finished run's model on its test set, another split, or another data set.

Why: re-checking a checkpoint without retraining, and the paper's cross-data-set protocol
(train on RAF-DB, test on CK+) for runs that were trained without ``--test-dataset``. The
model is the run's EMA model and the metrics are the trainer's (``classification_metrics``
on plain views), so on the run's own test set the accuracy is metrics.json's ``final_acc`` (``--which val``: the
model of best_val.pt, ``val_selected_acc``; ``--which best``: best_test.pt, ``best_test_acc``).

    sslzoo eval runs/raf100 --test-dataset ckplus --test-data-root /data/CK+
    sslzoo eval runs/demo --which val
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SSLZooError
from ..evaluation import classification_metrics

SPLITS = ("test", "val", "labeled", "unlabeled")


def evaluate_run(run_dir: str | Path, *, split: str = "test", test_dataset: str | None = None,
                 test_data_root: str | None = None, device: str = "auto", which: str = "final") -> dict[str, Any]:
    """Metrics of the run's EMA model ``which`` (final | val | best) on ``split`` (``test``: the run's
    test set, or ``test_dataset``'s)."""
    from ..runs import load_run

    if split not in SPLITS:
        raise SSLZooError(f"--split must be one of {', '.join(SPLITS)}; got '{split}'.")
    if test_dataset and split != "test":
        raise SSLZooError(f"--test-dataset replaces the test set; it cannot be combined with --split {split}.")
    overrides = {"test_dataset": test_dataset, "test_data_root": test_data_root} if test_dataset else {}
    run = load_run(run_dir, device, overrides=overrides, which=which)
    images = {"test": run.data.test, "val": run.data.val, "labeled": run.data.labeled,
              "unlabeled": run.data.unlabeled}[split]
    if images is None:
        raise SSLZooError(f"'{run_dir}' has no validation split (it was trained with val_per_class=0).")
    probs, labels, _ = run.predict_set(images)
    known = labels >= 0                         # extra unlabeled data has no ground truth
    if not bool(known.any()):
        raise SSLZooError(f"the {split} set of '{run_dir}' has no image with a known label to evaluate on.")
    metrics = classification_metrics(probs[known], labels[known], len(run.data.classes))
    return {"run": str(run_dir), "algo": run.cfg["algo"], "dataset": run.cfg["dataset"],
            "labels": run.cfg["labels"], "seed": run.cfg["seed"], "split": split,
            "which": run.which, "model_epoch": run.epoch,
            "evaluated_on": run.data.test_name if split == "test" else run.cfg["dataset"],
            "images": int(known.sum()), "classes": list(run.data.classes), **metrics}


def model_label(which: str, epoch: int | None) -> str:
    """Which saved model, in words: ``best_val.pt (epoch 3)``."""
    from ..runs import MODEL_FILES
    return MODEL_FILES[which] + (f" (epoch {epoch})" if epoch is not None else "")


def format_report(result: dict[str, Any]) -> str:
    """Accuracy, mean class accuracy, per-class accuracy with support, and the confusion matrix."""
    classes, confusion = result["classes"], result["confusion"]
    lines = [f"{result['run']}: {result['algo']} trained on {result['dataset']} ({result['labels']} labels, "
             f"seed {result['seed']}); model {model_label(result.get('which', 'final'), result.get('model_epoch'))}; "
             f"evaluated on {result['evaluated_on']} {result['split']}, {result['images']} images",
             f"  accuracy {result['acc']:.2f} %, mean class accuracy {result['mean_class_acc']:.2f} %", ""]
    width = max(8, *(len(c) for c in classes))
    lines.append(f"  {'class':<{width}} {'images':>7} {'acc (%)':>8}   confusion (rows: truth, columns: predicted)")
    for name, row, acc in zip(classes, confusion, result["per_class_acc"]):
        shown = "–" if acc is None else f"{acc:.2f}"
        lines.append(f"  {name:<{width}} {sum(row):>7} {shown:>8}   " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(lines)
