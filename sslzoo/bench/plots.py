"""Benchmark figures from run directories (``<run>/metrics.json``) and a t-SNE of features.

Why the object-oriented matplotlib API (``matplotlib.figure.Figure``) instead of
pyplot: it renders with Agg without touching the process-wide backend or pyplot's
figure registry, so importing this module from a notebook or a GUI changes nothing,
figures are freed when they go out of scope, and ``plt.show`` can never block a
benchmark.

Conventions: only runs with status "finished" are plotted (like the tables);
runs are grouped by method and *setting* (the bench's ``result.json``; without one,
``<dataset>-<labels>``), so two settings with the same data set and label count (SFEW
with and without RAF-DB as extra unlabeled data) get separate panels, titled by their
setting;
curves are the mean over seeds at each epoch and the shaded band / error bar is
the min-max range over seeds (with the usual 3 seeds that is all the data shows,
without a distributional assumption). A figure nobody has data for is skipped and
said so in ``messages`` (and the log) instead of producing an empty PNG. Before a
figure is saved, titles and axis labels too wide for the figure (or their panel) at the
saved size are wrapped onto more lines (:func:`fit_texts`): constrained layout makes
room for text but never shortens it, so a long title on a one-panel figure was cut off.
"""
from __future__ import annotations

from ..io import atomic_write

import json
import logging
import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from ..errors import SSLZooError

log = logging.getLogger(__name__)

FIGURES = {
    "accuracy": "accuracy_curves.png",
    "thresholds": "thresholds.png",
    "mask_ratio": "mask_ratio.png",
    "per_class": "per_class_acc.png",
}
_DPI = 120


# ----------------------------------------------------------------------------- loading

def load_runs(run_dirs: Iterable[str | os.PathLike], statuses: Sequence[str] = ("finished",),
              messages: list[str] | None = None) -> list[dict[str, Any]]:
    """Read ``metrics.json`` of each run dir; keep runs whose status is in ``statuses``."""
    runs, skipped = [], defaultdict(list)
    for d in run_dirs:
        p = Path(d) / "metrics.json"
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            skipped["no metrics.json"].append(str(d))
            continue
        except (OSError, ValueError) as exc:
            skipped[f"unreadable metrics.json ({type(exc).__name__})"].append(str(d))
            continue
        if not isinstance(m, dict):
            skipped["metrics.json is not an object"].append(str(d))
            continue
        status = str(m.get("status", "unknown"))
        if status not in statuses:
            skipped[f"status {status}"].append(str(d))
            continue
        row = _bench_row(Path(d))
        m["method"] = _text(row.get("method")) or m.get("method") or m.get("algorithm") or Path(d).name
        m["_setting_id"] = _text(row.get("setting")) or _default_setting(m)
        m["_dir"] = str(d)
        runs.append(m)
    for why, dirs in skipped.items():
        _say(messages, f"ignored {len(dirs)} run(s): {why} (e.g. {dirs[0]})")
    _mark_settings(runs)
    return runs


def _bench_row(run_dir: Path) -> dict[str, Any]:
    """The bench's ``result.json`` of a run (empty for a bare ``sslzoo train`` run or an unreadable file).

    Why: it names the suite row (e.g. "FT = 0.8"; Table 1's ablations all run ``adacm`` and
    would collapse into one curve by algorithm) and the setting (``sfew-100-extra``: SFEW
    with RAF-DB as extra unlabeled data, same data set and labels as ``sfew-100``).
    """
    try:
        row = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return row if isinstance(row, dict) else {}


def _text(x: Any) -> str | None:
    return str(x) if x not in (None, "") and not (isinstance(x, float) and math.isnan(x)) else None


def _default_setting(m: dict) -> str:
    """The setting id the bench would give a run without a ``name`` (grid.setting_id)."""
    sid = f"{m.get('dataset', '?')}-{m.get('labels', '?')}"
    test = m.get("test_dataset")
    return sid + (f"-on-{test}" if test and test != m.get("dataset") else "")


class SettingKey(NamedTuple):
    """A panel: a setting. ``shared``: another setting has the same data set and label count."""

    dataset: str
    labels: Any
    setting: str
    shared: bool = False

    @property
    def label(self) -> str:
        plain = f"{self.dataset}, {self.labels} labels"
        return f"{self.setting} ({plain})" if self.shared else plain


