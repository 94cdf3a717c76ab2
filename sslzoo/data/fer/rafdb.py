"""RAF-DB (basic emotion subset) loader.

The official release labels images in ``EmoLabel/list_patition_label.txt``; the
split is in the file name (``train_*`` / ``test_*``). Real sizes: 12,271 train /
3,068 test images, 7 classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle
from .common import (ImageRecord, as_choice, as_int, build_bundle, check_image_size, find_child,
                     layout_error, mapping_info, parse_options, rel_id, resolve_root)

NAME = "rafdb"
REAL_SIZES = {"train": 12271, "test": 3068}
OPTIONS: dict[str, Any] = {
    "variant": "auto",          # auto | partition (official list_patition_label.txt) | list
    "images": "aligned",        # partition variant: aligned | original
    "label_file": "EmoLabel/list_patition_label.txt",   # partition variant
    "train_list": "train_label.txt",                    # list variant
    "test_list": "test_label.txt",                      # list variant
    "label_base": None,         # first label id: 1 for partition, 0 for list (RAF-DB class order)
}


@register_dataset(NAME)
def rafdb(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """RAF-DB basic: EmoLabel/list_patition_label.txt + Image/aligned (7 classes).

    Real sizes: 12,271 train / 3,068 test images. Options: ``variant`` (auto | partition |
    list), ``images`` (aligned | original), ``label_file``, ``train_list`` / ``test_list``
    (list variant: lines ``train/xxx.jpg 3``), ``label_base`` (0 or 1; default 1 for
    partition, 0 for list), plus on_bad_image, max_bad_fraction, cache, workers.
    Labels (1-7 = Surprise Fear Disgust Happiness Sadness Anger Neutral) map through
    ``labels.RAFDB_BASIC`` onto FER7.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    base = resolve_root(NAME, root)
    variant = as_choice(NAME, "variant", opts["variant"], ("auto", "partition", "list"))
    if variant == "auto":
        if find_child(base, opts["label_file"]) is not None:
            variant = "partition"
        elif find_child(base, opts["train_list"]) is not None:
            variant = "list"
        else:
            raise layout_error(NAME, f"rafdb: found neither the official label file "
                                     f"'{base / opts['label_file']}' nor a list file "
                                     f"'{base / opts['train_list']}'.")
    opts["variant"] = variant
    label_base = as_int(NAME, "label_base",
                        opts["label_base"] if opts["label_base"] is not None
                        else (1 if variant == "partition" else 0), 0)
    opts["label_base"] = label_base
    if variant == "partition":
        records, where, key = _partition(base, opts, label_base)
    else:
        records, where, key = _lists(base, opts, label_base)
    own = {i - 1 + label_base: c for i, c in L.RAFDB_BASIC.items()}
    info = {"variant": variant, "label_table": "labels.RAFDB_BASIC",
            "label_mapping": mapping_info(own, L.FER7), "label_files": where,
            "real_sizes": REAL_SIZES}
    return build_bundle(NAME, base, image_size, L.FER7, records, opts, info=info, where=where,
                        key_options=key)


def _label(text: str, label_base: int, file: Path, line_no: int, line: str) -> int:
    try:
        own = int(text)
    except ValueError:
        own = None
    canon = L.RAFDB_BASIC.get(own - label_base + 1) if own is not None else None
    if canon is None:
        valid = f"{label_base}-{label_base + 6}"
        raise layout_error(NAME, f"rafdb: {file}, line {line_no}: unknown label '{text}' in "
                                 f"{line.strip()!r}; expected an integer {valid} (label_base="
                                 f"{label_base}: Surprise Fear Disgust Happiness Sadness Anger "
                                 f"Neutral).")
    return L.canonical_id(canon)


def _read_lines(file: Path):
    try:
        text = file.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise layout_error(NAME, f"rafdb: cannot read the label file '{file}': {exc}.") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise layout_error(NAME, f"rafdb: {file}, line {line_no}: expected '<image> <label>', got "
                                     f"{line.strip()!r}.")
        yield line_no, line, parts[0], parts[1]


def _partition(base: Path, opts: dict, label_base: int):
    label_file = find_child(base, opts["label_file"])
    if label_file is None or not label_file.is_file():
        raise layout_error(NAME, f"rafdb: label file '{base / opts['label_file']}' not found.")
    kind = as_choice(NAME, "images", opts["images"], ("aligned", "original"))
    opts["images"] = kind
    image_dir = find_child(base, f"Image/{kind}")
    if image_dir is None or not image_dir.is_dir():
        other = "original" if kind == "aligned" else "aligned"
        alt = find_child(base, f"Image/{other}")
        hint = (f" '{alt}' exists: pass images={other} to use those images." if alt is not None
                else "")
        raise layout_error(NAME, f"rafdb: image folder '{base / 'Image' / kind}' not found "
                                 f"(images={kind}).{hint}")
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    for line_no, line, name, lab in _read_lines(label_file):
        label = _label(lab, label_base, label_file, line_no, line)
        prefix = name.split("_", 1)[0].lower()
        if prefix not in ("train", "test"):
            raise layout_error(NAME, f"rafdb: {label_file}, line {line_no}: image name '{name}' "
                                     f"starts with neither 'train_' nor 'test_'.")
        if name in seen:
            raise layout_error(NAME, f"rafdb: {label_file}, line {line_no}: '{name}' is listed twice "
                                     f"(first on line {seen[name]}).")
        seen[name] = line_no
        if kind == "aligned":
            stem, ext = name.rsplit(".", 1) if "." in name else (name, "jpg")
            path = image_dir / f"{stem}_aligned.{ext}"
            if not path.exists() and (image_dir / name).exists():
                path = image_dir / name          # aligned copies stored without the suffix
        else:
            path = image_dir / name
        records.append(ImageRecord(rel_id(base, path), path, label, prefix))
    rel = rel_id(base, label_file)
    return records, {"train": rel, "test": rel}, {"variant": "partition", "images": kind,
                                                  "label_base": label_base}


def _lists(base: Path, opts: dict, label_base: int):
    records: list[ImageRecord] = []
    where = {}
    for split in ("train", "test"):
        key = f"{split}_list"
        lst = find_child(base, opts[key])
        if lst is None or not lst.is_file():
            raise layout_error(NAME, f"rafdb: list file '{base / opts[key]}' ({key}) not found.")
        where[split] = rel_id(base, lst)
        seen: dict[str, int] = {}
        for line_no, line, name, lab in _read_lines(lst):
            label = _label(lab, label_base, lst, line_no, line)
            path = (base / name) if not Path(name).is_absolute() else Path(name)
            rid = rel_id(base, path)
            if rid in seen:
                raise layout_error(NAME, f"rafdb: {lst}, line {line_no}: '{name}' is listed twice "
                                         f"(first on line {seen[rid]}).")
            seen[rid] = line_no
            records.append(ImageRecord(rid, path, label, split))
    return records, where, {"variant": "list", "label_base": label_base}
