"""sslzoo.bench.plots: figures from fake run dirs, skipping without data, t-SNE."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sslzoo.bench import plots as P
from sslzoo.errors import SSLZooError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


def _write_run(root: Path, name: str, method: str, seed: int, *, thresholds: bool, status: str = "finished",
               epochs: int = 4, labels: int = 70, mask: bool = True, per_class: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    hist = []
    for e in range(1, epochs + 1):
        hist.append({
            "epoch": e, "test_acc": 40 + 4 * e + rng.normal(), "test_mean_class_acc": 35 + 3 * e,
            "test_per_class_acc": (rng.uniform(20, 90, 7).tolist() if per_class else None),
            "val_acc": None, "mask_ratio": (min(1.0, 0.2 * e) if mask else None), "pseudo_label_acc": 78.0,
            "thresholds": (np.clip(0.6 + 0.05 * e + 0.02 * np.arange(7), 0, 1).tolist() if thresholds else None),
            "losses": {"sup": 1.2 / e, "unsup": 0.4},
        })
    m = {"status": status, "algorithm": method, "policy": method, "method": method, "dataset": "synthfer",
         "labels": labels, "seed": seed, "classes": CLASSES, "history": hist,
         "final_acc": hist[-1]["test_acc"], "best_test_acc": max(h["test_acc"] for h in hist), "best_epoch": epochs}
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    return d


def _is_png(p: Path) -> bool:
    data = p.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plot_bench_writes_all_figures(tmp_path):
    runs = [_write_run(tmp_path / "runs", "adacm_s0", "adacm", 0, thresholds=True),
            _write_run(tmp_path / "runs", "sup_s0", "supervised", 0, thresholds=False, mask=False),
            _write_run(tmp_path / "runs", "adacm_s1", "adacm", 1, thresholds=True, epochs=3),
            _write_run(tmp_path / "runs", "sup_div", "supervised", 1, thresholds=False, status="diverged"),
            tmp_path / "runs" / "missing"]
    msgs: list[str] = []
    out = P.plot_bench(runs, tmp_path / "figs", messages=msgs)
    assert [p.name for p in out] == list(P.FIGURES.values())
    for p in out:
        assert p.parent == tmp_path / "figs" and _is_png(p)
    assert sorted(f.name for f in (tmp_path / "figs").iterdir()) == sorted(P.FIGURES.values())  # no temp files
    assert any("status diverged" in m for m in msgs) and any("no metrics.json" in m for m in msgs)


def test_plot_bench_skips_figures_without_data(tmp_path):
    runs = [_write_run(tmp_path, f"sup_s{s}", "supervised", s, thresholds=False, mask=False, per_class=False)
            for s in range(2)]
    msgs: list[str] = []
    out = P.plot_bench(runs, tmp_path / "figs", messages=msgs)
    assert [p.name for p in out] == ["accuracy_curves.png"] and _is_png(out[0])
    for name in ("thresholds.png", "mask_ratio.png", "per_class_acc.png"):
        assert any(m.startswith(f"skipped {name}") for m in msgs)


def test_plot_bench_no_runs(tmp_path):
    msgs: list[str] = []
    assert P.plot_bench([], tmp_path / "figs", messages=msgs) == []
    assert msgs and "no usable runs" in msgs[-1]


def test_plot_tsne(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    feats = rng.normal(size=(60, 16)) + labels[:, None] * 3.0
    out = P.plot_tsne(feats, labels, ["a", "b", "c"], tmp_path / "sub" / "tsne.png", seed=0)
    assert out == tmp_path / "sub" / "tsne.png" and _is_png(out)
    with pytest.raises(SSLZooError):
        P.plot_tsne(feats[:10], labels, ["a", "b", "c"], tmp_path / "bad.png")


def test_load_runs_labels_by_suite_row_not_algorithm(tmp_path):
    """Table 1's rows all run `adacm`; the bench's result.json names them, so they stay apart."""
    a = _write_run(tmp_path, "ft08", "adacm", 0, thresholds=True)
    b = _write_run(tmp_path, "full", "adacm", 0, thresholds=True)
    c = _write_run(tmp_path, "plain", "supervised", 0, thresholds=False)
    (a / "result.json").write_text(json.dumps({"method": "FT = 0.8"}), encoding="utf-8")
    (b / "result.json").write_text(json.dumps({"method": "Ada-CM (L_u + L_c)"}), encoding="utf-8")
    (c / "result.json").write_text("{not json", encoding="utf-8")          # unreadable: falls back
    for d in (a, b, c):                                                    # a bare `sslzoo train` run
        m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        del m["method"]
        (d / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    assert [r["method"] for r in P.load_runs([a, b, c])] == ["FT = 0.8", "Ada-CM (L_u + L_c)", "supervised"]


def test_per_class_bars_with_equal_seeds_and_an_empty_class(tmp_path):
    """Seen in a real bench (scratch suite): three seeds with the same per-class accuracy, whose
    mean lies an ulp outside [min, max], crashed matplotlib ('yerr' must not contain negative
    values) after every run had finished; a NaN accuracy (a class with no test image) too."""
    same = [45.83333333333333, 0.1, 50.0, 60.0, float("nan"), 70.0, 80.0]
    mean = np.nanmean(np.array([same] * 3), 0)
    assert (mean[0] - same[0]) > 0 or (mean[1] - same[1]) > 0     # the float noise this test is about
    runs = []
    for s in range(3):
        d = _write_run(tmp_path / "runs", f"sup_s{s}", "supervised", s, thresholds=False)
        m = json.loads((d / "metrics.json").read_text())
        m["history"][-1]["test_per_class_acc"] = same
        (d / "metrics.json").write_text(json.dumps(m))
        runs.append(d)
    msgs: list[str] = []
    out = P.plot_bench(runs, tmp_path / "figs", messages=msgs)
    assert "per_class_acc.png" in [p.name for p in out], msgs


def test_a_figure_that_fails_is_reported_and_the_others_are_written(tmp_path, monkeypatch):
    runs = [_write_run(tmp_path / "runs", "adacm_s0", "adacm", 0, thresholds=True)]
    monkeypatch.setattr(P, "_thresholds_figure", lambda runs: 1 / 0)
    msgs: list[str] = []
    out = P.plot_bench(runs, tmp_path / "figs", messages=msgs)
    assert "thresholds.png" not in [p.name for p in out] and "accuracy_curves.png" in [p.name for p in out]
    assert any(m.startswith("could not draw thresholds.png: ZeroDivisionError") for m in msgs)