def _mark_settings(runs: list[dict]) -> None:
    """Give each run its :class:`SettingKey` (``shared`` needs every run's setting)."""
    ids = {(str(r.get("dataset", "?")), r.get("labels", "?"), r["_setting_id"]) for r in runs}
    count: dict[tuple, int] = defaultdict(int)
    for d, lab, _ in ids:
        count[(d, lab)] += 1
    for r in runs:
        d, lab = str(r.get("dataset", "?")), r.get("labels", "?")
        r["_setting"] = SettingKey(d, lab, r["_setting_id"], count[(d, lab)] > 1)


def _say(messages: list[str] | None, text: str) -> None:
    log.info("plots: %s", text)
    if messages is not None:
        messages.append(text)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _setting(run: dict) -> SettingKey:
    if "_setting" not in run:     # a run dict not from load_runs
        run.setdefault("_setting_id", _default_setting(run))
        _mark_settings([run])
    return run["_setting"]


def _ordered(items: Iterable[Any], key: Callable[[Any], Any] | None = None) -> list[Any]:
    return sorted(dict.fromkeys(items), key=key) if key else list(dict.fromkeys(items))


def _settings(runs: list[dict]) -> list[SettingKey]:
    """Panels in order: data set (first appearance), label count, then setting (first appearance)."""
    ds_order = _ordered(_setting(r).dataset for r in runs)
    st_order = _ordered(_setting(r).setting for r in runs)

    def k(st: SettingKey) -> tuple:
        lab = (0, float(st.labels), "") if _finite(st.labels) else (1, 0.0, str(st.labels))
        return (ds_order.index(st.dataset), *lab, st_order.index(st.setting))

    return _ordered((_setting(r) for r in runs), key=k)


def _epoch_curve(runs: list[dict], field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean / min / max over runs of history[field] per epoch (seeds may differ in length)."""
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        for i, h in enumerate(r.get("history") or []):
            if isinstance(h, dict) and _finite(h.get(field)):
                by_epoch[float(h.get("epoch", i + 1))].append(float(h[field]))
    if not by_epoch:
        return None
    ep = np.array(sorted(by_epoch))
    vals = [np.array(by_epoch[e]) for e in ep]
    return ep, np.array([v.mean() for v in vals]), np.array([v.min() for v in vals]), np.array([v.max() for v in vals])


def _method_colors(runs: list[dict]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(_ordered(r["method"] for r in runs))}


def _grid(n: int, ncols: int = 3, w: float = 4.6, h: float = 3.4) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    """Fit the texts, then save atomically through sslzoo.io.atomic_write (temp file + os.replace)."""
    fit_texts(fig)
    atomic_write(path, lambda f: fig.savefig(f, dpi=_DPI, format=path.suffix.lstrip(".") or "png"), mode="wb")
    return path


def fit_texts(fig: Figure, rounds: int = 4) -> None:
    """Wrap the suptitle, panel titles and axis labels that are wider than the room they have.

    Rendered with Agg at the saved dpi. The room: the figure's width for the suptitle, the
    panel's width (height for a y label) for the rest. Repeated because wrapping changes
    the constrained layout, which changes the panels' sizes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(_DPI)
    canvas = FigureCanvasAgg(fig)
    for _ in range(rounds):
        canvas.draw()
        renderer = canvas.get_renderer()
        changed = False
        for text, room in _text_rooms(fig):
            changed |= _wrap_to(text, room, renderer)
        if not changed:
            return


def _text_rooms(fig: Figure) -> list[tuple[Any, float]]:
    """(text artist, pixels it may span) for every title and axis label of the figure."""
    out: list[tuple[Any, float]] = [(getattr(fig, "_suptitle", None), 0.98 * fig.bbox.width)]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        titles = [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)]
        out += [(t, ax.bbox.width) for t in titles]
        out += [(ax.xaxis.label, ax.bbox.width), (ax.yaxis.label, ax.bbox.height)]
    return [(text, room) for text, room in out if text is not None]


def _wrap_to(text: Any, room: float, renderer: Any) -> bool:
    """Re-wrap ``text`` onto as few lines as fit in ``room`` pixels; True if it changed."""
    s = text.get_text()
    if not s or not text.get_visible() or room <= 0:
        return False
    prop = text.get_fontproperties()

    def widest(lines: str) -> float:
        return max(renderer.get_text_width_height_descent(ln, prop, ismath=False)[0] for ln in lines.split("\n"))

    if widest(s) <= room:
        return False
    flat = " ".join(s.split())
    width = max(1, int(len(flat) * room / widest(flat)))
    wrapped = textwrap.fill(flat, width)
    while width > 1 and widest(wrapped) > room:
        width -= 1
        wrapped = textwrap.fill(flat, width)
    if wrapped == s:
        return False
    text.set_text(wrapped)
    return True


