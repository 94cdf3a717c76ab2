"""How trustworthy a trained model's confidence is: the evidence behind a threshold.

Every threshold policy assumes that a confident prediction is a correct one. This report
checks that assumption on a finished run: it bins the EMA model's max-softmax confidence
on the unlabeled pool (ground truth known for the built-in and fixture data) or the test
set, and gives per bin the share of samples and their accuracy, plus what a fixed
threshold at each bin's lower edge would admit. ECE is the usual 15-bin expected
calibration error (Guo et al., 2017).

    sslzoo calibration bench/default/runs/synthfer-70/Supervised/seed0 --edges 0.5,0.8,0.95
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SSLZooError


@dataclass
class ConfidenceBin:
    low: float
    high: float             # exclusive, except the last bin, which includes 1.0
    share: float            # fraction of samples in [low, high)
    accuracy: float | None  # accuracy in the bin (None if empty)
    share_admitted: float   # fraction with confidence >= low: what threshold `low` trusts
    accuracy_admitted: float | None


def confidence_bins(probs: Tensor, labels: Tensor, edges: Sequence[float] = (0.5, 0.8, 0.95)) -> list[ConfidenceBin]:
    """Bins [0, e1), [e1, e2), ..., [ek, 1] of max-softmax confidence, with accuracies."""
    if not edges or any(not 0 < e < 1 for e in edges) or list(edges) != sorted(set(edges)):
        raise SSLZooError(f"confidence edges must be increasing values in (0, 1), e.g. 0.5,0.8,0.95; got {list(edges)}.")
    if probs.shape[0] == 0:
        raise SSLZooError("no samples with a known label to measure confidence on.")
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    bounds = [0.0, *map(float, edges), 1.0]
    rows = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        last = i == len(bounds) - 2
        inside = (conf >= lo) & ((conf <= hi) if last else (conf < hi))
        admitted = conf >= lo
        rows.append(ConfidenceBin(lo, hi, float(inside.float().mean()),
                                  float(correct[inside].mean()) if inside.any() else None,
                                  float(admitted.float().mean()),
                                  float(correct[admitted].mean()) if admitted.any() else None))
    return rows


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width confidence bins (Guo et al., 2017)."""
    conf, pred = probs.float().max(dim=1)
    correct = (pred == labels).float()
    bins = (conf * n_bins).long().clamp_max(n_bins - 1)    # [k/n, (k+1)/n), 1.0 in the last bin
    ece = torch.zeros(())
    for b in bins.unique():
        m = bins == b
        ece += m.float().mean() * (correct[m].mean() - conf[m].mean()).abs()
    return float(ece)


def calibration_report(run_dir: str, split: str = "unlabeled", edges: Sequence[float] = (0.5, 0.8, 0.95),
                       device: str = "auto") -> str:
    """A Markdown report for one finished run (EMA model, plain views, as evaluated)."""
    from ..runs import load_run

    run = load_run(run_dir, device)
    images = {"unlabeled": run.data.unlabeled, "test": run.data.test}.get(split)
    if images is None:
        raise SSLZooError(f"--split must be 'unlabeled' or 'test'; got '{split}'.")
    probs, labels, _ = run.predict_set(images)
    known = labels >= 0                       # extra unlabeled data has no ground truth
    probs, labels = probs[known].cpu(), labels[known].cpu()
    rows = confidence_bins(probs, labels, edges)
    acc = float((probs.argmax(1) == labels).float().mean())
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"   # noqa: E731
    lines = [f"{run_dir}: {run.cfg['algo']} on {run.cfg['dataset']} ({run.cfg['labels']} labels, seed "
             f"{run.cfg['seed']}); {split} set, {len(labels)} images with a known label: accuracy {pct(acc)} %, "
             f"ECE {pct(expected_calibration_error(probs, labels))} %",
             "", "| confidence | share (%) | accuracy (%) | share >= low (%) | accuracy >= low (%) |",
             "|:---|---:|---:|---:|---:|"]
    for r in rows:
        close = "]" if r.high == 1.0 else ")"
        lines.append(f"| [{r.low:.2f}, {r.high:.2f}{close} | {pct(r.share)} | {pct(r.accuracy)} | "
                     f"{pct(r.share_admitted)} | {pct(r.accuracy_admitted)} |")
    return "\n".join(lines)
