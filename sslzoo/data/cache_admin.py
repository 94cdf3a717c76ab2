"""``sslzoo cache``: see what the data caches hold and remove what is no longer needed.

Why: the caches only ever grow. A decoded entry is never overwritten when its data
set changes (a new key supersedes it, see :mod:`sslzoo.data.cache`), and every
synthfer option set keeps its own entry. At 224 px AffectNet alone needs tens of GB.

These kinds of item live under ``cache_dir()``:
  * ``decoded``: ``decoded/<key>/`` (a loader's decoded images, or a generated synthfer /
    synthfer_faces data set, memory-mapped, and their meta.json);
  * ``legacy``: ``synthfer-<hash>.npz`` (generated data in the format of sslzoo <= 0.1, superseded);
  * ``pretrained``: ``pretrained/<recipe>-<key>.pt`` (a backbone built by ``backbone.pretrained``);
  * ``building``: ``decoded/.tmp-*`` and ``*.tmp`` files (being built right now, or left by a crash).

Removing an entry that a running training has memory-mapped is safe on Linux and macOS
(the open file lives on until it is closed); the next run that needs it rebuilds it.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SSLZooError
from ..paths import cache_dir


@dataclass
class CacheItem:
    kind: str            # decoded | synthfer | pretrained | building
    path: Path
    bytes: int
    created: float       # modification time of the item (seconds since the epoch)
    description: str     # what it holds, for people
    group: str | None = None     # decoded: what the entry was built from, except the files' contents
    root_exists: bool = True     # decoded: whether its data root is still on disk


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _group(meta: dict) -> str:
    """Entries with the same group differ only in the files' contents or the decoder version,
    so the newest one replaces the others. Different crops or options are different groups."""
    head = dict(meta.get("key_options") or {"loader": meta.get("loader"), "root": meta.get("root"),
                                            "image_size": meta.get("image_size")})
    head.pop("decoder", None)
    head.pop("format", None)
    return json.dumps(head, sort_keys=True, default=str)


def list_items(root: Path | None = None) -> list[CacheItem]:
    """Everything in the cache, oldest first."""
    root = Path(root) if root is not None else cache_dir()
    items: list[CacheItem] = []
    for npz in root.glob("synthfer-*.npz"):   # sslzoo <= 0.1 kept generated data in memory-loaded .npz files
        what = "synthfer_faces" if npz.name.startswith("synthfer-faces-") else "synthfer"
        items.append(CacheItem("legacy", npz, _size(npz), npz.stat().st_mtime,
                               f"generated {what} data in the old .npz format; now regenerated as a "
                               f"memory-mapped entry under decoded/"))
    for tmp in root.glob("synthfer-*.tmp"):
        items.append(CacheItem("building", tmp, _size(tmp), tmp.stat().st_mtime,
                               "synthfer data being written (or left by a crash)"))
    for weights in (root / "pretrained").glob("*.pt"):
        recipe = weights.stem.rsplit("-", 1)[0]
        items.append(CacheItem("pretrained", weights, _size(weights), weights.stat().st_mtime,
                               f"backbone pretrained with '{recipe}'"))
    for tmp in (root / "pretrained").glob(".*.tmp"):
        items.append(CacheItem("building", tmp, _size(tmp), tmp.stat().st_mtime,
                               "pretrained weights being written (or left by a crash)"))
    decoded = root / "decoded"
    for entry in (sorted(decoded.iterdir()) if decoded.is_dir() else []):
        if not entry.is_dir():
            continue
        if entry.name.startswith(".tmp-"):
            items.append(CacheItem("building", entry, _size(entry), entry.stat().st_mtime,
                                   "an entry being built (or left by a crash)"))
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        loader, data_root, size = meta.get("loader", "?"), meta.get("root", "?"), meta.get("image_size", "?")
        source = "generated" if meta.get("generated") else f"from {data_root}"
        items.append(CacheItem("decoded", entry, _size(entry), entry.stat().st_mtime,
                               f"{loader}, {meta.get('n', '?')} images at {size} px {source}",
                               group=_group(meta),
                               root_exists=bool(meta.get("generated")) or Path(str(data_root)).exists()))
    return sorted(items, key=lambda i: i.created)


def select_for_pruning(items: list[CacheItem], *, superseded: bool = False, missing_root: bool = False,
                       older_than_days: float | None = None, everything: bool = False,
                       now: float | None = None) -> list[CacheItem]:
    """The items a prune with these criteria removes (any criterion suffices).

    ``superseded``: decoded entries for which a newer entry of the same loader, data root,
    image size, crop and options exists (the files or the decoder changed since), and
    generated data in the old ``.npz`` format.
    ``missing_root``: decoded entries whose data root is gone. ``older_than_days``: items
    created longer ago. ``everything``: all but
    entries being built. An entry being built goes only when older than a day (and than
    ``older_than_days``): it may belong to a running build.
    """
    if not (superseded or missing_root or older_than_days is not None or everything):
        raise SSLZooError("sslzoo cache prune needs a criterion: --superseded, --missing-root, "
                          "--older-than DAYS or --all (add --dry-run to only list what would go).")
    if older_than_days is not None and older_than_days < 0:
        raise SSLZooError(f"--older-than must be a number of days >= 0; got {older_than_days}.")
    now = time.time() if now is None else now
    newest: dict[str, float] = {}
    for item in items:
        if item.kind == "decoded" and item.group is not None:
            newest[item.group] = max(newest.get(item.group, 0.0), item.created)
    chosen = []
    for item in items:
        age_days = (now - item.created) / 86400
        if item.kind == "building":   # never one that may still be in progress (< 1 day)
            if age_days > 1 and (everything or (older_than_days is not None and age_days > older_than_days)):
                chosen.append(item)
            continue
        if (everything
                or (older_than_days is not None and age_days > older_than_days)
                or (superseded and item.kind == "decoded" and item.created < newest.get(item.group, 0.0))
                or (superseded and item.kind == "legacy")
                or (missing_root and item.kind == "decoded" and not item.root_exists)):
            chosen.append(item)
    return chosen


def remove(items: list[CacheItem]) -> tuple[int, list[str]]:
    """Delete these items; returns (bytes freed, one message per item that could not be removed)."""
    freed, problems = 0, []
    for item in items:
        try:
            if item.path.is_dir():
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
            freed += item.bytes
        except FileNotFoundError:
            continue   # another process removed it first
        except OSError as exc:
            problems.append(f"{item.path}: {exc}")
    return freed, problems


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def format_items(items: list[CacheItem]) -> str:
    lines = [f"{human_bytes(i.bytes):>9}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(i.created))}  "
             f"{i.kind:<8}  {i.path.name}  ({i.description}"
             f"{'; data root missing' if i.kind == 'decoded' and not i.root_exists else ''})" for i in items]
    return "\n".join(lines)