def _label(st: SettingKey) -> str:
    return st.label


# ----------------------------------------------------------------------------- figures

def _curves_figure(runs: list[dict], field: str, ylabel: str, title: str) -> Figure | None:
    settings = _settings(runs)
    colors = _method_colors(runs)
    curves = {}
    for st in settings:
        for m in _ordered(r["method"] for r in runs if _setting(r) == st):
            c = _epoch_curve([r for r in runs if _setting(r) == st and r["method"] == m], field)
            if c is not None:
                curves[(st, m)] = c
    if not curves:
        return None
    used = [st for st in settings if any(k[0] == st for k in curves)]
    fig, axes = _grid(len(used))
    for ax, st in zip(axes, used):
        for (s, m), (ep, mean, lo, hi) in curves.items():
            if s != st:
                continue
            ax.plot(ep, mean, color=colors[m], label=m, lw=1.6)
            if np.any(hi > lo):
                ax.fill_between(ep, lo, hi, color=colors[m], alpha=0.18, lw=0)
        ax.set_title(_label(st))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title + " (line: mean over seeds, band: min-max)")
    return fig


def _thresholds_figure(runs: list[dict]) -> Figure | None:
    keyed: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if any(isinstance(h, dict) and h.get("thresholds") for h in r.get("history") or []):
            keyed[(r["method"], _setting(r))].append(r)
    if not keyed:
        return None
    settings = _settings(runs)
    keys = sorted(keyed, key=lambda k: (settings.index(k[1]), list(keyed).index(k)))
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        group = keyed[key]
        by_epoch: dict[float, list[np.ndarray]] = defaultdict(list)
        for r in group:
            for i, h in enumerate(r.get("history") or []):
                t = h.get("thresholds") if isinstance(h, dict) else None
                if t:
                    by_epoch[float(h.get("epoch", i + 1))].append(np.asarray(t, dtype=float))
        k = max(len(v) for vs in by_epoch.values() for v in vs)
        ep = np.array(sorted(by_epoch))
        # nanmean over seeds; a seed that logged fewer classes contributes NaN for the rest
        mat = np.array([np.nanmean(np.stack([np.pad(v, (0, k - len(v)), constant_values=np.nan)
                                             for v in by_epoch[e]]), axis=0) for e in ep])
        names = list(group[0].get("classes") or [])
        names += [f"class {i}" for i in range(len(names), k)]
        for c in range(k):
            ax.plot(ep, mat[:, c], label=names[c], lw=1.4)
        ax.set_title(f"{key[0]} - {_label(key[1])} (n={len(group)})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("confidence threshold / margin")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.suptitle("Per-class thresholds (Ada-CM: learned confidence margin), mean over seeds")
    return fig


def _final_per_class(run: dict) -> np.ndarray | None:
    for h in reversed(run.get("history") or []):
        v = h.get("test_per_class_acc") if isinstance(h, dict) else None
        if v:
            return np.asarray([float(x) if _finite(x) else np.nan for x in v])
    return None


def _per_class_figure(runs: list[dict], messages: list[str] | None) -> Figure | None:
    settings = _settings(runs)
    colors = _method_colors(runs)
    panels = []
    for st in settings:
        methods, bars, names = [], [], None
        for m in _ordered(r["method"] for r in runs if _setting(r) == st):
            accs = [(r, a) for r in runs if _setting(r) == st and r["method"] == m
                    for a in [_final_per_class(r)] if a is not None]
            if not accs:
                continue
            k = len(accs[0][1])
            same = [a for _, a in accs if len(a) == k]
            if len(same) < len(accs):
                _say(messages, f"per-class bars: {m} on {_label(st)}: dropped {len(accs) - len(same)} run(s) "
                               f"with a different number of classes")
            if names is None:
                names = list(accs[0][0].get("classes") or [])[:k]
                names += [f"class {i}" for i in range(len(names), k)]
            if len(same[0]) != len(names):
                _say(messages, f"per-class bars: {m} on {_label(st)} has {k} classes, others "
                               f"{len(names)}; left out")
                continue
            arr = np.stack(same)
            methods.append(m)
            bars.append((np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0), len(same)))
        if methods:
            panels.append((st, names, methods, bars))
    if not panels:
        return None
    width_per = min(16.0, max(4.6, 0.22 * max(len(p[1]) * len(p[2]) for p in panels) + 1.5))
    fig, axes = _grid(len(panels), ncols=1 if width_per > 7.5 else 2, w=width_per, h=3.6)
    for ax, (st, names, methods, bars) in zip(axes, panels):
        x = np.arange(len(names))
        w = 0.8 / len(methods)
        for i, (m, (mean, lo, hi, n)) in enumerate(zip(methods, bars)):
            # clipped: the mean of equal values can land an ulp outside them, and NaN (a class with
            # no test image) draws no whisker; matplotlib refuses negative or NaN error bars
            err = np.nan_to_num(np.clip(np.vstack([mean - lo, hi - mean]), 0, None)) if n > 1 else None
            ax.bar(x - 0.4 + w * (i + 0.5), mean, w, yerr=err, capsize=2, color=colors[m],
                   label=f"{m} (n={n})", error_kw={"lw": 0.8})
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(_label(st))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Final per-class test accuracy (bar: mean over seeds, whisker: min-max)")
    return fig


