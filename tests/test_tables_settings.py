"""Tables, comparison CSV and figures keep settings apart that share a data set and label count.

The paper's SFEW rows run with and without RAF-DB as extra unlabeled data: two suite settings
(``sfew-100`` and ``sfew-100-extra``) with the same data set and label count. Grouping by
(method, data set, labels) merged them into one cell and dropped half the runs as "duplicates".
Rows are written by hand (no training), the way tests/test_tables.py does.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from sslzoo.bench import plots as P
from sslzoo.bench import tables as T
from sslzoo.cli import main

SEEDS = (0, 1, 2)
# (setting, dataset, labels) -> method -> accuracies of seeds 0, 1, 2
ACC = {
    ("rafdb-100", "rafdb", 100): {"Baseline": [60, 61, 62], "Ada-CM": [70, 71, 72]},
    ("sfew-100", "sfew", 100): {"Baseline": [30, 31, 32], "Ada-CM": [35, 36, 37]},
    ("sfew-100-extra", "sfew", 100): {"Baseline": [40, 41, 42], "Ada-CM": [50, 51, 52]},
}


def _row(method: str, setting: str, dataset: str, labels: int, seed: int, acc: float) -> dict:
    return {"method": method, "algorithm": "adacm" if method == "Ada-CM" else "supervised", "policy": "",
            "dataset": dataset, "test_dataset": "", "labels": labels, "seed": seed, "setting": setting,
            "status": "finished", "final_acc": acc, "best_test_acc": acc + 2, "val_selected_acc": None,
            "mean_class_acc": acc - 5}


@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame([_row(m, st, d, lab, s, accs[s]) for (st, d, lab), by in ACC.items()
                         for m, accs in by.items() for s in SEEDS])


def _md_rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln[1:-1])] for ln in md.splitlines() if ln.startswith("|")]


def test_summary_keeps_both_settings(df):
    s = T.summarize(df, baseline="Baseline")
    assert s.attrs["n_duplicates"] == 0
    assert len(s) == 6 and "setting" in s.columns
    got = {(r.method, r.setting): (r["mean"], r.n, r.delta) for _, r in s.iterrows()}
    assert got[("Ada-CM", "sfew-100")] == pytest.approx((36.0, 3, 5.0))
    assert got[("Ada-CM", "sfew-100-extra")] == pytest.approx((51.0, 3, 10.0))  # vs its own setting's baseline
    assert got[("Baseline", "sfew-100-extra")] == pytest.approx((41.0, 3, 0.0))


def test_markdown_names_shared_columns_by_setting(df):
    md = T.render_table(T.summarize(df, baseline="Baseline"), "md", baseline="Baseline", gains=True)
    rows = _md_rows(md)
    assert rows[0] == ["Method", "rafdb (100)", "sfew-100", "sfew-100-extra"]   # unshared: today's name
    by = {r[0]: r[1:] for r in rows[2:]}
    assert by["Baseline"] == ["61.00±1.00", "31.00±1.00", "41.00±1.00"]
    assert by["Ada-CM"] == ["**71.00±1.00**", "**36.00±1.00**", "**51.00±1.00**"]
    assert by["Gain over Baseline"] == ["+10.00", "+5.00", "+10.00"]
    assert "duplicate" not in md and "No runs excluded." in md
    assert "named by their setting" in md.splitlines()[0]


def test_csv_latex_and_comparison_keep_settings_apart(df):
    s = T.summarize(df, baseline="Baseline")
    back = pd.read_csv(io.StringIO(T.render_table(s, "csv", baseline="Baseline")), skiprows=1).set_index("method")
    assert back.loc["Ada-CM", "rafdb/100/mean"] == pytest.approx(71.0)
    assert back.loc["Ada-CM", "sfew-100/mean"] == pytest.approx(36.0)
    assert back.loc["Ada-CM", "sfew-100-extra/mean"] == pytest.approx(51.0)
    tex = T.render_table(s, "latex", baseline="Baseline")
    assert "\\multicolumn{2}{c}{sfew}" in tex and "sfew-100 & sfew-100-extra" in tex
    comp = pd.read_csv(io.StringIO(T.comparison_csv(s)))
    assert len(comp) == 6 and set(comp.setting) == {"rafdb-100", "sfew-100", "sfew-100-extra"}
    assert comp.set_index(["method", "setting"]).loc[("Ada-CM", "sfew-100-extra"), "delta"] == pytest.approx(10.0)


def test_setting_column_absent_falls_back_to_dataset_and_labels(df):
    """A results.csv from before the `setting` column (or a hand-made frame) still works."""
    s = T.summarize(df[df.setting != "sfew-100-extra"].drop(columns=["setting"]), baseline="Baseline")
    assert len(s) == 4 and set(s.setting) == {"rafdb-100", "sfew-100"}
    assert _md_rows(T.render_table(s, "md"))[0] == ["Method", "rafdb (100)", "sfew (100)"]


def _write_bench(out: Path, df: pd.DataFrame) -> None:
    for row in df.to_dict("records"):
        run = out / "runs" / row["setting"] / row["method"] / f"seed{row['seed']}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps(row), encoding="utf-8")
    (out / "bench.json").write_text(json.dumps({"methods": ["Baseline", "Ada-CM"], "baseline": "Baseline",
                                                "settings": [k[0] for k in ACC], "metric": "final"}))


def test_sslzoo_table_metric_and_gains_by_setting(df, tmp_path, capsys):
    out = tmp_path / "bench"
    _write_bench(out, df)
    assert main(["table", str(out), "--metric", "best", "--gains"]) == 0
    rows = _md_rows(capsys.readouterr().out)
    assert rows[0] == ["Method", "rafdb (100)", "sfew-100", "sfew-100-extra"]
    by = {r[0]: r[1:] for r in rows[2:]}
    assert by["Ada-CM"] == ["**73.00±1.00**", "**38.00±1.00**", "**53.00±1.00**"]   # best_test_acc = acc + 2
    assert by["Gain over Baseline"] == ["+10.00", "+5.00", "+10.00"]
    comp = pd.read_csv(out / "comparison.csv")
    assert len(comp) == 6 and set(comp.metric) == {"best"}


def _write_run(out: Path, row: dict) -> Path:
    run = out / "runs" / row["setting"] / row["method"] / f"seed{row['seed']}"
    run.mkdir(parents=True)
    hist = [{"epoch": e, "test_acc": row["final_acc"] - 3 + e, "mask_ratio": 0.3 * e,
             "test_per_class_acc": [row["final_acc"]] * 3,
             "thresholds": [0.8, 0.85, 0.9] if row["method"] == "Ada-CM" else None} for e in (1, 2, 3)]
    metrics = {"status": "finished", "algorithm": row["algorithm"], "dataset": row["dataset"],
               "test_dataset": row["dataset"], "labels": row["labels"], "seed": row["seed"],
               "classes": ["happy", "sad", "neutral"], "history": hist}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (run / "result.json").write_text(json.dumps(row), encoding="utf-8")
    return run


def test_figures_have_one_panel_per_setting(df, tmp_path, monkeypatch):
    runs = [_write_run(tmp_path, row) for row in df.to_dict("records")]
    figures = {}
    save = P._save

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)
    monkeypatch.setattr(P, "_save", keep)
    P.plot_bench(runs, tmp_path / "plots")
    assert set(figures) == set(P.FIGURES.values())
    for name in ("accuracy_curves.png", "mask_ratio.png", "per_class_acc.png"):
        axes = [ax for ax in figures[name].axes if ax.get_visible()]
        titles = [ax.get_title() for ax in axes]
        assert len(axes) == 3, (name, titles)
        assert any("sfew-100-extra" in t for t in titles) and any(t == "rafdb, 100 labels" for t in titles)
        for ax in axes:   # each panel: the two methods, 3 seeds each (not 6 merged)
            assert len(ax.get_legend().get_texts()) == 2
    thr = [ax.get_title() for ax in figures["thresholds.png"].axes if ax.get_visible()]
    assert len(thr) == 3 and all("(n=3)" in t for t in thr) and any("sfew-100-extra" in t for t in thr)
