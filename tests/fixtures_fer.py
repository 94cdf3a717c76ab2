"""Tiny fixtures in the exact on-disk layouts of the real FER data sets.

Every generated image encodes its canonical class in its colour (``class_value``),
so a test can check that pixels and labels stay paired through loading and caching
(``label_of``). Images are a flat class colour plus a small gradient, written as
real JPEG/PNG files with the data sets' real file-name patterns and label formats.

Also a command-line timing script for docs/datasets.md:
    python tests/fixtures_fer.py timing --n 3000 --size 112
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

FER7 = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
FER8 = FER7 + ("contempt",)
CANON = {n: i for i, n in enumerate(FER8)}
RAF_ORDER = FER7                                   # RAF-DB labels 1-7 in this order
SFEW_FOLDERS = {"Angry": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happiness",
                "Neutral": "neutral", "Sad": "sadness", "Surprise": "surprise"}
AFFECTNET_IDS = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4,
                 "disgust": 5, "anger": 6, "contempt": 7}
CKPLUS_IDS = {"neutral": 0, "anger": 1, "contempt": 2, "disgust": 3, "fear": 4, "happiness": 5,
              "sadness": 6, "surprise": 7}
FER2013_IDS = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5,
               "neutral": 6}
BACKGROUND = 128


def class_value(canonical_id: int) -> int:
    """The red-channel value that encodes a canonical class id (20, 50, ..., 230)."""
    return 20 + 30 * int(canonical_id)


def label_of(image: np.ndarray) -> int:
    """Decode the canonical class from an image made by these fixtures (centre pixels)."""
    h, w = image.shape[:2]
    centre = image[h // 4: 3 * h // 4 + 1, w // 4: 3 * w // 4 + 1, 0].astype(np.float64)
    return int(round((centre.mean() - 20) / 30))


def pixels(canonical_id: int, size: tuple[int, int] = (32, 32), seed: int = 0,
           gray: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W] when gray): the class colour plus a small gradient."""
    w, h = size
    v = class_value(canonical_id)
    ramp = (np.add.outer(np.arange(h), np.arange(w)) % 5 - 2 + (seed % 3) - 1).astype(np.int16)
    base = np.clip(v + ramp, 0, 255).astype(np.uint8)
    if gray:
        return base
    g = np.clip(255 - v + ramp, 0, 255).astype(np.uint8)
    b = np.full((h, w), (37 * seed) % 256, dtype=np.uint8)
    return np.stack([base, g, b], axis=-1)