def plot_bench(run_dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
               messages: list[str] | None = None, statuses: Sequence[str] = ("finished",)) -> list[Path]:
    """Write the benchmark figures for these runs into ``out_dir``; return the PNG paths.

    Figures (see :data:`FIGURES`): test accuracy vs epoch per method (one panel per
    dataset x labels), per-class thresholds (methods that logged them), mask ratio
    (fraction of unlabeled data in subset I / trusted) vs epoch, and grouped bars of
    the final per-class accuracy. A figure without data is skipped; pass a list as
    ``messages`` to receive why (it is logged either way).
    """
    out = Path(out_dir)
    runs = load_runs(run_dirs, statuses=statuses, messages=messages)
    if not runs:
        _say(messages, "no usable runs; no figures written")
        return []
    written: list[Path] = []
    builders: list[tuple[str, Callable[[], Figure | None], str]] = [
        ("accuracy", lambda: _curves_figure(runs, "test_acc", "test accuracy (%)", "Test accuracy"),
         "no run logged test_acc in its history"),
        ("thresholds", lambda: _thresholds_figure(runs), "no run logged per-class thresholds"),
        ("mask_ratio", lambda: _curves_figure(runs, "mask_ratio", "fraction in subset I (trusted)",
                                              "Mask ratio: unlabeled data above the threshold/margin"),
         "no run logged mask_ratio"),
        ("per_class", lambda: _per_class_figure(runs, messages), "no run logged test_per_class_acc"),
    ]
    for name, build, why in builders:
        try:
            fig = build()
        except Exception as exc:   # one figure that cannot be drawn must not cost the others (or the tables)
            _say(messages, f"could not draw {FIGURES[name]}: {type(exc).__name__}: {exc}")
            continue
        if fig is None:
            _say(messages, f"skipped {FIGURES[name]}: {why}")
            continue
        written.append(_save(fig, out / FIGURES[name]))
    return written


def plot_tsne(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              out_path: str | os.PathLike, seed: int = 0, title: str | None = None,
              threads: int | None = 1) -> Path:
    """2-D t-SNE scatter of features coloured by class.

    Perplexity is ``min(30, (N - 1) / 3)`` (at least 1) because sklearn requires
    perplexity < N and ~N/3 keeps small test sets from collapsing; features wider
    than 50 dims are PCA-reduced to 50 first (standard t-SNE practice, much faster).
    ``threads`` caps sklearn's OpenMP threads (None = library default): on a busy
    machine the Barnes-Hut gradient's OpenMP workers spin-wait against each other
    (measured on 2 loaded cores: 60 points took 20-30 s with 2 threads, 0.15 s with 1;
    2000 points ~12 s with 1), so one thread is the robust default.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=float)
    y = np.asarray(labels).ravel()
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SSLZooError(f"plot_tsne: features must be (N, D) with N == len(labels); got {x.shape} and {y.shape}")
    n = x.shape[0]
    if n < 3:
        raise SSLZooError(f"plot_tsne: need at least 3 points, got {n}")
    if not np.all(np.isfinite(x)):
        raise SSLZooError("plot_tsne: features contain NaN or inf")
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    if threads is None:
        emb = tsne.fit_transform(x)
    else:
        with threadpool_limits(limits=threads, user_api="openmp"):
            emb = tsne.fit_transform(x)

    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(_ordered(y.tolist(), key=lambda v: (str(type(v)), v))):
        idx = y == c
        try:
            name = class_names[int(c)]
        except (IndexError, TypeError, ValueError):
            name = str(c)
        ax.scatter(emb[idx, 0], emb[idx, 1], s=10, color=cmap(i % 10), label=f"{name} ({int(idx.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title or f"t-SNE (N={n}, perplexity={perplexity:.1f}, seed={seed})")
    return _save(fig, Path(out_path))


__all__ = ["FIGURES", "load_runs", "plot_bench", "plot_tsne"]
