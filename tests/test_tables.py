"""Table math, layout and output formats of sslzoo.bench.tables (hand-computed values)."""
from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sslzoo.bench import tables as T
from sslzoo.errors import SSLZooError


def _run(method, seed, acc, dataset="synthfer", labels=70, status="finished", best=None, val=np.nan):
    return {"method": method, "algorithm": method.split("[")[0], "policy": "", "dataset": dataset,
            "labels": labels, "seed": seed, "status": status, "final_acc": acc,
            "best_test_acc": acc + 1 if best is None else best, "val_selected_acc": val,
            "mean_class_acc": acc - 5}


@pytest.fixture
def df() -> pd.DataFrame:
    rows = []
    # synthfer/70: supervised 50, 53, 53; adacm 60, 62, 64 (diffs 10, 9, 11); fixmatch 61, 61.5, 63
    for s, a in enumerate([50, 53, 53]):
        rows.append(_run("supervised", s, a))
    for s, a in enumerate([60, 62, 64]):
        rows.append(_run("adacm", s, a))
    for s, a in enumerate([61, 61.5, 63]):
        rows.append(_run("fixmatch", s, a))
    # synthfer/140: only 2 seeds of adacm, fixmatch best here
    rows += [_run("supervised", 0, 55, labels=140), _run("supervised", 1, 57, labels=140),
             _run("supervised", 2, 56, labels=140)]
    rows += [_run("adacm", 0, 66, labels=140), _run("adacm", 1, 68.5, labels=140)]
    rows += [_run("fixmatch", s, a, labels=140) for s, a in enumerate([69, 70, 71])]
    # excluded rows
    rows.append(_run("adacm", 2, np.nan, labels=140, status="diverged"))
    rows.append(_run("fixmatch", 3, 99.0, status="failed"))
    rows.append(_run("fixmatch", 4, 99.0, status="running"))
    # a method with one seed on another data set, listed first for that data set
    rows.append(_run("adacm[policy=fixed:0.8]", 0, 40, dataset="raf_db", labels=400))
    return pd.DataFrame(rows)


def _row(summary, method, labels=70, dataset="synthfer"):
    r = summary[(summary.method == method) & (summary.labels == labels) & (summary.dataset == dataset)]
    assert len(r) == 1
    return r.iloc[0]


def test_mean_std_ddof1(df):
    s = T.summarize(df)
    r = _row(s, "adacm")
    assert r["mean"] == pytest.approx(62.0) and r["std"] == pytest.approx(2.0) and r["n"] == 3
    assert T.STD_DDOF == 1 and r["ddof"] == 1
    # ddof=0 reproduces USB/TorchSSL-style np.std
    r0 = _row(T.summarize(df, ddof=0), "adacm")
    assert r0["std"] == pytest.approx(np.std([60, 62, 64]))


def test_single_seed_has_no_std_and_prints_mean_only(df):
    s = T.summarize(df)
    r = _row(s, "adacm[policy=fixed:0.8]", labels=400, dataset="raf_db")
    assert r["n"] == 1 and math.isnan(r["std"])
    md = T.render_table(s, "md")
    assert "40.00 (n=1)" in md and "40.00±" not in md


def test_non_finished_excluded_and_reported(df):
    s = T.summarize(df)
    assert _row(s, "fixmatch")["n"] == 3  # failed/running 99s ignored
    assert _row(s, "fixmatch")["mean"] == pytest.approx(np.mean([61, 61.5, 63]))
    assert s.attrs["excluded"] == {"diverged": 1, "failed": 1, "running": 1}
    assert s.attrs["n_excluded"] == 3
    md = T.render_table(s, "md")
    assert "1 diverged" in md and "1 failed" in md and "1 running" in md


def test_all_runs_excluded_setting_shows_dash():
    d = pd.DataFrame([_run("supervised", 0, 50), _run("adacm", 0, np.nan, status="diverged")])
    s = T.summarize(d)
    assert _row(s, "adacm")["n"] == 0
    md = T.render_table(s, "md")
    assert re.search(r"\| adacm \| – \|", md)


