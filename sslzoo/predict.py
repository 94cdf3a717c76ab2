"""A finished run's model on your images: ``sslzoo predict RUN_DIR IMAGES...`` and ``Run.predict``.

Why a module: turning what a user points at (files, folders, glob patterns, PIL images, uint8
arrays) into the run's input is the one step the evaluation path does not do. Files are decoded
by the data sets' own decoder (:func:`sslzoo.data.cache.decode_images`: RGB, PIL bilinear resize to
the run's image size). There is no face-box crop: images are expected to be aligned face crops,
as in the data sets. The decoded images then go through ``Run.predict_set`` (the trainer's
evaluation path: same normalisation, batches, device, autocast), so a run's own test images
written out as files get exactly the probabilities its evaluation computed.

A file that is not a readable image is skipped and reported with its reason; only when nothing
is readable is that an error.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from .data.base import ImageSet
from .data.cache import decode_images
from .data.user import to_hwc_uint8
from .errors import SSLZooError
from .io import atomic_write, write_json

CHUNK = 1024                  # images decoded and held in memory at once
_GLOB_CHARS = ("*", "?", "[")

Source = Path | io.BytesIO | np.ndarray   # a file, an encoded in-memory image, or pixels at the run's size


@dataclass
class Predictions:
    """What :meth:`sslzoo.runs.Run.predict` returns: one row per readable image, and what was skipped."""

    paths: list[str]                  # the file of each prediction, or "<image i>" for an in-memory image
    probs: Tensor                     # softmax probabilities [N, C], on the CPU
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why) of inputs left out

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def predicted(self) -> list[str]:
        """The predicted class name of each image."""
        return [self.classes[i] for i in self.probs.argmax(dim=1).tolist()]

    @property
    def confidence(self) -> Tensor:
        """The probability of each image's predicted class."""
        return self.probs.max(dim=1).values

    def topk(self, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable classes of each image, as (class name, probability), best first."""
        if k < 1:
            raise SSLZooError(f"top-k needs k >= 1; got {k}.")
        values, index = self.probs.topk(min(k, len(self.classes)), dim=1)
        return [[(self.classes[c], float(p)) for c, p in zip(ci, pi)] for ci, pi in zip(index.tolist(), values.tolist())]

    def rows(self, k: int = 1) -> list[dict[str, Any]]:
        """One dict per image: path, predicted class, confidence, top-k and every class's probability."""
        return [{"path": path, "predicted": top[0][0], "confidence": top[0][1],
                 "top_k": [{"class": c, "prob": p} for c, p in top],
                 "probs": dict(zip(self.classes, (float(v) for v in probs)))}
                for path, top, probs in zip(self.paths, self.topk(k), self.probs.tolist())]

    def format_table(self, k: int = 1) -> str:
        """A plain-text table: path, class, confidence (and the top-k when k > 1)."""
        rows = self.rows(k)
        width = max([4, *(len(r["path"]) for r in rows)])
        cls = max([5, *(len(c) for c in self.classes)])
        head = f"{'path':<{width}}  {'class':<{cls}}  confidence" + (f"  top-{k}" if k > 1 else "")
        lines = [head]
        for r in rows:
            line = f"{r['path']:<{width}}  {r['predicted']:<{cls}}  {r['confidence']:>10.3f}"
            if k > 1:
                line += "  " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top_k"])
            lines.append(line)
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> None:
        """path, predicted, confidence, then ``prob_<class>`` per class; written atomically."""
        def write(f: Any) -> None:
            out = csv.writer(f)
            out.writerow(["path", "predicted", "confidence", *(f"prob_{c}" for c in self.classes)])
            for r in self.rows():
                out.writerow([r["path"], r["predicted"], r["confidence"], *r["probs"].values()])
        _writing(path, lambda: atomic_write(path, write, newline=""))

    def to_json(self, path: str | Path, k: int = 1, **info: Any) -> None:
        """``{**info, classes, predictions: rows(k), skipped: [{path, reason}]}``; written atomically."""
        _writing(path, lambda: write_json(path, {**info, "classes": list(self.classes), "predictions": self.rows(k),
                                                 "skipped": [{"path": p, "reason": why} for p, why in self.skipped]}))


def _writing(path: str | Path, write: Callable[[], None]) -> None:
    """Run ``write``; a file that cannot be written is the user's path, not a bug."""
    try:
        write()
    except OSError as exc:
        raise SSLZooError(f"cannot write '{path}' ({exc.strerror or exc}); choose a writable file.") from None


def predict_images(run: Any, images: Any) -> Predictions:
    """``run``'s predictions for ``images`` (see :meth:`sslzoo.runs.Run.predict`). ``run`` is a
    :class:`sslzoo.runs.Run`, not imported here: that module imports this one."""
    names, sources, skipped = collect(images, run.image_size)
    if not sources and not skipped:
        raise SSLZooError("no images given: pass image files, folders or glob patterns (or PIL images / arrays).")
    kept, probs = [], []
    for start in range(0, len(sources), CHUNK):
        chunk_names = names[start:start + CHUNK]
        pixels, errors = decode(sources[start:start + CHUNK], run.image_size)
        ok = [i for i, why in enumerate(errors) if why is None]
        skipped += [(chunk_names[i], why) for i, why in enumerate(errors) if why is not None]
        if ok:
            ids = [chunk_names[i] for i in ok]
            chunk = ImageSet(pixels[ok], np.full(len(ok), -1, dtype=np.int64), ids)
            probs.append(run.predict_set(chunk)[0].float().cpu())
            kept += ids
    if not kept:
        listed = "; ".join(f"{p}: {why}" for p, why in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        raise SSLZooError(f"none of the {len(skipped)} input(s) is a readable image ({listed}). Give image files "
                          f"(PNG, JPEG, ...), folders of them, or glob patterns such as 'faces/*.png'.")
    return Predictions(kept, torch.cat(probs), tuple(run.classes), skipped)


def collect(images: Any, size: int) -> tuple[list[str], list[Source], list[tuple[str, str]]]:
    """(names, sources, skipped) for whatever the user passed, in order, each file once."""
    names: list[str] = []
    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for position, item in enumerate(_items(images)):
        if isinstance(item, (str, Path)):
            files, why = expand(str(item))
            if why:
                skipped.append((str(item), why))
            for f in files:
                key = f.resolve()
                if key not in seen:
                    seen.add(key)
                    names.append(str(f))
                    sources.append(f)
        else:
            names.append(f"<image {position}>")
            sources.append(in_memory(item, size, f"image {position}"))
    return names, sources, skipped


def _items(images: Any) -> Iterable[Any]:
    """The single inputs in ``images``: a path, PIL image or array is one; a list, or an [N, H, W, 3] batch, many."""
    if isinstance(images, (str, Path)) or hasattr(images, "convert"):
        return [images]
    if hasattr(images, "ndim"):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Iterable):
        return list(images)
    raise SSLZooError(f"images must be paths, folders, glob patterns, PIL images or uint8 arrays; got "
                      f"{type(images).__name__}.")


def expand(arg: str) -> tuple[list[Path], str | None]:
    """The files ``arg`` names: itself, a folder's files (recursively, hidden ones left out) or a glob's
    matches; and why there are none, if there are none."""
    path = Path(arg).expanduser()
    if path.is_dir():
        files = _files_under(path)
        return files, None if files else "an empty folder"
    if path.exists():
        return [path], None
    if any(c in arg for c in _GLOB_CHARS):
        import glob
        files = [f for m in sorted(glob.glob(str(path), recursive=True))
                 for f in (_files_under(Path(m)) if Path(m).is_dir() else [Path(m)])]
        return files, None if files else "the pattern matches no file"
    return [], "no such file or folder"


def _files_under(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def in_memory(image: Any, size: int, where: str) -> Source:
    """An in-memory image: pixels as they are when already at the run's size (what its cache holds),
    else PNG-encoded (lossless) so the files' decoder resizes it."""
    pixels = to_hwc_uint8(image, where)
    if pixels.shape[:2] == (size, size):
        return np.ascontiguousarray(pixels)
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def decode(sources: list[Source], size: int) -> tuple[np.ndarray, list[str | None]]:
    """uint8 [N, size, size, 3] pixels of ``sources`` and, per source, why it is unreadable (None: fine)."""
    pixels = np.zeros((len(sources), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(sources)
    encoded = [i for i, s in enumerate(sources) if not isinstance(s, np.ndarray)]
    decoded, failures = decode_images([sources[i] for i in encoded], size, crop="never")
    pixels[encoded] = decoded
    for j, why in failures:
        errors[encoded[j]] = f"not a readable image ({why})"
    for i, s in enumerate(sources):
        if isinstance(s, np.ndarray):
            pixels[i] = s
    return pixels, errors