def write_image(path: str | os.PathLike, canonical_id: int, size: tuple[int, int] = (32, 32),
                seed: int = 0, gray: bool = False) -> Path:
    """Write a class-coloured image; format from the extension (.jpg -> JPEG q95)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = pixels(canonical_id, size, seed, gray)
    img = Image.fromarray(arr, "L" if gray else "RGB")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, "JPEG", quality=95)
    else:
        img.save(path)
    return path


def truncate(path: str | os.PathLike, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def garbage(path: str | os.PathLike) -> Path:
    """Overwrite a file with bytes that are no image at all."""
    path = Path(path)
    path.write_bytes(b"this is not an image\n" * 20)
    return path


def _counts(per_class: int | Mapping[str, int], names: Iterable[str]) -> dict[str, int]:
    if isinstance(per_class, int):
        return {n: per_class for n in names}
    return {n: int(per_class.get(n, 0)) for n in names}


# --------------------------------------------------------------------------- RAF-DB

def make_rafdb(root: str | os.PathLike, train: int | Mapping[str, int] = 2,
               test: int | Mapping[str, int] = 1, *, images: str = "aligned",
               variant: str = "partition", size: tuple[int, int] = (24, 24)) -> dict:
    """RAF-DB basic. ``images``: aligned | original | both. ``variant``: partition | list.

    partition: EmoLabel/list_patition_label.txt ("train_00001.jpg 5", labels 1-7) and
    Image/aligned/train_00001_aligned.jpg (and/or Image/original/train_00001.jpg).
    list: train_label.txt / test_label.txt ("train/train_00001.jpg 4", labels 0-6) with
    the images at train/... and test/....
    Returns {"train": {class: n}, "test": {class: n}, "files": {id: canonical id}}.
    """
    root = Path(root)
    out = {"train": _counts(train, FER7), "test": _counts(test, FER7), "files": {}}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, digits in (("train", 5), ("test", 4)):
        k = 0
        # interleave classes, as in the real (name-sorted) label file
        todo = [c for c in RAF_ORDER for _ in range(out[split][c])]
        order = sorted(range(len(todo)), key=lambda i: (i % 3, i))
        for i in order:
            cls = todo[i]
            k += 1
            cid = CANON[cls]
            raf = RAF_ORDER.index(cls) + 1
            name = f"{split}_{k:0{digits}d}.jpg"
            if variant == "partition":
                lines[split].append(f"{name} {raf}")
                if images in ("aligned", "both"):
                    rel = f"Image/aligned/{split}_{k:0{digits}d}_aligned.jpg"
                    write_image(root / rel, cid, size, seed=k)
                    out["files"][rel] = cid
                if images in ("original", "both"):
                    rel = f"Image/original/{name}"
                    write_image(root / rel, cid, (size[0] * 2, size[1] * 2), seed=k)
                    if images == "original":
                        out["files"][rel] = cid
            else:
                rel = f"{split}/{name}"
                lines[split].append(f"{rel} {raf - 1}")
                write_image(root / rel, cid, size, seed=k)
                out["files"][rel] = cid
    if variant == "partition":
        (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
        (root / "EmoLabel" / "list_patition_label.txt").write_text(
            "\n".join(lines["train"] + lines["test"]) + "\n")
    else:
        for split in ("train", "test"):
            (root / f"{split}_label.txt").write_text("\n".join(lines[split]) + "\n")
    return out


# --------------------------------------------------------------------------- SFEW 2.0

def make_sfew(root: str | os.PathLike, train: int | Mapping[str, int] = 2,
              val: int | Mapping[str, int] = 1, *, size: tuple[int, int] = (36, 28)) -> dict:
    """SFEW 2.0: Train/<Angry|...>/Movie_000123456_00000012.png and Val/<...>/...."""
    root = Path(root)
    out = {"Train": _counts(train, SFEW_FOLDERS), "Val": _counts(val, SFEW_FOLDERS)}
    k = 0
    for split in ("Train", "Val"):
        for folder, cls in SFEW_FOLDERS.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for j in range(out[split][folder]):
                k += 1
                write_image(root / split / folder / f"Airheads_{k:09d}_{j + 1:08d}.png",
                            CANON[cls], size, seed=k)
    return out


# --------------------------------------------------------------------------- AffectNet

AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]
FACE_BOX = (20, 10, 30, 30)          # x, y, w, h inside an 80x60 photo


def write_face_photo(path: Path, canonical_id: int, size: tuple[int, int] = (80, 60),
                     box: tuple[int, int, int, int] = FACE_BOX, seed: int = 0) -> Path:
    """A grey photo whose face box is filled with the class colour."""
    w, h = size
    arr = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
    x, y, bw, bh = box
    arr[y:y + bh, x:x + bw] = pixels(canonical_id, (bw, bh), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, "JPEG", quality=95)
    return path


def make_affectnet(root: str | os.PathLike, train: int | Mapping[str, int] = 2,
                   val: int | Mapping[str, int] = 1, *, dropped: int = 1,
                   precropped: bool = False, csv_dir: str = "") -> dict:
    """AffectNet: training.csv / validation.csv + Manually_Annotated_Images/<dir>/<sha1>.jpg.

    Each listed class (8, with contempt) gets ``train`` / ``val`` images; ``dropped`` rows
    per split carry expressions 8, 9 and 10 each. With ``precropped`` the files are
    the face crops themselves (30x30) while the CSV keeps the photo's box.
    """
    root = Path(root)
    names = list(AFFECTNET_IDS)
    out = {"training": _counts(train, names), "validation": _counts(val, names), "files": {}}
    k = 0
    for csv_name in ("training", "validation"):
        rows = []
        plan = [(AFFECTNET_IDS[c], CANON[c]) for c in names for _ in range(out[csv_name][c])]
        plan += [(e, None) for e in (8, 9, 10) for _ in range(dropped)]
        for expr, cid in plan:
            k += 1
            sub = str(100 + k % 7)
            fname = hashlib.sha1(f"{csv_name}{k}".encode()).hexdigest() + ".jpg"
            rel = f"{sub}/{fname}"
            path = root / "Manually_Annotated_Images" / sub / fname
            colour_id = cid if cid is not None else 6
            if precropped:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels(colour_id, FACE_BOX[2:], k), "RGB").save(path, "JPEG",
                                                                                 quality=95)
            else:
                write_face_photo(path, colour_id, seed=k)
            if cid is not None:
                out["files"]["Manually_Annotated_Images/" + rel] = cid
            landmarks = ";".join(f"{v:.2f}" for v in np.linspace(20, 50, 136))
            rows.append([rel, *FACE_BOX, landmarks, expr, "0.25", "-0.1"])
        folder = root / csv_dir if csv_dir else root
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{csv_name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(AFFECTNET_HEADER)
            writer.writerows(rows)
    return out


# --------------------------------------------------------------------------- CK+

def make_ckplus(root: str | os.PathLike, sequences: list[tuple[str, str, int, int | None]] | None = None,
                *, size: tuple[int, int] = (40, 30)) -> dict:
    """CK+: cohn-kanade-images/S005/001/S005_001_00000001.png + Emotion/.../*_emotion.txt.

    ``sequences``: (subject, sequence, frames, CK+ emotion 0-7 or None = unlabelled).
    Default: one labelled sequence per emotion 1-7, plus one unlabelled sequence. Frames
    are 8-bit grayscale PNGs; the first shows the neutral colour, the last the label's.
    """
    root = Path(root)
    if sequences is None:
        sequences = [(f"S{10 + e:03d}", "001", 3 + e % 3, e) for e in range(1, 8)]
        sequences.append(("S099", "002", 4, None))
    by_id = {v: k for k, v in CKPLUS_IDS.items()}
    for subj, seq, frames, emo in sequences:
        d = root / "cohn-kanade-images" / subj / seq
        for f in range(1, frames + 1):
            if f == 1:
                cid = CANON["neutral"]
            elif f == frames and emo is not None:
                cid = CANON[by_id[emo]]
            else:
                cid = CANON["fear"] if emo != CKPLUS_IDS["fear"] else CANON["disgust"]
            write_image(d / f"{subj}_{seq}_{f:08d}.png", cid, size, seed=f, gray=True)
        if emo is not None:
            e = root / "Emotion" / subj / seq
            e.mkdir(parents=True, exist_ok=True)
            (e / f"{subj}_{seq}_{frames:08d}_emotion.txt").write_text(f"   {float(emo):.7e}\n")
    (root / "Emotion").mkdir(parents=True, exist_ok=True)
    return {"sequences": sequences}


# --------------------------------------------------------------------------- FER2013

def make_fer2013(root: str | os.PathLike, per_class: Mapping[str, int] | None = None) -> dict:
    """fer2013.csv: emotion,pixels,Usage with 48x48 grayscale rows; per_class per Usage."""
    root = Path(root)
    per_class = dict(per_class or {"Training": 2, "PublicTest": 1, "PrivateTest": 1})
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    with open(root / "fer2013.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for usage in ("Training", "PublicTest", "PrivateTest"):
            for cls, own in FER2013_IDS.items():
                for _ in range(per_class.get(usage, 0)):
                    k += 1
                    arr = pixels(CANON[cls], (48, 48), k, gray=True)
                    writer.writerow([own, " ".join(map(str, arr.ravel().tolist())), usage])
    return {"per_class": per_class}


# --------------------------------------------------------------------------- image folders

def make_folder(root: str | os.PathLike, splits: Mapping[str, Mapping[str, int]] | None = None,
                *, class_to_canonical: Mapping[str, str] | None = None,
                size: tuple[int, int] = (32, 32), ext: str = ".jpg") -> dict:
    """ROOT/<split>/<class folder>/img_00001.jpg. ``class_to_canonical`` gives the colour
    of folders whose names are not canonical-ish (default: labels.FOLDER_NAMES)."""
    from sslzoo.data.labels import FOLDER_NAMES
    root = Path(root)
    splits = splits or {"train": {"happy": 2, "sad": 2, "angry": 2, "neutral": 2, "surprise": 2,
                                  "fear": 2, "disgust": 2},
                        "test": {"happy": 1, "sad": 1, "angry": 1, "neutral": 1, "surprise": 1,
                                 "fear": 1, "disgust": 1}}
    mapping = {**FOLDER_NAMES, **{k.lower(): v for k, v in (class_to_canonical or {}).items()}}
    k = 0
    for split, classes in splits.items():
        for folder, n in classes.items():
            d = root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            cid = CANON.get(mapping.get(folder.lower(), "neutral"), 6)
            for _ in range(n):
                k += 1
                write_image(d / f"img_{k:05d}{ext}", cid, size, seed=k)
    return {"splits": splits}


# --------------------------------------------------------------------------- timing script

def _timing(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import shutil
    import sys
    import tempfile
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description="Time a first (decoding) and a cached load.")
    parser.add_argument("--n", type=int, default=3000, help="number of JPEGs (default 3000)")
    parser.add_argument("--src", type=int, default=100, help="JPEG side in pixels (default 100)")
    parser.add_argument("--size", type=int, default=112, help="image_size (default 112)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)

    work = Path(args.dir or tempfile.mkdtemp(prefix="sslzoo-timing-"))
    data, cache = work / "data", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["SSLZOO_CACHE"] = str(cache)
    classes = ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]
    n_test = args.n // 5
    if not data.exists():
        rng = np.random.default_rng(0)
        for i in range(args.n):
            split = "test" if i < n_test else "train"
            d = data / split / classes[i % 7]
            d.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(0, 256, (args.src, args.src, 3), dtype=np.uint8)
            grad = np.linspace(0, 255, args.src, dtype=np.float32)[None, :, None]
            img = (0.5 * noise + 0.5 * grad).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{i:05d}.jpg", "JPEG", quality=90)
    from sslzoo.data.fer.folder import folder as load_folder
    opts = {"workers": args.workers} if args.workers else {}
    t0 = time.perf_counter()
    first = load_folder(root=str(data), image_size=args.size, **opts)
    t1 = time.perf_counter()
    second = load_folder(root=str(data), image_size=args.size, **opts)
    t2 = time.perf_counter()
    assert not first.info["cache"]["hit"] and second.info["cache"]["hit"]
    n = len(first.train) + len(first.test)
    print(json.dumps({"images": n, "source_px": args.src, "image_size": args.size,
                      "cpus": os.cpu_count(), "workers": args.workers or "default",
                      "first_load_s": round(t1 - t0, 3), "cached_load_s": round(t2 - t1, 3),
                      "first_images_per_s": round(n / (t1 - t0)),
                      "cache_bytes": first.info["cache"]["bytes"], "work_dir": str(work)}, indent=1))


if __name__ == "__main__":
    import sys as _sys
    if len(_sys.argv) > 1 and _sys.argv[1] == "timing":
        _timing(_sys.argv[2:])
    else:
        print(__doc__)