def test_delta_and_paired_p_value(df):
    s = T.summarize(df)
    r = _row(s, "adacm")
    assert r["delta"] == pytest.approx(62.0 - 52.0)
    assert r["n_paired"] == 3
    # hand computation: diffs 10, 9, 11 -> mean 10, sd 1, t = 10 / (1/sqrt(3)), df 2
    t = 10 / (1 / math.sqrt(3))
    assert r["p_value"] == pytest.approx(2 * stats.t.sf(t, 2))
    assert r["p_value"] == pytest.approx(stats.ttest_rel([60, 62, 64], [50, 53, 53]).pvalue)
    # the paired difference's 95 % interval: 10 +- t_{0.975, 2} * 1 / sqrt(3) (4.303 / 1.732 = 2.484)
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert half == pytest.approx(2.484, abs=1e-3)
    assert (r["delta_ci_low"], r["delta_ci_high"]) == (pytest.approx(10 - half), pytest.approx(10 + half))
    # 140 labels: adacm has 2 seeds; delta over all seeds, p over the 2 paired ones
    r = _row(s, "adacm", labels=140)
    assert r["delta"] == pytest.approx(67.25 - 56.0) and r["n_paired"] == 2
    # diffs 11, 11.5 -> mean 11.25, sd 0.5/sqrt(2), t = 11.25 / 0.25 = 45, df 1
    assert r["p_value"] == pytest.approx(2 * stats.t.sf(45.0, 1))
    assert r["p_value"] == pytest.approx(stats.ttest_rel([66, 68.5], [55, 57]).pvalue)
    # the baseline row itself
    b = _row(s, "supervised")
    assert b["delta"] == 0 and math.isnan(b["p_value"]) and b["n_paired"] == 0
    assert math.isnan(b["delta_ci_low"]) and math.isnan(b["delta_ci_high"])
    # no baseline in that setting
    r = _row(s, "adacm[policy=fixed:0.8]", labels=400, dataset="raf_db")
    assert math.isnan(r["delta"]) and math.isnan(r["p_value"])


def test_p_value_degenerate_cases():
    rows = [_run("supervised", s, a) for s, a in enumerate([50.1, 52.3, 54.7])]
    rows += [_run("same", s, a) for s, a in enumerate([50.1, 52.3, 54.7])]
    rows += [_run("shift", s, a + 1.1) for s, a in enumerate([50.1, 52.3, 54.7])]  # float noise in diffs
    rows += [_run("one", 0, 60.0)]
    s = T.summarize(pd.DataFrame(rows))
    assert _row(s, "same")["p_value"] == 1.0
    assert math.isnan(_row(s, "shift")["p_value"])  # not 0.0: zero variance is no certainty
    assert _row(s, "shift")["delta"] == pytest.approx(1.1)
    one = _row(s, "one")
    assert one["n_paired"] == 1 and math.isnan(one["p_value"])


def test_metric_aliases(df):
    for name in ("best", "best_test", "best_test_acc"):
        s = T.summarize(df, metric=name)
        assert set(s.metric) == {"best"}
        assert _row(s, "adacm")["mean"] == pytest.approx(63.0)
    s = T.summarize(df, metric="val_selected")
    assert (s.n == 0).all() and s.attrs["n_missing_metric"] > 0
    with pytest.raises(SSLZooError):
        T.summarize(df, metric="nope")
    with pytest.raises(SSLZooError):
        T.summarize(df.drop(columns=["seed"]))


def test_duplicates_keep_last():
    rows = [_run("adacm", 0, 50), _run("adacm", 0, 60), _run("adacm", 1, 62)]
    s = T.summarize(pd.DataFrame(rows))
    assert _row(s, "adacm")["mean"] == pytest.approx(61.0) and s.attrs["n_duplicates"] == 1


# ----------------------------------------------------------------------------- markdown

