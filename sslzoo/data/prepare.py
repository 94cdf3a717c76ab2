"""From a resolved config to the image sets a run trains and evaluates on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SSLZooError
from ..registry import DATASETS
from .base import DataBundle, ImageSet
from .splits import Split, make_split


@dataclass
class RunData:
    bundle: DataBundle
    split: Split
    labeled: ImageSet
    unlabeled: ImageSet          # split.unlabeled (+ extra unlabeled data, appended)
    val: ImageSet | None
    test: ImageSet
    test_name: str
    classes: tuple[str, ...]


def load_bundle(name: str, root: str | None, image_size: int | None, options: dict[str, Any]) -> DataBundle:
    loader = DATASETS.get(name)
    kwargs = dict(options)
    if image_size is not None:
        kwargs["image_size"] = image_size
    return loader(root=root, **kwargs)


def prepare(cfg: dict[str, Any]) -> RunData:
    bundle = load_bundle(cfg["dataset"], cfg["data_root"], cfg["image_size"], cfg["data"])
    size = bundle.image_size
    split = make_split(bundle.train.labels, cfg["labels"], cfg["seed"], num_classes=bundle.num_classes,
                       protocol=cfg["split"], val_per_class=cfg["val_per_class"], class_names=bundle.classes)
    assert_disjoint(split, len(bundle.train), bundle.train.ids, bundle.test.ids)
    unlabeled = bundle.train.subset(split.unlabeled)
    if cfg["unlabeled_extra"]:
        extra = load_bundle(cfg["unlabeled_extra"], cfg["unlabeled_extra_root"], size, {})
        unlabeled = ImageSet.concat([unlabeled, ImageSet(extra.train.images, extra.train.labels,
                                                         [f"{cfg['unlabeled_extra']}:{i}" for i in extra.train.ids])])
    test, test_name = bundle.test, cfg["dataset"]
    if cfg["test_dataset"]:
        other = load_bundle(cfg["test_dataset"], cfg["test_data_root"], size, {})
        if other.classes[: bundle.num_classes] != bundle.classes[: other.num_classes]:
            raise SSLZooError(f"Cannot test '{cfg['dataset']}' ({len(bundle.classes)} classes) on "
                              f"'{cfg['test_dataset']}' ({len(other.classes)} classes): label spaces differ.")
        if other.num_classes > bundle.num_classes:
            keep = other.test.labels < bundle.num_classes
            other.test = other.test.subset(np.flatnonzero(keep))
        test, test_name = other.test, cfg["test_dataset"]
    return RunData(bundle, split, bundle.train.subset(split.labeled), unlabeled,
                   bundle.train.subset(split.val) if len(split.val) else None, test, test_name, bundle.classes)


def assert_disjoint(split: Split, n_train: int, train_ids: list[str] | None = None,
                    test_ids: list[str] | None = None) -> None:
    """No evaluation data reaches training: labeled, unlabeled, validation and test are disjoint.

    Checked when every run starts, for every data set (a loader bug that put a test image
    in the training split would otherwise silently inflate every number).
    """
    parts = {"labeled": split.labeled, "unlabeled": split.unlabeled, "val": split.val}
    seen = np.zeros(n_train, dtype=np.int64)
    for idx in parts.values():
        np.add.at(seen, idx, 1)
    if (seen > 1).any():
        raise AssertionError(f"Split is not disjoint: {int((seen > 1).sum())} images are in more than one "
                             f"of labeled/unlabeled/val.")
    if train_ids is not None and test_ids is not None:
        shared = set(train_ids) & set(test_ids)
        if shared:
            raise AssertionError(f"{len(shared)} image ids are in both the training and the test split "
                                 f"(e.g. {sorted(shared)[:3]}); the data set's loader is wrong.")
