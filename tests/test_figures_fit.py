"""Every figure `sslzoo plot` writes fits its saved size: no title, axis label, legend or tick
label reaches past the figure's edge (thresholds.png's title was cut off on both sides).

Figures are built from synthetic runs, captured where plots.py saves them, and rendered with
the Agg canvas at the saved dpi.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sslzoo.bench import plots as P

CLASSES7 = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
CLASSES8 = CLASSES7 + ["contempt"]
TABLE1 = ["Baseline", "FT = 0.5", "FT = 0.8", "FT = 0.95", "FlexMatch", "Ada-CM (L_u)", "Ada-CM (L_u + L_c)"]


def _run(root: Path, method: str, setting: str, dataset: str, labels: int, seed: int, classes: list[str],
         thresholds: bool) -> Path:
    rng = np.random.default_rng(seed)
    hist = [{"epoch": e, "test_acc": 40 + 3 * e + rng.normal(), "mask_ratio": min(1.0, 0.1 * e),
             "test_per_class_acc": rng.uniform(20, 90, len(classes)).tolist(),
             "thresholds": np.clip(0.6 + 0.03 * e + 0.02 * np.arange(len(classes)), 0, 1).tolist()
             if thresholds else None} for e in range(1, 6)]
    d = root / "runs" / setting / P.__name__.split(".")[0] / method.replace(" ", "_") / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"status": "finished", "dataset": dataset, "labels": labels,
                                                "seed": seed, "classes": classes, "history": hist}))
    (d / "result.json").write_text(json.dumps({"method": method, "setting": setting}))
    return d


SCENARIOS = {
    # the report: one Ada-CM run, one panel of 4.6 in; its suptitle is wider than that
    "one_panel": [("Ada-CM", "synthfer-70", "synthfer", 70, CLASSES7, True)],
    # Table 1 (long row names, all with thresholds) on two settings that share data set and labels
    "table1": [(m, st, "sfew", 100, CLASSES7, m != "Baseline") for m in TABLE1
               for st in ("sfew-100", "sfew-100-with-rafdb-unlabeled")],
    # AffectNet's 8 classes x many methods: the wide single-column per-class layout
    "eight_classes": [(m, "affectnet-2000", "affectnet", 2000, CLASSES8, True) for m in TABLE1],
}


def _drawn_tick_labels(ax) -> list:
    """Tick labels inside the view limits (matplotlib also keeps labels for ticks it does not draw)."""
    out = []
    for labels, lim, i in ((ax.get_xticklabels(), ax.get_xlim(), 0), (ax.get_yticklabels(), ax.get_ylim(), 1)):
        lo, hi = sorted(lim)
        eps = 1e-9 * max(1.0, abs(hi - lo))
        out += [t for t in labels if lo - eps <= t.get_position()[i] <= hi + eps]
    return out


def _outside(fig: Figure) -> list[str]:
    """Text artists whose rendered extent leaves the figure's bounding box (at the saved dpi)."""
    fig.set_dpi(P._DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    items = [("suptitle", fig._suptitle)]
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        items += [(f"axes {i} title", ax.title), (f"axes {i} left title", ax._left_title),
                  (f"axes {i} right title", ax._right_title), (f"axes {i} xlabel", ax.xaxis.label),
                  (f"axes {i} ylabel", ax.yaxis.label), (f"axes {i} legend", ax.get_legend())]
        items += [(f"axes {i} tick label", t) for t in _drawn_tick_labels(ax)]
    bad = []
    for name, artist in items:
        if artist is None or not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
            continue
        e = artist.get_window_extent(renderer)
        if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5:
            text = artist.get_text() if hasattr(artist, "get_text") else type(artist).__name__
            bad.append(f"{name} {text!r}: {e.bounds} outside {box.bounds}")
    return bad


@pytest.fixture
def saved(monkeypatch) -> dict[str, Figure]:
    """The figures plots.py saves, by file name."""
    figures: dict[str, Figure] = {}
    save = P._save

    def keep(fig: Figure, path: Path) -> Path:
        figures[path.name] = fig
        return save(fig, path)
    monkeypatch.setattr(P, "_save", keep)
    return figures


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_bench_figures_fit(tmp_path, saved, scenario):
    runs = [_run(tmp_path, m, st, d, lab, seed, cls, thr)
            for m, st, d, lab, cls, thr in SCENARIOS[scenario] for seed in (0, 1)]
    written = P.plot_bench(runs, tmp_path / "plots")
    assert sorted(p.name for p in written) == sorted(P.FIGURES.values()) == sorted(saved)
    problems = {name: bad for name, fig in saved.items() if (bad := _outside(fig))}
    assert not problems, problems


def test_tsne_figure_fits(tmp_path, saved):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 8)
    feats = rng.normal(size=(64, 8)) + labels[:, None] * 2.0
    # the title `sslzoo plot --tsne` gives a cross-data-set run
    title = "remixmatch (affectnet, 10000 labels, seed 4): ckplus test features"
    P.plot_tsne(feats, labels, CLASSES8, tmp_path / "tsne.png", title=title)
    assert not _outside(saved["tsne.png"])
