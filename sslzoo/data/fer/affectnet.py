"""AffectNet (manually annotated part) loader.

``training.csv`` / ``validation.csv`` list every image with its face box and an
expression id 0-10; 8-10 (None, Uncertain, Non-Face) are not expressions and are
dropped, 7 (contempt) is kept only in the 8-class setting. The validation set
(500 images per class) is the test set, as in the paper.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle
from .common import (ImageRecord, as_choice, build_bundle, check_image_size, find_child,
                     layout_error, mapping_info, parse_options, rel_id, resolve_root)

NAME = "affectnet"
REAL_SIZES = {8: {"train": 287651, "test": 4000}, 7: {"train": 283901, "test": 3500}}
CSV_DIRS = ("", "Manually_Annotated_file_lists")
REQUIRED = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
OPTIONS: dict[str, Any] = {
    "num_classes": 8,           # 8 = with contempt (the paper's setting) | 7
    "crop": "auto",             # auto | always | never: crop to the face box
    "image_dir": "Manually_Annotated_Images",
    "train_csv": "training.csv",
    "test_csv": "validation.csv",
}


@register_dataset(NAME)
def affectnet(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """AffectNet manual: training.csv / validation.csv + Manually_Annotated_Images (8 or 7 classes).

    Test = validation.csv (500 per class). Expression ids 0-10 map through
    ``labels.AFFECTNET``; 8-10 are dropped, and 7 (contempt) too when num_classes=7.
    Options: ``num_classes`` (8 default, the paper's setting | 7), ``crop`` (auto: crop
    to the face box when the image is larger than the box | always | never),
    ``image_dir``, ``train_csv``, ``test_csv`` (looked up in ROOT, then in
    ROOT/Manually_Annotated_file_lists/), plus on_bad_image, max_bad_fraction, cache,
    workers. Real sizes (8 classes): about 287,651 train / 4,000 test images.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    base = resolve_root(NAME, root)
    num_classes = as_choice(NAME, "num_classes", opts["num_classes"], (8, 7))
    crop = as_choice(NAME, "crop", opts["crop"], ("auto", "always", "never"))
    opts.update(num_classes=num_classes, crop=crop)
    classes = L.FER8 if num_classes == 8 else L.FER7
    image_dir = find_child(base, opts["image_dir"])
    if image_dir is None or not image_dir.is_dir():
        raise layout_error(NAME, f"affectnet: image folder '{base / opts['image_dir']}' not found.")
    records: list[ImageRecord] = []
    where: dict[str, str] = {}
    dropped: dict[str, dict[str, int]] = {}
    for split, key in (("train", "train_csv"), ("test", "test_csv")):
        csv_path = _find_csv(base, opts[key], key)
        where[split] = rel_id(base, csv_path)
        recs, drop = _read_csv(base, csv_path, image_dir, split, classes)
        records += recs
        dropped[split] = drop
    info = {"label_table": "labels.AFFECTNET",
            "label_mapping": mapping_info(L.AFFECTNET, classes), "label_files": where,
            "dropped": dropped, "crop": crop, "real_sizes": REAL_SIZES[num_classes]}
    return build_bundle(NAME, base, image_size, classes, records, opts, info=info, where=where,
                        crop=crop, key_options={"num_classes": num_classes, "crop": crop})


def _find_csv(base: Path, name: str, key: str) -> Path:
    for sub in CSV_DIRS:
        p = find_child(base, Path(sub) / name) if sub else find_child(base, name)
        if p is not None and p.is_file():
            return p
    raise layout_error(NAME, f"affectnet: label file '{name}' ({key}) not found in '{base}' or "
                             f"'{base / CSV_DIRS[1]}'.")


def _read_csv(base: Path, csv_path: Path, image_dir: Path, split: str,
              classes: tuple[str, ...]) -> tuple[list[ImageRecord], dict[str, int]]:
    records: list[ImageRecord] = []
    dropped: dict[str, int] = {}
    names = {0: "Neutral", 1: "Happy", 2: "Sad", 3: "Surprise", 4: "Fear", 5: "Disgust",
             6: "Anger", 7: "Contempt", 8: "None", 9: "Uncertain", 10: "Non-Face"}
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise layout_error(NAME, f"affectnet: cannot read '{csv_path}': {exc}.") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise layout_error(NAME, f"affectnet: '{csv_path}' is empty.")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise layout_error(NAME, f"affectnet: '{csv_path}' lacks the column(s) "
                                     f"{', '.join(missing)} (its header is {','.join(header)!r}).")
        col = {c: header.index(c) for c in REQUIRED}
        seen: set[str] = set()
        for line_no, row in enumerate(reader, 2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                rel = row[col["subDirectory_filePath"]].strip()
                expr_text = row[col["expression"]].strip()
                box = tuple(float(row[col[c]]) for c in ("face_x", "face_y", "face_width",
                                                          "face_height"))
            except (IndexError, ValueError) as exc:
                raise layout_error(NAME, f"affectnet: {csv_path}, line {line_no}: malformed row "
                                         f"({exc}): {','.join(row)[:200]!r}.") from None
            try:
                expr = int(float(expr_text))
                if float(expr_text) != expr:
                    raise ValueError
            except ValueError:
                expr = None
            if expr not in L.AFFECTNET:
                raise layout_error(NAME, f"affectnet: {csv_path}, line {line_no}: unknown expression "
                                         f"id '{expr_text}' for '{rel}'; expected 0-10 (" +
                                         ", ".join(f"{k}={v}" for k, v in names.items()) + ").")
            canon = L.AFFECTNET[expr]
            if canon is None or canon not in classes:
                key = f"{expr} ({names[expr]})"
                dropped[key] = dropped.get(key, 0) + 1
                continue
            path = image_dir / rel
            rid = rel_id(base, path)
            if rid in seen:   # the same file listed twice: keep the first
                dropped["duplicate rows"] = dropped.get("duplicate rows", 0) + 1
                continue
            seen.add(rid)
            records.append(ImageRecord(rid, path, L.canonical_id(canon), split, box))
    return records, dropped
