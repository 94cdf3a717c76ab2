"""CK+ (Extended Cohn-Kanade) loader, as a cross-data-set test set.

For every sequence that has an emotion file, the first frame is taken as neutral
and the last frame carries the sequence's label (the paper's protocol); sequences
without an emotion file are unlabelled and unused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...registry import register_dataset
from .. import labels as L
from ..base import DataBundle
from .common import (IMAGE_EXTENSIONS, BadImagePolicy, ImageRecord, as_bool, build_bundle,
                     check_image_size, find_child, layout_error, layout_hint, mapping_info,
                     parse_options, rel_id, resolve_root)

NAME = "ckplus"
REAL_SIZES = {7: 618, 8: 654}     # 309 / 327 labelled sequences x 2 frames
OPTIONS: dict[str, Any] = {
    "keep_contempt": False,     # True: keep contempt sequences, label space FER8
    "images_dir": "cohn-kanade-images",
    "emotion_dir": "Emotion",
}


@register_dataset(NAME)
def ckplus(*, root: str | None = None, image_size: int = 224, **options: Any) -> DataBundle:
    """CK+: cohn-kanade-images + Emotion labels; first frame = neutral, last = label (test set).

    CK+ has no official split and the paper uses it only as a cross-data-set test set:
    ``train`` and ``test`` are the same images (do not report train-on-CK+ numbers
    without your own subject-wise split). Emotion ids 0-7 map through ``labels.CKPLUS``.
    Options: ``keep_contempt`` (false: drop contempt sequences, FER7, 309 sequences ->
    618 images; true: FER8, 327 -> 654), ``images_dir``, ``emotion_dir``, plus
    on_bad_image, max_bad_fraction, cache, workers. Grayscale frames become 3-channel.
    """
    image_size = check_image_size(NAME, image_size)
    opts = parse_options(NAME, options, OPTIONS)
    keep = as_bool(NAME, "keep_contempt", opts["keep_contempt"])
    opts["keep_contempt"] = keep
    classes = L.FER8 if keep else L.FER7
    base = resolve_root(NAME, root)
    img_root = find_child(base, opts["images_dir"])
    emo_root = find_child(base, opts["emotion_dir"])
    for path, key in ((img_root, "images_dir"), (emo_root, "emotion_dir")):
        if path is None or not path.is_dir():
            raise layout_error(NAME, f"ckplus: folder '{base / opts[key]}' ({key}) not found.")
    records: list[ImageRecord] = []
    skipped: list[str] = []
    n_seq, n_contempt = 0, 0
    emotion_files = sorted(emo_root.glob("*/*/*_emotion.txt"))
    if not emotion_files:
        raise layout_error(NAME, f"ckplus: no emotion files (*/*/*_emotion.txt) under '{emo_root}'.")
    seen_dirs: dict[Path, Path] = {}
    for emo in emotion_files:
        seq_rel = emo.parent.relative_to(emo_root)
        if emo.parent in seen_dirs:
            raise layout_error(NAME, f"ckplus: sequence '{seq_rel}' has two emotion files: "
                                     f"'{seen_dirs[emo.parent]}' and '{emo}'.")
        seen_dirs[emo.parent] = emo
        own = _read_emotion(emo)
        canon = L.CKPLUS[own]
        if canon not in classes:
            n_contempt += 1
            continue
        seq_dir = img_root / seq_rel
        frames = _frames(seq_dir)
        if not frames:
            skipped.append(f"{rel_id(base, seq_dir)}/: labelled by {rel_id(base, emo)} but the "
                           f"sequence folder has no frames")
            continue
        if len(frames) < 2:
            skipped.append(f"{rel_id(base, frames[0])}: the only frame of a labelled sequence "
                           f"(neither neutral nor peak)")
            continue
        n_seq += 1
        records.append(ImageRecord(rel_id(base, frames[0]), frames[0],
                                   L.canonical_id("neutral"), "all"))
        records.append(ImageRecord(rel_id(base, frames[-1]), frames[-1],
                                   L.canonical_id(canon), "all"))
    if skipped:
        BadImagePolicy(NAME, opts["on_bad_image"], opts["max_bad_fraction"], layout_hint(NAME)) \
            .check([tuple(s.split(": ", 1)) for s in skipped], n_seq * 2 + len(skipped), root=base)
    info = {"label_table": "labels.CKPLUS", "label_mapping": mapping_info(L.CKPLUS, classes),
            "sequences_used": n_seq, "contempt_sequences_dropped": n_contempt,
            "unlabelled_sequences": "ignored", "train_is_test": True,
            "protocol": "first frame = neutral, last frame = sequence label",
            "real_sizes": {"all": REAL_SIZES[8 if keep else 7]}}
    where = {"all": rel_id(base, emo_root) + "/"}
    return build_bundle(NAME, base, image_size, classes, records, opts, info=info, where=where,
                        key_options={"keep_contempt": keep}, train_is_test=True, skipped=skipped)


def _read_emotion(path: Path) -> int:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as exc:
        raise layout_error(NAME, f"ckplus: cannot read emotion file '{path}': {exc}.") from None
    try:
        value = float(text.split()[0]) if text else float("nan")
    except ValueError:
        value = float("nan")
    own = int(round(value)) if math.isfinite(value) else None
    if own is None or abs(value - own) > 1e-6 or own not in L.CKPLUS:
        raise layout_error(NAME, f"ckplus: emotion file '{path}' holds {text[:60]!r}; expected one "
                                 f"number 0-7 like '   3.0000000e+00' (0 neutral, 1 anger, 2 contempt, "
                                 f"3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise).")
    return own


def _frames(seq_dir: Path) -> list[Path]:
    if not seq_dir.is_dir():
        return []
    return sorted((p for p in seq_dir.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
                  key=lambda p: p.name)
