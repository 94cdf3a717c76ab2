"""The results store: one row file per run, merged into ``results.csv`` on read.

Why one file per run instead of appending to a shared CSV: every run writes only
its own ``<run_dir>/result.json`` (atomically), so two bench processes sharing an
output folder (``--shard`` on a cluster), a killed bench or a re-run can never
corrupt, lose or duplicate another run's row. ``results.csv`` is always
regenerated from the row files, never edited in place, and tables are regenerated
from it.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..errors import SSLZooError
from ..io import write_json, write_text

log = logging.getLogger(__name__)

ROW_FILE = "result.json"
RESULTS_CSV = "results.csv"
MANIFEST = "bench.json"

BASE_COLUMNS = ["method", "algorithm", "policy", "dataset", "test_dataset", "labels", "seed", "setting", "status",
                "final_acc", "best_test_acc", "val_selected_acc", "mean_class_acc"]
TAIL_COLUMNS = ["epochs", "epochs_done", "backbone", "wall_time_s", "img_per_s", "error", "run_dir",
                "config_hash", "sslzoo_version", "torch_version", "torchvision_version"]
VERSION_PACKAGES = ("sslzoo", "torch", "torchvision")
#: statuses of a run that has ended (a bench re-run skips them unless --retry-failed)
ENDED = ("finished", "diverged", "failed")


def class_column(name: str) -> str:
    return "acc_" + (re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "class")


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def error_text(error: dict[str, Any] | None) -> str:
    """One line for the CSV: the message, plus where a divergence happened."""
    if not error:
        return ""
    msg = str(error.get("message") or "").strip().replace("\n", " ")
    where = []
    if error.get("exit_code") not in (None, 0):
        where.append(f"exit code {error['exit_code']}")
    return msg + (f" ({', '.join(where)})" if where else "")


def make_row(*, method: str, setting: str, cfg: dict[str, Any], rel_dir: str, config_hash: str,
             metrics: dict[str, Any] | None, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A results row from a run's resolved config and (if it got that far) its ``metrics.json``."""
    m = metrics or {}
    row: dict[str, Any] = {
        "method": method, "algorithm": cfg["algo"],
        "policy": m.get("policy") if metrics else _policy_of(cfg),
        "dataset": cfg["dataset"], "test_dataset": cfg.get("test_dataset") or "",
        "labels": cfg["labels"], "seed": int(cfg["seed"]), "setting": setting, "status": status,
        "final_acc": _finite(m.get("final_acc")), "best_test_acc": _finite(m.get("best_test_acc")),
        "val_selected_acc": _finite(m.get("val_selected_acc")),
        "mean_class_acc": _finite(m.get("final_mean_class_acc")),
    }
    row["policy"] = row["policy"] or ""
    classes = m.get("classes") or []
    per_class = m.get("final_per_class_acc") or []
    for name, acc in zip(classes, per_class):
        row[class_column(name)] = _finite(acc)
    versions = m.get("versions") or _local_versions()
    row.update({
        "epochs": int(cfg["epochs"]), "epochs_done": int(m.get("epochs_done") or 0),
        "backbone": cfg["backbone"]["name"], "wall_time_s": _finite(m.get("wall_time_s")),
        "img_per_s": _finite(m.get("img_per_s")), "error": error_text(error), "run_dir": rel_dir,
        "config_hash": config_hash,
    })
    for pkg in VERSION_PACKAGES:
        row[f"{pkg}_version"] = versions.get(pkg, "")
    row["error_detail"] = error
    return row


def _policy_of(cfg: dict[str, Any]) -> str:
    from ..factory import policy_label
    return policy_label(cfg) or ""


def _local_versions() -> dict[str, str]:
    from ..run_record import package_versions
    return package_versions()


def write_row(run_dir: str | Path, row: dict[str, Any]) -> None:
    write_json(Path(run_dir) / ROW_FILE, row)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if missing/unreadable (files are written atomically)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def read_row(run_dir: str | Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / ROW_FILE)


