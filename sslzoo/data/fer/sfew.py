"""SFEW 2.0 loader: ``Train/`` and ``Val/`` folders with one sub-folder per class.

The Ada-CM paper (like everyone) evaluates on Val, since Test labels were never
released, so ``test`` = Val here.
"""
from __future__ import annotations

from typing import Any

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle
from .common import (build_bundle, check_image_size, folder_class_map, folder_records,
                     parse_options, rel_id, require_dir, resolve_root)

NAME = "sfew"
REAL_SIZES = {"train": 958, "test": 436}
OPTIONS: dict[str, Any] = {
    "train_dir": "Train",       # e.g. "Train_Aligned_Faces" for the aligned-face release
    "test_dir": "Val",
    "class_map": None,          # {folder name: canonical name}, over labels.FOLDER_NAMES
}


@register_dataset(NAME)
def sfew(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """SFEW 2.0: Train/ and Val/ class folders (7 classes); test = Val, as in the paper.

    Folder names Angry Disgust Fear Happy Neutral Sad Surprise map (case-insensitively)
    through ``labels.FOLDER_NAMES`` onto FER7. Real sizes are about 958 train / 436 val
    images (after face detection; releases differ slightly). Options: ``train_dir``
    (default Train), ``test_dir`` (default Val), ``class_map``, plus on_bad_image,
    max_bad_fraction, cache, workers.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    base = resolve_root(NAME, root)
    class_map = folder_class_map(NAME, opts["class_map"])
    records, skipped, where, used = [], [], {}, {}
    for split, key in (("train", "train_dir"), ("test", "test_dir")):
        folder = require_dir(NAME, base, opts[key], f"SFEW {split} ({key}={opts[key]!r})")
        recs, skip, u = folder_records(NAME, base, folder, split, class_map)
        records += recs
        skipped += skip
        used.update(u)
        where[split] = rel_id(base, folder) + "/"
    classes = L.FER8 if "contempt" in used.values() else L.FER7
    info = {"label_table": "labels.FOLDER_NAMES",
            "label_mapping": {k: (f"{v} ({classes.index(v)})" if v else "ignored")
                              for k, v in sorted(used.items())},
            "split_dirs": where, "real_sizes": REAL_SIZES}
    return build_bundle(NAME, base, image_size, classes, records, opts, info=info, where=where,
                        key_options={"class_map": {k: v for k, v in sorted(used.items())}},
                        skipped=skipped)