def _md_cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def _md_table(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [_md_cells(ln) for ln in lines]


def test_markdown_structure_bold_and_order(df):
    s = T.summarize(df)
    md = T.render_table(s, "md")
    first, last = md.strip().splitlines()[0], md.strip().splitlines()[-1]
    assert first.startswith("*") and first.endswith("*") and "mean ± std over seeds" in first
    assert "ddof=1" in first and "final-epoch test accuracy" in first
    rows = _md_table(md)
    assert all(len(r) == len(rows[0]) for r in rows)
    assert rows[0] == ["Method", "synthfer (70)", "synthfer (140)", "raf\\_db (400)"]
    assert re.fullmatch(r"(:?-+:?)", rows[1][0])
    assert [r[0] for r in rows[2:]] == ["supervised", "adacm", "fixmatch", "adacm[policy=fixed:0.8]"]
    by = {r[0]: r for r in rows[2:]}
    assert by["adacm"][1] == "**62.00±2.00**"  # best at 70
    assert by["fixmatch"][2] == "**70.00±1.00**"  # best at 140
    assert by["adacm"][2] == "67.25±1.77 (n=2)"  # n differs from the modal 3
    assert by["supervised"][3] == "–"  # missing cell
    assert by["adacm[policy=fixed:0.8]"][3] == "40.00 (n=1)"  # lone value: not bold
    assert "n = 3 seeds per cell unless marked" in first
    assert last.startswith("|")


def test_methods_order_selects_and_orders(df):
    s = T.summarize(df)
    md = T.render_table(s, "md", methods_order=["fixmatch", "adacm", "ghost"])
    names = [r[0] for r in _md_table(md)[2:]]
    assert names == ["fixmatch", "adacm", "ghost"]
    assert _md_table(md)[4][1:] == ["–", "–"]  # ghost
    assert len(_md_table(md)[0]) == 3  # raf_db column gone: no selected method ran it


def test_no_n_marks_when_equal():
    rows = [_run(m, s, 50 + s + i) for i, m in enumerate(["supervised", "adacm"]) for s in range(3)]
    md = T.render_table(T.summarize(pd.DataFrame(rows)), "md")
    assert "(n=" not in md.split("\n", 1)[1] and "unless marked" not in md


def test_bold_ties_at_two_decimals():
    rows = [_run("a", 0, 60.001), _run("a", 1, 60.001), _run("b", 0, 60.0), _run("b", 1, 60.0),
            _run("c", 0, 10.0), _run("c", 1, 10.0)]
    rows_md = _md_table(T.render_table(T.summarize(pd.DataFrame(rows), baseline=None), "md"))
    by = {r[0]: r[1] for r in rows_md[2:]}
    assert by["a"].startswith("**") and by["b"].startswith("**") and not by["c"].startswith("**")


def test_gains_row(df):
    s = T.summarize(df)
    md = T.render_table(s, "md", gains=True)
    rows = _md_table(md)
    assert rows[-1][0] == "Gain over supervised"
    assert rows[-1][1:] == ["+10.00", "+14.00", "–"]  # 62-52, 70-56, no baseline
    assert "Gain over supervised" in md.splitlines()[0]
    # without a baseline in the summary: no gains row, no crash
    s2 = T.summarize(df[df.method != "supervised"])
    assert "Gain over" not in T.render_table(s2, "md", gains=True)


def test_markdown_escapes_pipes():
    rows = [_run("a|b*c", 0, 50), _run("a|b*c", 1, 52)]
    md = T.render_table(T.summarize(pd.DataFrame(rows)), "md")
    rows_md = _md_table(md)
    assert all(len(r) == 2 for r in rows_md) and rows_md[2][0] == "a\\|b\\*c"


# ----------------------------------------------------------------------------- latex

def _check_latex(tex: str) -> None:
    body = "\n".join(ln for ln in tex.splitlines() if not ln.lstrip().startswith("%"))
    unescaped = re.sub(r"\\[{}%&#_$]", "", body)
    depth = 0
    for ch in unescaped:
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0
    assert depth == 0
    assert unescaped.count("$") % 2 == 0
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", body)
    stack = []
    for kind, name in envs:
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack and [n for k, n in envs if k == "begin"] == ["table", "tabular"]
    for cmd in ("\\caption{", "\\toprule", "\\midrule", "\\bottomrule", "\\centering"):
        assert cmd in body
    ncols = len(re.search(r"\\begin\{tabular\}\{([lcr|]+)\}", body).group(1).replace("|", ""))
    inside = body.split("\\begin{tabular}", 1)[1].split("\\end{tabular}", 1)[0]
    for line in inside.splitlines()[1:]:
        if not line.strip().endswith("\\\\"):
            continue
        cells = re.split(r"(?<!\\)&", line)
        spans = sum(int(m) - 1 for m in re.findall(r"\\multicolumn\{(\d+)\}", line))
        assert len(cells) + spans == ncols, line
        assert len(cells) - 1 == line.count("&") - line.count("\\&")


def test_latex_parses(df):
    s = T.summarize(df)
    tex = T.render_table(s, "latex", gains=True)
    _check_latex(tex)
    assert "\\textbf{62.00$\\pm$2.00}" in tex
    assert "raf\\_db" in tex and "\\multicolumn{2}{c}{synthfer}" in tex
    assert "\\cmidrule(lr){2-3}" in tex and "\\cmidrule(lr){4-4}" in tex
    assert "mean $\\pm$ std over seeds" in tex and "ddof=1" in tex
    assert "67.25$\\pm$1.77 (n=2)" in tex and "Gain over supervised & +10.00 & +14.00 & --" in tex


def test_latex_escapes_method_names():
    rows = [_run(m, s, 50 + s) for m in ["a_b", "50%", "x&y", "#1", "[z]"] for s in range(2)]
    tex = T.render_table(T.summarize(pd.DataFrame(rows), baseline=None), "latex")
    _check_latex(tex)
    for esc in ("a\\_b &", "50\\% &", "x\\&y &", "\\#1 &", "{}[z] &"):
        assert esc in tex


# ----------------------------------------------------------------------------- csv

def test_table_csv_round_trips(df):
    s = T.summarize(df)
    text = T.render_table(s, "csv", gains=True)
    assert text.splitlines()[0].lstrip('"').startswith("# ") and "mean +/- std over seeds" in text
    back = pd.read_csv(io.StringIO(text), skiprows=1)
    assert list(back.columns[:4]) == ["method", "synthfer/70/mean", "synthfer/70/std", "synthfer/70/n"]
    r = back.set_index("method")
    assert r.loc["adacm", "synthfer/70/mean"] == pytest.approx(62.0)
    assert r.loc["adacm", "synthfer/70/std"] == pytest.approx(2.0)
    assert r.loc["adacm", "synthfer/140/n"] == 2
    assert math.isnan(r.loc["supervised", "raf_db/400/mean"])
    assert r.loc["Gain over supervised", "synthfer/140/mean"] == pytest.approx(14.0)


def test_comparison_csv_round_trips(df):
    s = T.summarize(df)
    back = pd.read_csv(io.StringIO(T.comparison_csv(s)))
    for c in ("method", "dataset", "labels", "metric", "mean", "std", "n", "delta", "p_value", "n_paired"):
        assert c in back.columns
    assert len(back) == len(s)
    pd.testing.assert_series_equal(back["p_value"], s["p_value"].reset_index(drop=True), check_names=False)
    pd.testing.assert_series_equal(back["mean"], s["mean"].reset_index(drop=True), check_names=False)


def test_write_tables_atomic(df, tmp_path):
    out = tmp_path / "tables"
    paths = T.write_tables(df, out, metric="best", methods_order=["supervised", "fixmatch", "adacm"])
    assert set(paths) == {"md", "csv", "tex", "comparison"}
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "table.csv", "table.md", "table.tex"]
    md = paths["md"].read_text(encoding="utf-8")
    assert "best test accuracy over epochs" in md and "**" in md
    _check_latex(paths["tex"].read_text(encoding="utf-8"))
    assert set(pd.read_csv(paths["comparison"]).metric) == {"best"}
    # overwrite works and leaves no temp files
    T.write_tables(df, out)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "table.csv", "table.md", "table.tex"]


def test_render_rejects_bad_format(df):
    with pytest.raises(SSLZooError):
        T.render_table(T.summarize(df), "html")
