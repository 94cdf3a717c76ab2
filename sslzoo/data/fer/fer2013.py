"""FER2013 loader: the single ``fer2013.csv`` (``emotion,pixels,Usage``).

There are no image files: each row holds 48x48 grayscale pixels as text. Rows are
parsed and resized once into the decode cache (keyed by the CSV's size and mtime),
so later runs read neither the CSV's pixels nor decode anything.
"""
from __future__ import annotations

import csv
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle, ImageSet
from ..cache import (CACHE_FORMAT, DECODER_VERSION, allocate, check_free_space, finalize_rows,
                     get_or_build, make_key)
from .common import (BadImagePolicy, as_choice, check_classes, check_image_size, layout_error,
                     layout_hint, mapping_info, parse_options, resolve_root)

NAME = "fer2013"
USAGES = ("Training", "PublicTest", "PrivateTest")
REAL_SIZES = {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
SIDE = 48
OPTIONS: dict[str, Any] = {
    "test_split": "PrivateTest",    # PrivateTest | PublicTest
    "csv": "fer2013.csv",
}


@register_dataset(NAME)
def fer2013(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """FER2013: fer2013.csv (48x48 grayscale pixels as text); train = Training, test = PrivateTest.

    Emotion ids 0-6 (Angry Disgust Fear Happy Sad Surprise Neutral) map through
    ``labels.FER2013`` onto FER7. Real sizes: 28,709 Training / 3,589 PublicTest /
    3,589 PrivateTest rows. Options: ``test_split`` (PrivateTest default | PublicTest;
    the other test usage is unused), ``csv`` (file name under ROOT; ROOT may also be
    the CSV itself), plus on_bad_image, max_bad_fraction (for malformed pixel rows) and
    cache. Grayscale becomes 3-channel.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    test_usage = as_choice(NAME, "test_split", opts["test_split"], ("PrivateTest", "PublicTest"))
    opts["test_split"] = test_usage
    base = resolve_root(NAME, root)
    if base.is_file():
        csv_path, base = base, base.parent
    else:
        csv_path = base / opts["csv"]
        if not csv_path.is_file():
            raise layout_error(NAME, f"fer2013: '{csv_path}' not found.")
    rel = csv_path.name if csv_path.parent == base else str(csv_path)
    st = csv_path.stat()
    head = {"loader": NAME, "root": str(base), "csv": str(csv_path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "image_size": image_size, "test_split": test_usage,
            "decoder": DECODER_VERSION, "format": CACHE_FORMAT}
    key = make_key(NAME, image_size, hashlib.sha256(json.dumps(head, sort_keys=True).encode())
                   .hexdigest())
    policy = BadImagePolicy(NAME, opts["on_bad_image"], opts["max_bad_fraction"], layout_hint(NAME))

    def build(tmp: Path | None):
        return _build(csv_path, rel, image_size, test_usage, tmp, policy, base)

    entry = get_or_build(key, build, policy=policy, root=base, use_cache=opts["cache"])
    meta = entry.meta
    labels = np.asarray(meta["labels"], dtype=np.int64)
    ranges = meta["ranges"]
    parts = {}
    for split in ("train", "test"):
        a, b = ranges.get(split, (0, 0))
        parts[split] = ImageSet(entry.images[a:b], labels[a:b], meta["ids"][a:b])
    where = {"train": f"{rel} (Usage=Training)", "test": f"{rel} (Usage={test_usage})"}
    for split, part in parts.items():
        if len(part) == 0:
            raise layout_error(NAME, f"fer2013: no usable rows with Usage="
                                     f"{'Training' if split == 'train' else test_usage} in '{csv_path}'.")
    notes = check_classes(NAME, L.FER7, {s: p.labels for s, p in parts.items()}, where)
    info = {"label_table": "labels.FER2013", "label_mapping": mapping_info(L.FER2013, L.FER7),
            "csv": rel, "usage": {"train": "Training", "test": test_usage},
            "rows_per_usage": meta.get("rows_per_usage"), "image_size": image_size,
            "real_sizes": {"train": REAL_SIZES["Training"], "test": REAL_SIZES[test_usage]},
            "cache": entry.info(), "options": opts, "root": str(base)}
    if notes:
        info["warnings"] = notes
    return DataBundle(name=NAME, classes=L.FER7, train=parts["train"], test=parts["test"],
                      skipped=[f"{i}: {why}" for i, why in meta["skipped"]], info=info)


def _rows(csv_path: Path):
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise layout_error(NAME, f"fer2013: cannot read '{csv_path}': {exc}.") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in (next(reader, None) or [])]
        need = ("emotion", "pixels", "Usage")
        if any(c not in header for c in need):
            raise layout_error(NAME, f"fer2013: '{csv_path}' must have the header "
                                     f"'emotion,pixels,Usage'; got {','.join(header)!r}.")
        ie, ip, iu = (header.index(c) for c in need)
        for line_no, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(ie, ip, iu):
                raise layout_error(NAME, f"fer2013: {csv_path}, line {line_no}: expected 3 columns, "
                                         f"got {len(row)}.")
            yield line_no, row[ie].strip(), row[ip], row[iu].strip()


def _build(csv_path: Path, rel: str, image_size: int, test_usage: str, tmp: Path | None,
           policy: BadImagePolicy, base: Path):
    t0 = time.perf_counter()
    # pass 1: labels and usages (validates every row before anything is written)
    plan: dict[str, list[tuple[int, int]]] = {"train": [], "test": []}
    per_usage = {u: 0 for u in USAGES}
    for line_no, emo, _, usage in _rows(csv_path):
        if usage not in per_usage:
            raise layout_error(NAME, f"fer2013: {csv_path}, line {line_no}: unknown Usage "
                                     f"'{usage}'; expected one of {', '.join(USAGES)}.")
        try:
            own = int(emo)
        except ValueError:
            own = None
        if own not in L.FER2013:
            raise layout_error(NAME, f"fer2013: {csv_path}, line {line_no}: unknown emotion id "
                                     f"'{emo}'; expected 0-6 (Angry Disgust Fear Happy Sad Surprise "
                                     f"Neutral).")
        per_usage[usage] += 1
        split = "train" if usage == "Training" else ("test" if usage == test_usage else None)
        if split:
            plan[split].append((line_no, L.canonical_id(L.FER2013[own])))
    rows = plan["train"] + plan["test"]
    row_of = {line_no: i for i, (line_no, _) in enumerate(rows)}
    shape = (len(rows), image_size, image_size, 3)
    if tmp is not None:
        check_free_space(tmp, int(np.prod(shape)), f"{len(rows)} FER2013 images")
    buf = allocate(tmp, "decode.npy", shape)
    bad: dict[int, str] = {}
    # pass 2: pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for line_no, _, pixels, _ in _rows(csv_path):
            i = row_of.get(line_no)
            if i is None:
                continue
            arr = np.fromstring(pixels, dtype=np.int32, sep=" ")
            if arr.size != SIDE * SIDE or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
                bad[i] = (f"pixels must be {SIDE * SIDE} space-separated values 0-255; "
                          f"got {arr.size} values" + ("" if arr.size != SIDE * SIDE else
                                                       " with some outside 0-255"))
                continue
            img = Image.fromarray(arr.astype(np.uint8).reshape(SIDE, SIDE), "L")
            if image_size != SIDE:
                img = img.resize((image_size, image_size), Image.BILINEAR)
            buf[i] = np.asarray(img.convert("RGB"))
    ids = [f"{rel}#line={line_no}" for line_no, _ in rows]
    split_of = ["train"] * len(plan["train"]) + ["test"] * len(plan["test"])
    skipped = [(ids[i], why) for i, why in sorted(bad.items())]
    keep = [i for i in range(len(rows)) if i not in bad]
    if bad:   # fail before copying anything
        policy.check(skipped, len(rows), root=base, warn=False)
    images = finalize_rows(tmp, buf, keep)
    n_train = sum(1 for i in keep if split_of[i] == "train")
    meta = {"loader": NAME, "root": str(base), "image_size": image_size,
            "labels": [rows[i][1] for i in keep], "ids": [ids[i] for i in keep],
            "ranges": {"train": [0, n_train], "test": [n_train, len(keep)]},
            "skipped": [list(s) for s in skipped], "total": len(rows),
            "rows_per_usage": per_usage, "decode_seconds": round(time.perf_counter() - t0, 3)}
    return images, meta
