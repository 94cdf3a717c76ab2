"""Shared pieces of the real FER loaders: options, expected layouts, records -> DataBundle.

Why one place: every loader must fail the same way (``SSLZooError`` that names the
file and shows the expected layout), accept the same bad-image options and go
through the same decode-once cache (``sslzoo.data.cache``), which does the actual
image decoding (``decode_one`` / ``decode_images``).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ...errors import SSLZooError
from .. import labels as L
from ..base import DataBundle, ImageSet
from ..cache import BadImagePolicy, ImageRecord, cached_decode, decode_images  # noqa: F401 (re-export)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})

# Options every file-based loader accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {
    "on_bad_image": "warn",      # warn: skip missing/unreadable files (listed in DataBundle.skipped)
    "max_bad_fraction": 0.01,    # ... but fail when more than this fraction is bad
    "cache": True,               # False: decode into memory, write nothing
    "workers": None,             # decode threads (default: $SSLZOO_DECODE_WORKERS or min(8, CPUs))
}

LAYOUTS: dict[str, str] = {
    "rafdb": """\
ROOT/                                   (variant=partition, the official RAF-DB "basic" release)
  EmoLabel/
    list_patition_label.txt             lines "train_00001.jpg 5" / "test_0001.jpg 7" (labels 1-7:
                                        Surprise Fear Disgust Happiness Sadness Anger Neutral)
  Image/
    aligned/                            train_00001_aligned.jpg ... test_3068_aligned.jpg (images=aligned)
    original/                           train_00001.jpg ... test_3068.jpg (images=original)
or                                      (variant=list, the common re-packaged form)
ROOT/
  train_label.txt                       lines "train/train_00001.jpg 4" (labels 0-6, same order)
  test_label.txt                        lines "test/test_0001.jpg 6"
  train/ test/ ...                      the images, at the paths the list files name""",
    "sfew": """\
