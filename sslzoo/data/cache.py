"""Decode-once cache: every image is decoded and resized once, into a memory-mapped uint8 array.

Why: JPEG decoding and resizing dominate a naive FER data pipeline (AffectNet is
~290k full-size photos). Each loader hands this module its list of image files;
the first run decodes them in a bounded thread pool (PIL releases the GIL while it
decodes) into ``cache_dir()/decoded/<key>/images.npy`` and every later run only
memory-maps that file.

The key is a hash of everything that decides the pixels and labels: the loader
name, the absolute data root, ``image_size``, the crop options, the decoder
version and, per image, its id, label, face box, file size and modification time.
A data set whose files change (added, removed, rewritten, relabelled) gets a new
key; old entries are never overwritten, only superseded.

Crash safety: an entry is built in ``decoded/.tmp-<key>-<pid>-<rand>/`` and
renamed into place only when ``images.npy`` and ``meta.json`` are both complete,
so an interrupted or failed build never leaves an entry that looks usable.

One build per entry: the builder holds ``locks/decoded-<key>.lock`` in the cache folder
(an flock, dropped by the kernel if it dies; kept out of ``decoded/`` so that folder
holds only entries), so N runs starting together on a cold cache (``sslzoo bench
--jobs N``) decode a data set once; the others wait, then read the finished entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import time
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import SSLZooError
from ..io import FileLock, LockUnsupportedError
from ..paths import cache_dir

DECODER_VERSION = 1          # bump whenever decode_one's output for the same file changes
CACHE_FORMAT = 1             # bump when the entry layout (files, meta keys) changes
MAX_WORKERS = 16             # hard upper bound on decode threads
_STALE_TMP_SECONDS = 24 * 3600

# Exceptions that mean "this file is not a readable image" (a skip under on_bad_image=warn).
# Anything else raised while decoding is a bug or a crash and propagates unchanged.
BAD_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error,
    Image.DecompressionBombError)


# --------------------------------------------------------------------------- decoding

def default_workers() -> int:
    """Decode threads: ``$SSLZOO_DECODE_WORKERS`` if set, else min(8, the cores this process may use)."""
    env = os.environ.get("SSLZOO_DECODE_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise SSLZooError(f"SSLZOO_DECODE_WORKERS must be a positive integer; got '{env}'.") from None
    else:
        from ..device import cpu_count   # here, not at the top: the cache's admin commands need no torch
        n = min(8, cpu_count())          # the affinity mask (taskset, a bench job's share), not the machine's
    return max(1, min(MAX_WORKERS, n))


def face_region(width: int, height: int, box: Sequence[float] | None,
                crop: str = "auto") -> tuple[float, float, float, float] | None:
    """The (left, top, right, bottom) region to keep, or None for the whole image.

    ``box`` is (x, y, w, h) in the file's pixel coordinates. ``crop``: ``never`` keeps
    the whole image; ``always`` crops (box clipped to the image); ``auto`` crops only
    when the box lies inside the image and the image is larger than the box (i.e.
    the file is not already a face crop).
    """
    if box is None or crop == "never":
        return None
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise ValueError(f"face box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) has no area")
    if crop == "auto":
        tol = 2.0
        inside = x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol
        larger = width > w + tol or height > h + tol
        if not (inside and larger):
            return None
    elif crop != "always":
        raise ValueError(f"crop must be auto, always or never; got {crop!r}")
    left, top = max(0.0, x), max(0.0, y)
    right, bottom = min(float(width), x + w), min(float(height), y + h)
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"face box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the "
                         f"{width}x{height} image")
    return (left, top, right, bottom)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):   # 16-bit / int / float grayscale
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_one(path: str | os.PathLike, image_size: int, box: Sequence[float] | None = None,
               crop: str = "auto") -> np.ndarray:
    """Decode one image file into uint8 RGB [image_size, image_size, 3].

    Grayscale / palette / RGBA / CMYK / 16-bit files become 3-channel RGB. The (optional)
    face region is cropped, then the image is resized to a square with PIL's antialiased
    bilinear filter (what torchvision's ``Resize`` does on PIL images). Large JPEGs are
    first reduced in the DCT domain (``Image.draft``, power-of-two factors, never below
    the target size), which is several times faster and visually equivalent.
    Raises one of ``BAD_IMAGE_ERRORS`` for an unreadable, truncated or empty file.
    """
    with Image.open(path) as img:
        width, height = img.size
        region = face_region(width, height, box, crop)
        if img.format == "JPEG":
            rw = (region[2] - region[0]) if region else width
            rh = (region[3] - region[1]) if region else height
            want = (max(1, int(np.ceil(width * image_size / rw))),
                    max(1, int(np.ceil(height * image_size / rh))))
            if want[0] * 2 <= width and want[1] * 2 <= height:
                img.draft(img.mode, want)
                if region and img.size != (width, height):
                    sx, sy = img.size[0] / width, img.size[1] / height
                    region = (region[0] * sx, region[1] * sy,
                              min(region[2] * sx, img.size[0]), min(region[3] * sy, img.size[1]))
        rgb = _to_rgb(img)          # forces the (possibly truncated) file to load here
        out = rgb.resize((image_size, image_size), Image.BILINEAR, box=region)
    return np.asarray(out, dtype=np.uint8)


def decode_images(paths: Sequence[str | os.PathLike], image_size: int,
                  crop_boxes: Sequence[Sequence[float] | None] | None = None, *,
                  crop: str = "auto", out: np.ndarray | None = None, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``paths`` into ``out`` (uint8 [N, image_size, image_size, 3]) in a thread pool.

    Returns ``(out, failures)``; ``failures`` lists ``(index, reason)`` for files that are
    not readable images (their rows stay zero). Any other exception propagates.
    ``out`` may be an ``np.memmap`` (the cache passes one); it is allocated when None.
    """
    n = len(paths)
    if crop_boxes is not None and len(crop_boxes) != n:
        raise ValueError(f"{len(crop_boxes)} crop boxes for {n} paths")
    if out is None:
        out = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    workers = default_workers() if workers is None else max(1, min(MAX_WORKERS, int(workers)))
    failures: list[tuple[int, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        box = crop_boxes[i] if crop_boxes is not None else None
        try:
            arr = decode_one(paths[i], image_size, box, crop)   # module global: tests patch it
        except BAD_IMAGE_ERRORS as exc:
            return i, f"{type(exc).__name__}: {exc}"
        out[i] = arr
        return i, None

    chunk = max(64, workers * 32)    # bounded number of queued futures
    if workers == 1 or n < 2:
        for start in range(0, n, chunk):
            for i in range(start, min(n, start + chunk)):
                _, err = work(i)
                if err is not None:
                    failures.append((i, err))
            if progress:
                progress(min(n, start + chunk), n)
        return out, failures
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sslzoo-decode")
    try:
        for start in range(0, n, chunk):
            for i, err in pool.map(work, range(start, min(n, start + chunk))):
                if err is not None:
                    failures.append((i, err))
            if progress:
                progress(min(n, start + chunk), n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out, failures


# --------------------------------------------------------------------------- bad-file policy

@dataclass
class BadImagePolicy:
    """What to do with missing or unreadable images.

    ``mode='warn'``: skip them with one ``warnings.warn`` (count + first paths) as long as
    they are at most ``max_fraction`` of the images; ``mode='error'``: any bad file is an
    ``SSLZooError``. ``hint`` (the expected layout) is appended to every error.
    """

    loader: str
    mode: str = "warn"
    max_fraction: float = 0.01
    hint: str = ""

    def _message(self, bad: Sequence[tuple[str, str]], total: int, head: str) -> str:
        shown = "\n".join(f"  {i}: {why}" for i, why in bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"{head}\n{shown}{more}"

    def check(self, bad: Sequence[tuple[str, str]], total: int, *, root: str | Path,
              warn: bool = True) -> None:
        if not bad:
            return
        frac = len(bad) / max(1, total)
        where = f"under '{root}'"
        if self.mode == "error" or frac > self.max_fraction:
            why = ("on_bad_image=error" if self.mode == "error" else
                   f"more than max_bad_fraction={self.max_fraction:g} of the images")
            msg = self._message(bad, total, f"{self.loader}: {len(bad)} of {total} images {where} "
                                            f"are missing or unreadable ({why}):")
            msg += ("\nFix or remove these files (or point --data-root at the right folder)"
                    + ("." if self.mode == "error" else
                       "; to skip them anyway pass max_bad_fraction=<larger>."))
            if self.hint:
                msg += "\n\n" + self.hint
            raise SSLZooError(msg)
        if warn:
            warnings.warn(self._message(
                bad, total, f"{self.loader}: skipped {len(bad)} of {total} images {where} that are "
                            f"missing or unreadable (listed in DataBundle.skipped; pass "
                            f"on_bad_image=error to fail instead):"), stacklevel=4)


# --------------------------------------------------------------------------- cache entries

@dataclass
class CacheEntry:
    images: np.ndarray          # read-only memmap (in-memory array when the cache is off)
    meta: dict[str, Any]
    path: Path | None           # entry folder; None when the cache is off
    hit: bool                   # True when nothing was decoded

    def info(self) -> dict[str, Any]:
        nbytes = int(self.images.nbytes)
        return {"dir": str(self.path) if self.path else None, "hit": self.hit,
                "key": self.path.name if self.path else None, "bytes": nbytes,
                "decode_seconds": self.meta.get("decode_seconds")}


def decoded_root() -> Path:
    """``cache_dir()/decoded``: where decoded entries live."""
    root = cache_dir() / "decoded"
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_key(loader: str, image_size: int, digest: str) -> str:
    return f"{loader}-{image_size}px-{digest[:20]}"


def _load_entry(path: Path) -> CacheEntry | None:
    meta_path, img_path = path / "meta.json", path / "images.npy"
    if not (meta_path.is_file() and img_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(img_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if (meta.get("format") != CACHE_FORMAT or images.ndim != 4 or images.dtype != np.uint8
            or images.shape[0] != meta.get("n") or len(meta.get("labels", ())) != meta.get("n")):
        return None
    return CacheEntry(images=images, meta=meta, path=path, hit=True)


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            newest = max([tmp.stat().st_mtime] + [p.stat().st_mtime for p in tmp.iterdir()])
        except OSError:
            continue
        if now - newest > _STALE_TMP_SECONDS:
            shutil.rmtree(tmp, ignore_errors=True)


def get_or_build(key: str, build: Callable[[Path | None], tuple[np.ndarray, dict[str, Any]]], *,
                 policy: BadImagePolicy | None = None, root: str | Path = "",
                 use_cache: bool = True) -> CacheEntry:
    """Return the entry ``key``, building it with ``build`` when it is missing.

    ``build(tmp)`` must write ``tmp/images.npy`` (``tmp`` is None when the cache is off:
    then it returns the images in memory) and return ``(images, meta)`` with meta holding
    at least ``labels``, ``ids``, ``skipped`` ([id, reason] pairs) and ``total``. The
    entry becomes visible only after ``build`` returned and the policy accepted its
    skipped files; on any exception the temporary folder is removed.
    """
    if not use_cache:
        images, meta = build(None)
        meta = _finish_meta(meta, images)
        if policy:
            policy.check(meta["skipped"], meta["total"], root=root)
        return CacheEntry(images=images, meta=meta, path=None, hit=False)

    droot = decoded_root()
    final = droot / key
    entry = _load_entry(final)
    if entry is None:
        lock = _build_lock(key)
        try:
            entry = _load_entry(final)    # built by another process while this one waited
            if entry is None:
                return _build_entry(droot, key, build, policy=policy, root=root)
        finally:
            if lock is not None:
                lock.release()
    if policy:
        policy.check(entry.meta["skipped"], entry.meta["total"], root=root)
    return entry


def _build_lock(key: str) -> FileLock | None:
    """Hold ``cache_dir()/locks/decoded-<key>.lock`` so that one process decodes ``key`` while others wait.

    Where the cache's file system cannot lock (a shared cache on NFS without a lock daemon)
    this returns None and the entry is built unlocked, with a warning: that was always safe
    (entries are renamed into place whole), it only costs one decode per process.
    """
    folder = cache_dir() / "locks"
    folder.mkdir(exist_ok=True)
    lock = FileLock(folder / f"decoded-{key}.lock")
    try:
        if not lock.acquire(blocking=False):
            print(f"[sslzoo] another process is decoding {key}; waiting for it to finish",
                  file=sys.stderr, flush=True)
            lock.acquire(blocking=True)
    except LockUnsupportedError:
        warnings.warn(f"The decode cache {folder.parent} cannot lock (its file system does not support file "
                      f"locks), so parallel runs may each decode {key}. Results are unaffected; to decode "
                      f"once, set SSLZOO_CACHE to a folder on a local disk.", stacklevel=4)
        return None
    return lock


def _build_entry(droot: Path, key: str, build: Callable[[Path | None], tuple[np.ndarray, dict[str, Any]]], *,
                 policy: BadImagePolicy | None, root: str | Path) -> CacheEntry:
    """Build entry ``key`` in a temporary folder and rename it into place (under the build lock)."""
    final = droot / key
    if final.exists():                    # unreadable / old-format entry: replace it
        shutil.rmtree(final, ignore_errors=True)
    _clean_stale_tmp(droot)
    tmp = droot / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        images, meta = build(tmp)
        meta = _finish_meta(meta, images)
        if hasattr(images, "flush"):
            images.flush()
        del images
        if not (tmp / "images.npy").is_file():
            raise RuntimeError("cache builder did not write images.npy")
        if policy:
            policy.check(meta["skipped"], meta["total"], root=root)
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, final)
        except OSError:
            if _load_entry(final) is None:   # not another process finishing the same entry first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entry = _load_entry(final)
    if entry is None:
        raise SSLZooError(f"The decoded cache entry {final} could not be read back after writing "
                          f"it. Check the disk (or set SSLZOO_CACHE to another folder).")
    entry.hit = False
    return entry


def _finish_meta(meta: dict[str, Any], images: np.ndarray) -> dict[str, Any]:
    meta = dict(meta)
    meta["format"] = CACHE_FORMAT
    meta["decoder_version"] = DECODER_VERSION
    meta["n"] = int(images.shape[0])
    meta.setdefault("skipped", [])
    meta.setdefault("total", meta["n"] + len(meta["skipped"]))
    meta["labels"] = [int(v) for v in meta["labels"]]
    if len(meta["labels"]) != meta["n"] or len(meta["ids"]) != meta["n"]:
        raise RuntimeError(f"cache builder returned {meta['n']} images, {len(meta['labels'])} labels "
                           f"and {len(meta['ids'])} ids")
    return meta


def check_free_space(folder: Path, nbytes: int, what: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise SSLZooError(
            f"Decoding {what} needs {nbytes / 1e9:.1f} GB in the cache folder {folder}, but only "
            f"{free / 1e9:.1f} GB are free. Set SSLZOO_CACHE to a folder on a larger disk, or use a "
            f"smaller --image-size.")


def allocate(tmp: Path | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array: a writable ``.npy`` memmap in ``tmp``, or in memory when None."""
    if tmp is None:
        return np.zeros(shape, dtype=np.uint8)
    if shape[0] == 0:   # a zero-length file cannot be memory-mapped
        np.save(tmp / name, np.zeros(shape, dtype=np.uint8))
        return np.load(tmp / name)
    return np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.uint8, shape=shape)


def finalize_rows(tmp: Path | None, buf: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Turn the decode buffer (``tmp/decode.npy``) into ``tmp/images.npy`` holding rows ``keep``.

    Without dropped rows this is a rename; otherwise the kept rows are copied in chunks.
    """
    n = buf.shape[0]
    if len(keep) == n:
        if tmp is None:
            return buf
        if hasattr(buf, "flush"):
            buf.flush()
        del buf
        os.replace(tmp / "decode.npy", tmp / "images.npy")
        return np.load(tmp / "images.npy", mmap_mode="r") if n else np.load(tmp / "images.npy")
    images = allocate(tmp, "images.npy", (len(keep),) + tuple(buf.shape[1:]))
    keep = list(keep)
    for j0 in range(0, len(keep), 1024):
        idx = keep[j0:j0 + 1024]
        images[j0:j0 + len(idx)] = buf[idx]
    del buf
    if tmp is not None:
        (tmp / "decode.npy").unlink()
    return images


# --------------------------------------------------------------------------- file-based data sets

@dataclass
class ImageRecord:
    """One image a loader wants: its id (path relative to the root), file, canonical label."""

    id: str
    path: Path
    label: int
    split: str
    box: tuple[float, float, float, float] | None = None   # (x, y, w, h) face box


@dataclass
class Decoded:
    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    ranges: dict[str, tuple[int, int]]     # split -> [start, stop) rows
    skipped: list[str]
    cache: dict[str, Any] = field(default_factory=dict)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _progress_printer(what: str) -> Callable[[int, int], None]:
    start = time.perf_counter()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 10:
            return
        last[0] = now
        rate = done / max(1e-9, now - start)
        print(f"[sslzoo] decoding {what}: {done}/{total} images ({rate:.0f}/s)",
              file=sys.stderr, flush=True)
    return report


def cached_decode(loader: str, root: Path, image_size: int, records: Sequence[ImageRecord], *,
                  key_options: dict[str, Any] | None = None, crop: str = "auto",
                  policy: BadImagePolicy | None = None, use_cache: bool = True,
                  workers: int | None = None, split_order: Sequence[str] = ("train", "test")
                  ) -> Decoded:
    """Decode (once) the images of ``records``, grouped by split in ``split_order``.

    Missing files are found before decoding (``policy`` decides skip-or-fail), unreadable
    files while decoding. Returns the images (a read-only memmap when cached) with
    contiguous per-split row ranges, so a split is a view, never a copy.
    """
    root = Path(root)
    policy = policy or BadImagePolicy(loader)
    ordered = [r for s in split_order for r in records if r.split == s]
    if len(ordered) != len(records):
        extra = sorted({r.split for r in records} - set(split_order))
        raise ValueError(f"records with splits {extra} not in split_order {list(split_order)}")

    hasher = hashlib.sha256()
    head = {"loader": loader, "root": str(root), "image_size": int(image_size), "crop": crop,
            "options": key_options or {}, "decoder": DECODER_VERSION, "format": CACHE_FORMAT}
    hasher.update(json.dumps(head, sort_keys=True, default=str).encode())
    missing: list[tuple[str, str]] = []
    for r in ordered:
        stamp = _stamp(r.path)
        if stamp is None:
            missing.append((r.id, "file not found"))
        hasher.update(f"\n{r.split}\t{r.id}\t{r.label}\t{r.box}\t{stamp}".encode())
    policy.check(missing, len(ordered), root=root, warn=False)   # fail fast, before decoding
    missing_ids = {m[0] for m in missing}
    key = make_key(loader, image_size, hasher.hexdigest())

    def build(tmp: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
        todo = [r for r in ordered if r.id not in missing_ids]
        shape = (len(todo), image_size, image_size, 3)
        if tmp is not None:
            check_free_space(tmp, int(np.prod(shape)), f"{len(todo)} {loader} images")
        t0 = time.perf_counter()
        buf = allocate(tmp, "decode.npy", shape)
        progress = _progress_printer(f"{loader} ({image_size}px, once; cached for later runs)") \
            if len(todo) >= 5000 else None
        buf, failures = decode_images([r.path for r in todo], image_size,
                                      [r.box for r in todo], crop=crop, out=buf,
                                      workers=workers, progress=progress)
        bad_rows = {i for i, _ in failures}
        skipped = list(missing) + [(todo[i].id, why) for i, why in failures]
        keep = [i for i in range(len(todo)) if i not in bad_rows]
        if bad_rows:   # fail before copying anything
            policy.check(skipped, len(ordered), root=root, warn=False)
        images = finalize_rows(tmp, buf, keep)
        kept = [todo[i] for i in keep]
        ranges: dict[str, list[int]] = {}
        for row, r in enumerate(kept):
            ranges.setdefault(r.split, [row, row])[1] = row + 1
        meta = {"loader": loader, "root": str(root), "image_size": int(image_size),
                "labels": [r.label for r in kept], "ids": [r.id for r in kept],
                "ranges": ranges,
                "skipped": [list(s) for s in skipped], "total": len(ordered),
                "decode_seconds": round(time.perf_counter() - t0, 3), "key_options": head}
        return images, meta

    entry = get_or_build(key, build, policy=policy, root=root, use_cache=use_cache)
    meta = entry.meta
    ranges = {s: tuple(v) for s, v in meta["ranges"].items()}
    for s in split_order:
        ranges.setdefault(s, (0, 0))
    return Decoded(images=entry.images, labels=np.asarray(meta["labels"], dtype=np.int64),
                   ids=list(meta["ids"]), ranges=ranges,
                   skipped=[f"{i}: {why}" for i, why in meta["skipped"]], cache=entry.info())
