"""What `sslzoo data NAME --data-root PATH` shows: counts, label mapping, skipped files, cache.

Why: before a long run, a user should see that the loader found the images they
expect (per split and class, against the real data set's published sizes), how
the data set's own label ids were mapped onto the canonical classes, and which
files were skipped.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..registry import DATASETS, describe
from .labels import FER7, FER8


def describe_dataset(name: str, root: str | None, **options: Any) -> dict[str, Any]:
    """Load data set ``name`` (through the decode cache) and summarise it as a JSON-able dict."""
    loader = DATASETS.get(name)
    bundle = loader(root=root, **options)
    classes = list(bundle.classes)
    splits: dict[str, Any] = {}
    for split, part in (("train", bundle.train), ("test", bundle.test)):
        counts = np.bincount(part.labels[part.labels >= 0], minlength=len(classes))
        splits[split] = {"images": int(len(part)),
                         "per_class": {c: int(counts[i]) for i, c in enumerate(classes)},
                         "unlabeled": int((part.labels < 0).sum())}
    info = dict(bundle.info)
    cache = info.pop("cache", None)
    mapping = info.pop("label_mapping", None)
    table = info.pop("label_table", None)
    real = info.pop("real_sizes", None)
    options_used = info.pop("options", None)
    info.pop("image_size", None)
    info.pop("root", None)
    same = bundle.train is bundle.test or bool(info.get("train_is_test"))
    return {
        "name": bundle.name,
        "description": describe(loader),
        "root": bundle.info.get("root", None if root is None else str(root)),
        "classes": classes,
        "num_classes": bundle.num_classes,
        "image_size": bundle.image_size,
        "image_shape": [int(v) for v in bundle.train.images.shape[1:]],
        "splits": splits,
        "train_is_test": same,
        "real_sizes": real,
        "label_table": table,
        "label_mapping": mapping,
        "skipped": list(bundle.skipped),
        "cache": cache,
        "options": _jsonable(options_used),
        "details": _jsonable(info),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def label_space(classes: Sequence[str]) -> str:
    """Which label space the class names are: the canonical FER7 / FER8 or the data set's own."""
    names = tuple(classes)
    return {FER7: "FER7, the paper's order", FER8: "FER8, FER7 + contempt"}.get(names, "the data set's own classes")


def format_description(d: dict[str, Any]) -> str:
    """A readable text block for a ``describe_dataset`` result."""
    lines = [f"{d['name']}: {d.get('description') or ''}".rstrip()]
    lines.append(f"  root        {d.get('root')}")
    lines.append(f"  images      uint8 RGB {d['image_size']}x{d['image_size']}")
    lines.append(f"  classes     {d['num_classes']} ({label_space(d['classes'])})")
    if d.get("train_is_test"):
        lines.append("  note        train and test are the same images (no official split; "
                     "use as a test set)")
    lines.append("")
    split_names = ["train"] if d.get("train_is_test") else ["train", "test"]
    head = f"  {'class':<12}{'id':>4}" + "".join(f"{s:>10}" for s in split_names)
    lines.append(head)
    for i, c in enumerate(d["classes"]):
        lines.append(f"  {c:<12}{i:>4}" + "".join(f"{d['splits'][s]['per_class'][c]:>10}"
                                                 for s in split_names))
    lines.append(f"  {'total':<16}" + "".join(f"{d['splits'][s]['images']:>10}" for s in split_names))
    real = d.get("real_sizes")
    if isinstance(real, dict) and real:
        shown = ", ".join(f"{k} {v:,}" for k, v in real.items() if not isinstance(v, dict))
        if shown:
            lines.append(f"  (full data set: {shown})")
    mapping = d.get("label_mapping") or {}
    if mapping:
        lines.append("")
        lines.append(f"  label mapping ({d.get('label_table') or 'data set id -> canonical'}):")
        for own, canon in mapping.items():
            lines.append(f"    {own:<12} -> {canon}")
    details = d.get("details") or {}
    shown_details = {k: v for k, v in details.items() if k not in ("warnings",)}
    if shown_details:
        lines.append("")
        lines.append("  details:")
        for k, v in shown_details.items():
            lines.append(f"    {k}: {v}")
    for w in details.get("warnings", []):
        lines.append(f"  warning: {w}")
    skipped = d.get("skipped") or []
    lines.append("")
    if skipped:
        lines.append(f"  skipped {len(skipped)} file(s):")
        lines.extend(f"    {s}" for s in skipped[:20])
        if len(skipped) > 20:
            lines.append(f"    ... and {len(skipped) - 20} more")
    else:
        lines.append("  skipped     none")
    cache = d.get("cache") or {}
    if cache.get("dir"):
        state = "reused" if cache.get("hit") else f"decoded now in {cache.get('decode_seconds')} s"
        lines.append(f"  cache       {cache['dir']} ({_bytes(cache.get('bytes'))}, {state})")
    else:
        lines.append("  cache       off (decoded into memory)")
    return "\n".join(lines)