# ----------------------------------------------------------------------------- manifest

def write_manifest(bench_dir: str | Path, manifest: dict[str, Any]) -> None:
    """``bench.json``: the grid's method/setting order and baseline, for ``sslzoo table`` later."""
    write_json(Path(bench_dir) / MANIFEST, manifest)


def read_manifest(bench_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(bench_dir) / MANIFEST) or {}


# ----------------------------------------------------------------------------- merging

def collect_rows(bench_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``runs/**/result.json`` under a bench folder, ordered by the manifest's grid order."""
    bench_dir = Path(bench_dir)
    rows = []
    for path in sorted((bench_dir / "runs").rglob(ROW_FILE)):
        row = read_json(path)
        if row is None or "method" not in row:
            continue
        row["run_dir"] = path.parent.relative_to(bench_dir).as_posix()
        rows.append(row)
    manifest = read_manifest(bench_dir)
    return sort_rows(rows, manifest.get("methods") or [], manifest.get("settings") or [])


def sort_rows(rows: list[dict[str, Any]], methods: Sequence[str], settings: Sequence[str]) -> list[dict[str, Any]]:
    m_index = {m: i for i, m in enumerate(methods)}
    s_index = {s: i for i, s in enumerate(settings)}

    def key(r: dict[str, Any]) -> tuple:
        s = str(r.get("setting", ""))
        m = str(r.get("method", ""))
        return (s_index.get(s, len(s_index)), s, m_index.get(m, len(m_index)), m, int(r.get("seed") or 0))
    return sorted(rows, key=key)


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a frame with the documented column order (per-class columns between the two groups)."""
    class_cols: list[str] = []
    for r in rows:
        class_cols += [k for k in r if k.startswith("acc_") and k not in class_cols]
    extra = [k for r in rows for k in r if k not in BASE_COLUMNS + TAIL_COLUMNS + class_cols + ["error_detail"]]
    columns = BASE_COLUMNS + class_cols + TAIL_COLUMNS + list(dict.fromkeys(extra))
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def write_results_csv(bench_dir: str | Path) -> pd.DataFrame:
    """Regenerate ``results.csv`` from the row files (atomically) and return it as a frame."""
    df = rows_to_frame(collect_rows(bench_dir))
    write_text(Path(bench_dir) / RESULTS_CSV, df.to_csv(index=False, lineterminator="\n"))
    return df


def load_results(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """Results of a bench folder (merged from its row files) or of a ``results.csv``; and the bench folder."""
    path = Path(path)
    if path.is_file():
        return pd.read_csv(path, keep_default_na=True), path.parent
    if not path.is_dir():
        raise SSLZooError(f"'{path}' is neither a bench folder nor a results.csv.")
    if (path / "runs").is_dir():
        return write_results_csv(path), path
    if (path / RESULTS_CSV).is_file():
        return pd.read_csv(path / RESULTS_CSV), path
    raise SSLZooError(f"'{path}' holds no results (no runs/*/result.json and no {RESULTS_CSV}); "
                      f"run `sslzoo bench --out {path} ...` first.")


def table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The frame the tables see: cross-data-set runs get the column ``train→test`` (e.g. rafdb→ckplus)."""
    out = df.copy()
    if "test_dataset" in out.columns:
        test = out["test_dataset"].fillna("").astype(str)
        cross = (test != "") & (test != out["dataset"].astype(str))
        out.loc[cross, "dataset"] = out.loc[cross, "dataset"].astype(str) + "→" + test[cross]
    return out


def method_order(df: pd.DataFrame, manifest: dict[str, Any]) -> list[str]:
    """The manifest's method order, then any other method present in the results."""
    listed = list(manifest.get("methods") or [])
    present = list(dict.fromkeys(df["method"].astype(str).tolist())) if "method" in df.columns else []
    return listed + [m for m in present if m not in listed]
