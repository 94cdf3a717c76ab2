"""Labeled / unlabeled / validation subsets of a training split.

Why here, seeded by the run's seed only: every algorithm in a bench gets the same
split for the same seed, so comparisons are paired.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SSLZooError

# The official Ada-CM RAF-DB split: labels for (fear, each other class) at each total.
ADACM_RAFDB_SPLIT = {100: (10, 15), 400: (40, 60), 1000: (100, 150), 2000: (200, 300), 4000: (250, 625)}
FEAR = 1  # canonical id of fear
SPLITS = ("balanced", "stratified", "adacm_rafdb")   # labeled-subset protocols
# ``labels: all``: every training image with a known label is labeled (the paper's "Fully Supervised" row)
LABELS_ALL = "all"


@dataclass
class Split:
    labeled: np.ndarray     # indices into the training split
    unlabeled: np.ndarray
    val: np.ndarray         # held out from both (empty unless val_per_class > 0)

    def as_json(self, ids: list[str]) -> dict:
        return {"labeled": [ids[i] for i in self.labeled],
                "unlabeled": [ids[i] for i in self.unlabeled],
                "val": [ids[i] for i in self.val]}


def per_class_counts(labels: np.ndarray, n_labels: int | str, num_classes: int, protocol: str) -> np.ndarray:
    """How many labels to draw from each class under a protocol (``"all"``: every image of the class)."""
    counts_avail = np.bincount(labels[labels >= 0], minlength=num_classes)
    if n_labels == LABELS_ALL:
        if protocol == "adacm_rafdb":
            raise SSLZooError(f"--split adacm_rafdb does not apply to --labels {LABELS_ALL}: the official Ada-CM "
                              f"RAF-DB split is defined for --labels in {sorted(ADACM_RAFDB_SPLIT)}, and --labels "
                              f"{LABELS_ALL} labels every training image. Use --split balanced (the default) or "
                              f"stratified, which both take every image with --labels {LABELS_ALL}.")
        return counts_avail.astype(np.int64)
    if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)):
        raise SSLZooError(f"--labels must be a positive number of labeled images or '{LABELS_ALL}'; "
                          f"got {n_labels!r}.")
    if n_labels <= 0:
        raise SSLZooError(f"--labels must be a positive number of labeled images; got {n_labels}.")
    if protocol == "balanced":
        base, extra = divmod(n_labels, num_classes)
        want = np.full(num_classes, base, dtype=np.int64)
        want[:extra] += 1   # the remainder goes to the first classes, deterministically
    elif protocol == "stratified":
        frac = counts_avail / counts_avail.sum()
        want = np.floor(frac * n_labels).astype(np.int64)
        order = np.argsort(-(frac * n_labels - want), kind="stable")
        want[order[: n_labels - want.sum()]] += 1
        want = np.maximum(want, 1)
    elif protocol == "adacm_rafdb":
        if n_labels not in ADACM_RAFDB_SPLIT or num_classes != 7:
            raise SSLZooError(f"The official Ada-CM RAF-DB split is defined for 7 classes and "
                              f"--labels in {sorted(ADACM_RAFDB_SPLIT)}; got {n_labels} labels, "
                              f"{num_classes} classes.")
        fear, other = ADACM_RAFDB_SPLIT[n_labels]
        want = np.full(num_classes, other, dtype=np.int64)
        want[FEAR] = fear
    else:
        raise SSLZooError(f"Unknown split protocol '{protocol}'; expected one of {', '.join(SPLITS)}.")
    return want


def make_split(labels: np.ndarray, n_labels: int | str, seed: int, *, num_classes: int,
               protocol: str = "balanced", val_per_class: int = 0,
               class_names: tuple[str, ...] | None = None) -> Split:
    """Draw the labeled (and optional validation) subset; everything else is unlabeled.

    ``n_labels="all"``: the validation images are drawn first, the rest of every class is labeled,
    and only images without ground truth stay unlabeled.
    """
    labels = np.asarray(labels)
    every = n_labels == LABELS_ALL
    want = per_class_counts(labels, n_labels, num_classes, protocol)
    if every:   # the validation split comes out of the labeled images
        want = np.maximum(want - val_per_class, 0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    labeled, val, unlabeled = [], [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        need = int(want[c]) + val_per_class
        if need > len(idx):
            name = class_names[c] if class_names else str(c)
            asked = (f"{val_per_class} validation images were requested for it (--val-per-class "
                     f"{val_per_class}, --labels {n_labels}). Ask for fewer validation images." if every else
                     f"{int(want[c])} labels{f' + {val_per_class} validation images' if val_per_class else ''} "
                     f"were requested for it ({protocol} protocol, --labels {n_labels}). Ask for fewer labels.")
            raise SSLZooError(f"Class '{name}' has {len(idx)} training images, but {asked}")
        idx = rng.permutation(idx)
        val.append(idx[:val_per_class])
        labeled.append(idx[val_per_class:need])
        unlabeled.append(idx[need:])
    unknown = np.flatnonzero(labels < 0)   # unlabeled-only images (no ground truth) stay unlabeled
    return Split(labeled=np.sort(np.concatenate(labeled)),
                 unlabeled=np.sort(np.concatenate(unlabeled + [unknown])),
                 val=np.sort(np.concatenate(val)))
