"""Generic image-folder loader: ``root/<split>/<class name>/*.jpg|png|...``."""
from __future__ import annotations

from typing import Any

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle
from .common import (build_bundle, check_image_size, folder_class_map, folder_records,
                     parse_options, rel_id, require_dir, resolve_root)

NAME = "folder"
OPTIONS: dict[str, Any] = {
    "train_split": "train",
    "test_split": "test",
    "class_map": None,          # {folder name: canonical name or None}, over labels.FOLDER_NAMES
}


@register_dataset(NAME)
def folder(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """Any image-folder tree: ROOT/<split>/<class>/*.jpg|png (class names via labels.FOLDER_NAMES).

    Options: ``train_split`` (default "train"), ``test_split`` (default "test"),
    ``class_map`` ({folder name: canonical name}, case-insensitive, applied over
    ``labels.FOLDER_NAMES``; a null value ignores that folder), plus on_bad_image,
    max_bad_fraction, cache, workers. The label space is FER8 when some folder maps
    to contempt, else FER7.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    base = resolve_root(NAME, root)
    class_map = folder_class_map(NAME, opts["class_map"])
    records, skipped, where, used = [], [], {}, {}
    for split, key in (("train", "train_split"), ("test", "test_split")):
        path = require_dir(NAME, base, opts[key], f"The {split} split ({key}={opts[key]!r})")
        recs, skip, u = folder_records(NAME, base, path, split, class_map)
        records += recs
        skipped += skip
        used.update(u)
        where[split] = rel_id(base, path) + "/"
    classes = L.FER8 if "contempt" in used.values() else L.FER7
    info = {"label_table": "labels.FOLDER_NAMES" + (" + class_map" if opts["class_map"] else ""),
            "label_mapping": {k: (f"{v} ({classes.index(v)})" if v else "ignored")
                              for k, v in sorted(used.items())},
            "split_dirs": where}
    return build_bundle(NAME, base, image_size, classes, records, opts, info=info, where=where,
                        key_options={"class_map": {k: v for k, v in sorted(used.items())}},
                        skipped=skipped)