ROOT/
  Train/                                (option train_dir)
    Angry/ Disgust/ Fear/ Happy/ Neutral/ Sad/ Surprise/     *.png / *.jpg
  Val/                                  (option test_dir; the paper's test set)
    Angry/ Disgust/ Fear/ Happy/ Neutral/ Sad/ Surprise/     *.png / *.jpg""",
    "affectnet": """\
ROOT/
  training.csv                          (or Manually_Annotated_file_lists/training.csv)
  validation.csv                        header: subDirectory_filePath,face_x,face_y,face_width,
                                        face_height,facial_landmarks,expression,valence,arousal
                                        (expression 0-10: Neutral Happy Sad Surprise Fear Disgust
                                        Anger Contempt None Uncertain Non-Face)
  Manually_Annotated_Images/
    689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg  (= subDirectory_filePath)""",
    "ckplus": """\
ROOT/
  cohn-kanade-images/
    S005/001/S005_001_00000001.png ... S005_001_00000011.png    (one folder per sequence)
  Emotion/
    S005/001/S005_001_00000011_emotion.txt                      content "   3.0000000e+00"
                                        (0-7: neutral anger contempt disgust fear happy sadness surprise;
                                        only labelled sequences are used: first frame = neutral,
                                        last frame = the sequence's label)""",
    "fer2013": """\
ROOT/
  fer2013.csv                           header "emotion,pixels,Usage"; pixels = 2304 space-separated
                                        0-255 values (48x48 grayscale); Usage = Training /
                                        PublicTest / PrivateTest; emotion 0-6: Angry Disgust Fear
                                        Happy Sad Surprise Neutral""",
    "folder": """\
ROOT/
  train/                                (option train_split)
    happy/ sad/ angry/ neutral/ ...     one folder per class: *.jpg *.png *.bmp *.webp ...
  test/                                 (option test_split)
    happy/ sad/ ...
  class folder names (case-insensitive): angry anger contempt disgust disgusted fear fearful happy
  happiness neutral sad sadness surprise surprised (or give class_map={"folder": "canonical name"})""",
}


def layout_hint(name: str) -> str:
    return f"Expected layout for '{name}':\n{LAYOUTS[name]}"


def layout_error(name: str, message: str) -> SSLZooError:
    """An SSLZooError whose message ends with the data set's expected layout."""
    return SSLZooError(f"{message}\n\n{layout_hint(name)}")


def resolve_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None or str(root).strip() == "":
        raise layout_error(name, f"The '{name}' data set is read from disk: pass --data-root PATH "
                                 f"(root=PATH from Python) pointing at the folder that holds it.")
    path = Path(root).expanduser()
    if not path.exists():
        raise layout_error(name, f"--data-root '{root}' does not exist (data set '{name}'): pass "
                                 f"--data-root PATH pointing at the folder that holds it.")
    return path.resolve()


def require_dir(name: str, root: Path, rel: str | Path, what: str) -> Path:
    path = find_child(root, rel)
    if path is None or not path.is_dir():
        raise layout_error(name, f"{what} folder '{root / rel}' was not found.")
    return path


def find_child(parent: Path, rel: str | Path) -> Path | None:
    """``parent/rel`` if it exists, else a case-insensitive match of each part, else None."""
    direct = parent / rel
    if direct.exists():
        return direct
    cur = parent
    for part in Path(rel).parts:
        if not cur.is_dir():
            return None
        match = [c for c in cur.iterdir() if c.name.lower() == part.lower()]
        if len(match) != 1:
            return None
        cur = match[0]
    return cur


# --------------------------------------------------------------------------- options

def parse_options(name: str, options: Mapping[str, Any], accepted: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` over the defaults; an unknown key is an SSLZooError listing the known ones."""
    allowed = {**COMMON_OPTIONS, **accepted}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SSLZooError(f"Unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(u) for u in unknown)} for data set '{name}'. Accepted "
                          f"options: {', '.join(sorted(allowed))}.")
    opts = {**allowed, **options}
    opts["on_bad_image"] = as_choice(name, "on_bad_image", opts["on_bad_image"], ("warn", "error"))
    opts["max_bad_fraction"] = as_float(name, "max_bad_fraction", opts["max_bad_fraction"], 0.0, 1.0)
    opts["cache"] = as_bool(name, "cache", opts["cache"])
    if opts["workers"] is not None:
        opts["workers"] = as_int(name, "workers", opts["workers"], 1)
    return opts


def as_choice(name: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    for c in choices:
        if value == c or str(value).strip().lower() == str(c).lower():
            return c
    raise SSLZooError(f"Option {key}={value!r} for data set '{name}' is not one of "
                      f"{', '.join(str(c) for c in choices)}.")


def as_bool(name: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SSLZooError(f"Option {key}={value!r} for data set '{name}' must be true or false.")


def as_int(name: str, key: str, value: Any, minimum: int | None = None) -> int:
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise SSLZooError(f"Option {key}={value!r} for data set '{name}' must be an integer.") from None
    if isinstance(value, bool) or (minimum is not None and out < minimum):
        raise SSLZooError(f"Option {key}={value!r} for data set '{name}' must be an integer "
                          f">= {minimum}.")
    return out


def as_float(name: str, key: str, value: Any, lo: float, hi: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SSLZooError(f"Option {key}={value!r} for data set '{name}' must be a number.") from None
    if not lo <= out <= hi:
        raise SSLZooError(f"Option {key}={value!r} for data set '{name}' must be in [{lo:g}, {hi:g}].")
    return out


def as_mapping(name: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SSLZooError(f"Option {key} for data set '{name}' must be a mapping (a dict, or JSON "
                              f"like '{{\"Angry\": \"anger\"}}'); got {value!r} ({exc}).") from None
    if not isinstance(value, Mapping):
        raise SSLZooError(f"Option {key} for data set '{name}' must be a mapping; got {value!r}.")
    return dict(value)


def check_image_size(name: str, image_size: Any) -> int:
    size = as_int(name, "image_size", image_size, 8)
    if size > 1024:
        raise SSLZooError(f"image_size={size} for data set '{name}' is too large (at most 1024).")
    return size


# --------------------------------------------------------------------------- labels

def mapping_info(table: Mapping[Any, str | None], classes: Sequence[str], own_id_of=str
                 ) -> dict[str, str]:
    """``{data set id: "canonical name (id)" | "dropped"}`` for ``DataBundle.info``."""
    out = {}
    for own, canon in table.items():
        if canon is None or canon not in classes:
            out[own_id_of(own)] = "dropped"
        else:
            out[own_id_of(own)] = f"{canon} ({classes.index(canon)})"
    return out


def check_classes(name: str, classes: Sequence[str], split_labels: Mapping[str, np.ndarray],
                  where: Mapping[str, str], *, strict_splits: Iterable[str] = ("train",)) -> list[str]:
    """Every class must have images in the strict splits (error); others only warn.

    Returns warnings' texts (also stored in ``info['warnings']``).
    """
    notes = []
    for split, labels in split_labels.items():
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        empty = [classes[c] for c in range(len(classes)) if counts[c] == 0]
        if not empty:
            continue
        text = (f"{name}: class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
                f"{'have' if len(empty) > 1 else 'has'} no images in the {split} split "
                f"(read from {where.get(split, '?')}).")
        if split in strict_splits:
            raise layout_error(name, text + " Every class of the label space "
                                            f"({', '.join(classes)}) needs training images.")
        warnings.warn(text, stacklevel=3)
        notes.append(text)
    return notes


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other non-hidden files) directly inside ``folder``, sorted by name."""
    images, other = [], []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or p.is_dir():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    return images, other


def rel_id(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------- records -> bundle

def build_bundle(name: str, root: Path, image_size: int, classes: tuple[str, ...],
                 records: Sequence[ImageRecord], opts: Mapping[str, Any], *,
                 info: dict[str, Any], where: Mapping[str, str], crop: str = "auto",
                 key_options: Mapping[str, Any] | None = None, train_is_test: bool = False,
                 skipped: Sequence[str] = ()) -> DataBundle:
    """Decode (through the cache) and assemble the DataBundle.

    ``records`` have split ``train`` / ``test`` (or ``all`` when ``train_is_test``:
    then both splits are the same arrays). ``where`` names, per split, the file or
    folder the labels came from (for error messages).
    """
    splits = ("all",) if train_is_test else ("train", "test")
    rec_labels = {s: np.array([r.label for r in records if r.split == s], dtype=np.int64)
                  for s in splits}
    for s in splits:
        if len(rec_labels[s]) == 0:
            raise layout_error(name, f"{name}: the {s} split has no images (read from "
                                     f"{where.get(s, root)}).")
    strict = ("all",) if train_is_test else ("train",)
    check_classes(name, classes, rec_labels, where, strict_splits=strict)   # fail before decoding

    policy = BadImagePolicy(name, opts["on_bad_image"], opts["max_bad_fraction"], layout_hint(name))
    dec = cached_decode(name, root, image_size, records, key_options=dict(key_options or {}),
                        crop=crop, policy=policy, use_cache=opts["cache"], workers=opts["workers"],
                        split_order=splits)

    def part(split: str) -> ImageSet:
        a, b = dec.ranges[split]
        return ImageSet(dec.images[a:b], dec.labels[a:b], dec.ids[a:b])

    if train_is_test:
        train = test = part("all")
    else:
        train, test = part("train"), part("test")
    parts = {"all": train} if train_is_test else {"train": train, "test": test}
    notes = check_classes(name, classes, {s: p.labels for s, p in parts.items()}, where,
                          strict_splits=strict)
    info = dict(info)
    info.setdefault("root", str(root))
    info["image_size"] = image_size
    info["cache"] = dec.cache
    info["options"] = {k: v for k, v in opts.items()}
    if notes:
        info["warnings"] = notes
    return DataBundle(name=name, classes=classes, train=train, test=test,
                      skipped=list(skipped) + dec.skipped, info=info)


def folder_records(name: str, root: Path, split_dir: Path, split: str,
                   class_map: Mapping[str, str | None]) -> tuple[list[ImageRecord], list[str], dict]:
    """Records of a ``split_dir/<class folder>/<image>`` tree.

    ``class_map`` maps lower-cased folder names to canonical names (None = ignore the
    folder). Returns (records, skipped notes, {folder: canonical}) .
    """
    records: list[ImageRecord] = []
    skipped: list[str] = []
    used: dict[str, str | None] = {}
    entries = sorted((p for p in split_dir.iterdir() if not p.name.startswith(".")),
                     key=lambda p: p.name)
    for entry in entries:
        if not entry.is_dir():
            skipped.append(f"{rel_id(root, entry)}: not inside a class folder")
            continue
        key = entry.name.lower()
        if key not in class_map:
            known = sorted(k for k, v in class_map.items() if v is not None)
            raise layout_error(
                name, f"{name}: class folder '{entry}' has a name ('{entry.name}') that maps to no "
                      f"class. Known folder names (case-insensitive): {', '.join(known)}. Map it with "
                      f"class_map={{\"{entry.name}\": \"<one of {', '.join(L.FER8)}>\"}} (or null to "
                      f"ignore the folder).")
        canon = class_map[key]
        used[entry.name] = canon
        if canon is None:
            continue
        images, other = list_images(entry)
        if not images:
            raise layout_error(name, f"{name}: class folder '{entry}' ({canon}) holds no images "
                                     f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
        skipped.extend(f"{rel_id(root, p)}: not an image file extension" for p in other)
        label = L.canonical_id(canon)
        records.extend(ImageRecord(rel_id(root, p), p, label, split) for p in images)
    return records, skipped, used


def folder_class_map(name: str, class_map: Any) -> dict[str, str | None]:
    """labels.FOLDER_NAMES overridden by the user's ``class_map`` (keys lower-cased)."""
    user = as_mapping(name, "class_map", class_map)
    merged: dict[str, str | None] = dict(L.FOLDER_NAMES)
    for folder, canon in user.items():
        if canon is not None:
            canon = str(canon).strip().lower()
            if canon not in L.CANONICAL:
                raise SSLZooError(f"class_map maps folder '{folder}' to '{canon}', which is not a "
                                  f"canonical class. Use one of: {', '.join(L.FER8)} (or null to "
                                  f"ignore the folder).")
        merged[str(folder).lower()] = canon
    return merged
