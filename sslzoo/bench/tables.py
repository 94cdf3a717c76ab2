"""Results table (one row per run) -> the paper's mean±std tables and a comparison CSV.

Why this module exists: every number in a paper table is an aggregate over seeds,
and the aggregation choices (which runs count, which std, how a method is compared
with the baseline) change the numbers. They are made once, here, and written into
every table caption so a reader never has to guess.

Conventions
-----------
* Only runs with ``status == "finished"`` count. Diverged / failed / running runs
  are excluded and counted; the counts go into ``summary.attrs["excluded"]`` and
  into the table caption. A (method, setting) whose runs were all excluded still
  gets a row (n=0) so it shows as "–" instead of silently vanishing.
* Runs are grouped by **(method, setting)**, where the setting is the results'
  ``setting`` column (the suite setting's id, e.g. ``sfew-100`` and
  ``sfew-100-extra``: SFEW without and with RAF-DB as extra unlabeled data share a
  data set and a label count but are different experiments). Without that column
  (an older or hand-made frame) the setting is ``<dataset>-<labels>``. A table
  column is named ``<dataset> (<labels>)`` as before, unless two settings share the
  data set and label count: then each of those columns is named by its setting.
* Duplicate finished rows for the same (method, setting, seed) do not arise in a
  bench folder (one row file per run folder, and a run folder is one method,
  setting and seed); they come from results files concatenated by hand or run
  folders copied within ``runs/``. The row that comes last in the input is kept
  (no row is "newer" than another), and the count goes into
  ``attrs["n_duplicates"]`` and the caption.
* A run whose metric is NaN (e.g. ``val_selected_acc`` without a validation split)
  does not count for that metric (``attrs["n_missing_metric"]``).
* **std over seeds uses ddof=1 (sample standard deviation)** by default
  (:data:`STD_DDOF`). Source check: USB's and TorchSSL's aggregation script
  (``scripts/average_log.py`` in microsoft/Semi-supervised-learning and
  TorchSSL/TorchSSL) formats ``np.std(...)``, i.e. numpy's default ddof=0
  (population std); FixMatch only says "mean and variance over 5 folds" without
  the estimator. We deliberately do not copy ddof=0: with the usual 3 seeds it
  understates the spread by a factor sqrt(2/3) ~ 0.82, and ddof=1 is the estimator
  the paired t-test below uses. Pass ``ddof=0`` to :func:`summarize` to reproduce
  USB/TorchSSL-style numbers; the caption always states which one was used.
  A cell with n=1 has no std (NaN) and prints as the mean only.
* ``ci_low`` / ``ci_high``: the 95 % confidence interval of the mean over seeds,
  mean ± t s / sqrt(n), t the 0.975 quantile of Student's t distribution with n-1
  degrees of freedom and s the sample std (ddof=1, whatever ``ddof`` the std column
  uses: the interval is only valid with it). NaN for n < 2. The tables print it with
  ``ci=True`` (``sslzoo table --ci``), in brackets after mean ± std.
* ``delta`` = method mean - baseline mean in the same setting,
  each over all of its own finished seeds. ``p_value`` is a two-sided paired
  t-test (``scipy.stats.ttest_rel``) over the seeds *both* have (pairing by seed:
  same seed = same labeled split and init), ``n_paired`` says how many.
  - fewer than 2 paired seeds, the baseline row itself, or no baseline: NaN
    (``n_paired`` = 0 for the baseline row and when there is no baseline).
  - all paired differences are 0 (within 1e-9): p = 1.0. The t statistic is 0/0,
    but identical results on every seed are no evidence of a difference (this
    happens for real, e.g. an ablation row whose config equals the baseline).
  - all differences equal the same non-zero value: p = NaN, *not* 0.0. The
    t-test then estimates zero variance and returns t=±inf, p=0, i.e. certainty
    from as few as two seeds; an exact sign-flip test on n pairs could not go
    below 2/2**n (0.25 for 3 seeds). Undefined is the honest answer; read
    ``delta`` and ``n_paired``.
* ``delta_ci_low`` / ``delta_ci_high``: the 95 % confidence interval of the mean paired
  difference (method - baseline, seed by seed, over the ``n_paired`` seeds), by
  :func:`mean_ci`: the interval the paired t-test inverts (it excludes 0 when p < 0.05;
  with zero-variance differences it is a single point while p is NaN). It says how large the gain plausibly is, which a p-value does not. NaN where
  ``p_value`` has no pairs (fewer than two, the baseline row, no baseline).
"""
from __future__ import annotations

from ..io import atomic_write

import csv
import io
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import SSLZooError

log = logging.getLogger(__name__)

#: metric key -> (results column, description used in captions)
METRICS: dict[str, tuple[str, str]] = {
    "final": ("final_acc", "final-epoch test accuracy"),
    "best": ("best_test_acc", "best test accuracy over epochs (test-selected, the paper's protocol)"),
    "val": ("val_selected_acc", "test accuracy at the epoch with the best validation accuracy"),
}
METRIC_ALIASES: dict[str, str] = {
    "best_test": "best", "val_selected": "val",
    "final_acc": "final", "best_test_acc": "best", "val_selected_acc": "val",
}
#: ddof of the std over seeds (see module docstring for why 1, not numpy's 0).
STD_DDOF = 1
#: differences below this (accuracy points) count as zero in the p-value special cases.
ZERO_TOL = 1e-9
#: coverage of the confidence interval of the mean (Student t, n-1 degrees of freedom).
CI_LEVEL = 0.95

SUMMARY_COLUMNS = ["method", "dataset", "labels", "setting", "metric", "mean", "std", "n", "ci_low", "ci_high",
                   "delta", "p_value", "n_paired", "ddof", "delta_ci_low", "delta_ci_high"]
COMPARISON_COLUMNS = SUMMARY_COLUMNS
MISSING = "–"  # en dash, for cells without finished runs
_FORMATS = {"md": "md", "markdown": "md", "csv": "csv", "latex": "latex", "tex": "latex"}


def resolve_metric(metric: str) -> tuple[str, str, str]:
    """Return (key, column, description) for a metric key, alias or column name."""
    key = METRIC_ALIASES.get(str(metric).lower(), str(metric).lower())
    if key not in METRICS:
        known = sorted(set(METRICS) | set(METRIC_ALIASES))
        raise SSLZooError(f"unknown metric {metric!r}; expected one of {', '.join(known)}")
    col, desc = METRICS[key]
    return key, col, desc


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value with the degenerate cases of the module docstring."""
    if len(a) < 2:
        return math.nan
    d = np.asarray(a, float) - np.asarray(b, float)
    if float(np.ptp(d)) <= ZERO_TOL:  # zero-variance differences
        return 1.0 if float(np.max(np.abs(d))) <= ZERO_TOL else math.nan
    with warnings.catch_warnings():  # near-constant diffs trigger a precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b).pvalue)
    return p


def mean_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """(low, high) of the ``level`` confidence interval of the mean: mean ± t_{(1+level)/2, n-1} s / sqrt(n),
    s the sample std (ddof=1); (NaN, NaN) for fewer than two values."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


def _first_appearance(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.tolist()))


def _as_label(x: Any) -> Any:
    """Labels as int when integral (a NaN elsewhere in the column turns them into floats)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return x
    return int(f) if math.isfinite(f) and f.is_integer() else x


def _label_order(x: Any) -> float:
    """Label counts in numeric order, a word (``all``: the Fully Supervised setting) after every count."""
    lab = _as_label(x)
    return float(lab) if isinstance(lab, (int, float)) else math.inf


def setting_ids(df: pd.DataFrame) -> pd.Series:
    """Each row's setting: the ``setting`` column where set, else ``<dataset>-<labels>``.

    Why the fallback: results.csv files written before the column existed, and frames
    built by hand, have no setting; for them a data set and label count is the setting.
    """
    fallback = df["dataset"].astype(str) + "-" + df["labels"].map(lambda x: str(_as_label(x)))
    if "setting" not in df.columns:
        return fallback
    given = df["setting"].map(lambda x: "" if pd.isna(x) else str(x))
    return given.where(given != "", fallback)


def summarize(df: pd.DataFrame, metric: str = "final", baseline: str | None = "supervised",
              ddof: int = STD_DDOF) -> pd.DataFrame:
    """Aggregate runs over seeds: one row per (method, setting), long format.

    Columns: see :data:`SUMMARY_COLUMNS`. ``attrs`` carries metric, ddof, baseline,
    ``excluded`` (status -> count of non-finished rows), ``n_excluded``,
    ``n_duplicates`` and ``n_missing_metric`` so tables can report them.
    """
    key, col, _ = resolve_metric(metric)
    required = ["method", "dataset", "labels", "seed", "status", col]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SSLZooError(f"results table lacks column(s) {missing}; it has {list(df.columns)}")

    data = df[required].copy()
    data["labels"] = data["labels"].map(_as_label)
    data["setting"] = setting_ids(df)
    data["status"] = data["status"].astype(str)
    finished = data["status"] == "finished"
    excluded = {str(k): int(v) for k, v in data.loc[~finished, "status"].value_counts().items()}
    fin = data[finished]
    n_before = len(fin)
    fin = fin.drop_duplicates(["method", "setting", "seed"], keep="last")
    n_dup = n_before - len(fin)
    values = pd.to_numeric(fin[col], errors="coerce")
    ok = np.isfinite(values.to_numpy(dtype=float))
    n_missing_metric = int((~ok).sum())
    fin = fin.assign(_v=values)[ok]
    if excluded:
        log.info("summarize: excluded %d non-finished run(s): %s", sum(excluded.values()), excluded)
    if n_dup:
        log.warning("summarize: %d duplicate finished run(s) (same method/setting/seed); kept the last", n_dup)

    # Every setting that appears in the input gets a row, even with no finished runs.
    method_order = _first_appearance(data["method"])
    dataset_order = _first_appearance(data["dataset"])
    setting_order = _first_appearance(data["setting"])
    keys = data[["method", "setting", "dataset", "labels"]].drop_duplicates(["method", "setting"])
    keys = keys.assign(_m=keys["method"].map(method_order.index),
                       _d=keys["dataset"].map(dataset_order.index),
                       _s=keys["setting"].map(setting_order.index), _l=keys["labels"].map(_label_order))
    keys = keys.sort_values(["_m", "_d", "_l", "_s"], kind="stable")

    per_seed: dict[tuple, pd.Series] = {
        k: g.set_index("seed")["_v"] for k, g in fin.groupby(["method", "setting"], sort=False)
    }
    if baseline is not None and baseline not in set(data["method"]):
        log.warning("summarize: baseline %r not in the results; delta and p_value are NaN", baseline)

    rows = []
    for m, st, d, lab in keys[["method", "setting", "dataset", "labels"]].itertuples(index=False):
        v = per_seed.get((m, st), pd.Series(dtype=float))
        n = len(v)
        mean = float(v.mean()) if n else math.nan
        std = float(v.std(ddof=ddof)) if n >= 2 else math.nan
        delta, p, n_paired, delta_ci = math.nan, math.nan, 0, (math.nan, math.nan)
        base = per_seed.get((baseline, st)) if baseline is not None else None
        if n and base is not None and len(base):
            delta = mean - float(base.mean())
            if m != baseline:
                common = v.index.intersection(base.index)
                n_paired = len(common)
                ours, theirs = v.loc[common].to_numpy(float), base.loc[common].to_numpy(float)
                p = _paired_p(ours, theirs)
                delta_ci = mean_ci(ours - theirs)
        ci_low, ci_high = mean_ci(v.to_numpy(float))
        rows.append({"method": m, "dataset": d, "labels": lab, "setting": st, "metric": key,
                     "mean": mean, "std": std, "n": n, "ci_low": ci_low, "ci_high": ci_high,
                     "delta": delta, "p_value": p, "n_paired": n_paired, "ddof": ddof,
                     "delta_ci_low": delta_ci[0], "delta_ci_high": delta_ci[1]})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    out.attrs.update({"metric": key, "metric_column": col, "ddof": ddof, "baseline": baseline,
                      "excluded": excluded, "n_excluded": sum(excluded.values()),
                      "n_duplicates": n_dup, "n_missing_metric": n_missing_metric})
    return out


# ----------------------------------------------------------------------------- rendering

def _escape_latex(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    out = "".join(repl.get(ch, ch) for ch in str(text))
    out = out.replace("±", r"$\pm$").replace("−", "$-$").replace("–", "--")
    return out


def _escape_md(text: str) -> str:
    out = str(text)
    for ch in ("\\", "|", "*", "_", "`"):
        out = out.replace(ch, "\\" + ch)
    return out


def _fmt_num(x: float) -> str:
    return f"{x + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def _fmt_signed(x: float) -> str:
    r = round(x + 0.0, 2)
    return f"{'+' if r >= 0 else '-'}{abs(r):.2f}"


def _modal_n(ns: list[int]) -> int | None:
    ns = [n for n in ns if n > 0]
    if not ns:
        return None
    counts = pd.Series(ns).value_counts()
    return int(max(counts[counts == counts.max()].index))  # ties -> the larger n


def _excluded_text(attrs: dict) -> str:
    parts = []
    exc = attrs.get("excluded") or {}
    if exc:
        parts.append("excluded (not finished): " + ", ".join(f"{v} {k}" for k, v in sorted(exc.items())))
    if attrs.get("n_missing_metric"):
        parts.append(f"{attrs['n_missing_metric']} finished run(s) without this metric")
    if attrs.get("n_duplicates"):
        parts.append(f"{attrs['n_duplicates']} duplicate run(s) dropped")
    return ("Runs " + "; ".join(parts) + ".") if parts else "No runs excluded."


def _ci_sentence(kind: str) -> str:
    pm = "+/-" if kind == "csv" else "±"
    root = "√n" if kind == "md" else "sqrt(n)"   # CSV stays ASCII; LaTeX escapes ± but not √
    where = "Columns ci_low/ci_high" if kind == "csv" else "In brackets"
    return (f"{where}: the {CI_LEVEL:.0%} confidence interval of the mean, mean {pm} t * s / {root}, t the "
            f"{(1 + CI_LEVEL) / 2:g} quantile of Student's t distribution with n-1 degrees of freedom and s the "
            f"sample std (ddof=1); none for a single seed.")


def _caption(metric_key: str, ddof: int, n_mode: int | None, varying_n: bool, attrs: dict,
             gains_label: str | None, baseline: str | None, kind: str = "md", shared: bool = False,
             ci: bool = False) -> str:
    """One caption sentence set for every format; the CSV variant stays ASCII (Excel and UTF-8)."""
    pm = "+/-" if kind == "csv" else "±"
    _, _, desc = resolve_metric(metric_key)
    std_word = {1: "sample std", 0: "population std"}.get(ddof, "std")
    parts = [f"Test accuracy (%), {desc} [metric: {metric_key}]; mean {pm} std over seeds,"
             f" std with ddof={ddof} ({std_word}); a single seed has no std."]
    if ci:
        parts.append(_ci_sentence(kind))
    if n_mode is not None:
        marked = varying_n and kind != "csv"
        parts.append(f"n = {n_mode} seeds per cell" + (" unless marked (n=k)." if marked else "."))
    parts.append("Columns: data set (number of labeled samples)"
                 + ("; settings that share both are named by their setting." if shared else "."))
    if kind != "csv":
        parts.append("Best mean per column in bold.")
    if gains_label:
        parts.append(f"'{gains_label}': best mean minus the {baseline} mean in that column.")
    parts.append(_excluded_text(attrs))
    return " ".join(parts)


class Column(NamedTuple):
    """A table column: one setting. ``shared``: another column has the same data set and labels."""

    setting: str
    dataset: str
    labels: Any
    shared: bool

    @property
    def head(self) -> str:
        """``<dataset> (<labels>)``, or the setting's id where that would not tell columns apart."""
        return self.setting if self.shared else f"{self.dataset} ({self.labels})"

    @property
    def csv_prefix(self) -> str:
        return self.setting if self.shared else f"{self.dataset}/{self.labels}"


def table_columns(summary: pd.DataFrame) -> list[Column]:
    """The settings of ``summary`` as columns: by data set (first appearance), label count, setting."""
    datasets = _first_appearance(summary["dataset"])
    order = _first_appearance(summary["setting"])
    first = summary.drop_duplicates("setting")
    triples = sorted(((st, d, _as_label(lab))
                      for st, d, lab in zip(first["setting"], first["dataset"], first["labels"])),
                     key=lambda t: (datasets.index(t[1]), _label_order(t[2]), order.index(t[0])))
    count = Counter((d, lab) for _, d, lab in triples)
    return [Column(st, d, lab, count[(d, lab)] > 1) for st, d, lab in triples]


def render_table(summary: pd.DataFrame, fmt: str = "md", methods_order: Sequence[str] | None = None,
                 baseline: str | None = "supervised", gains: bool = False,
                 metric: str | None = None, ci: bool = False) -> str:
    """Render the paper's Table-2 layout: rows = methods, columns = data set x label count.

    * ``metric=None`` uses the summary's metric (it must hold just one); a name filters.
    * ``methods_order`` selects *and* orders rows; a listed method without results
      gets a row of "–" (logged), unlisted methods are left out. Default: order of
      first appearance.
    * Columns are settings (see the module docstring for their names); a summary without a
      ``setting`` column gets ``<dataset>-<labels>``.
    * Cells are ``mean±std`` (2 decimals); ``(n=k)`` is appended where k differs from
      the most common seed count in the table; the best mean per column (ties at 2
      decimals included, only when >= 2 methods have a value) is bold.
    * ``gains=True`` adds one last row, ``Gain over <baseline>``: the best non-baseline
      mean minus the baseline mean, per column, as papers print the improvement of
      their method over the supervised baseline. Per-method deltas and p-values are in
      :func:`comparison_csv`.
    * ``fmt="csv"`` is wide and numeric for spreadsheets: first line is the caption as a
      ``# ...`` comment (read with ``pd.read_csv(path, skiprows=1)``), then ``method``
      and three columns per setting, ``<dataset>/<labels>/mean|std|n`` (``<setting>/mean|std|n``
      for a column named by its setting); no bold.
    * ``ci=True`` adds the 95 % confidence interval of the mean (``ci_low``/``ci_high`` of
      :func:`summarize`): ``mean±std [low, high]`` in Markdown and LaTeX, two more CSV
      columns per setting (``.../ci_low``, ``.../ci_high``); the caption says how it is made.
    """
    kind = _FORMATS.get(str(fmt).lower())
    if kind is None:
        raise SSLZooError(f"unknown table format {fmt!r}; expected md, csv or latex")
    attrs = dict(summary.attrs)
    needed = ("method", "dataset", "labels", "mean", "std", "n") + (("ci_low", "ci_high") if ci else ())
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise SSLZooError(f"summary lacks column(s) {missing}; build it with summarize()")
    s = summary if "setting" in summary.columns else summary.assign(setting=setting_ids(summary))
    if "metric" in s.columns:
        present = _first_appearance(s["metric"])
        if metric is None:
            if len(present) > 1:
                raise SSLZooError(f"summary holds several metrics {present}; pass metric=")
            metric_key = present[0] if present else attrs.get("metric", "final")
        else:
            metric_key = resolve_metric(metric)[0]
            s = s[s["metric"] == metric_key]
    else:
        metric_key = resolve_metric(metric or attrs.get("metric", "final"))[0]
    ddof = int(s["ddof"].iloc[0]) if "ddof" in s.columns and len(s) else int(attrs.get("ddof", STD_DDOF))

    if methods_order is None:
        methods = _first_appearance(s["method"])
    else:
        methods = list(dict.fromkeys(methods_order))
        absent = [m for m in methods if m not in set(s["method"])]
        if absent:
            log.warning("render_table: no results for method(s) %s; their rows show '%s'", absent, MISSING)
    # columns: settings in which at least one shown method has a summary row (even n=0)
    settings = table_columns(s[s["method"].isin(methods)])

    cells: dict[tuple[str, str], tuple[float, float, int, float, float]] = {}
    for r in s.itertuples(index=False):
        interval = (float(r.ci_low), float(r.ci_high)) if ci else (math.nan, math.nan)
        cells[(r.method, r.setting)] = (float(r.mean), float(r.std), int(r.n), *interval)
    shown = {k: v for k, v in cells.items() if k[0] in methods and v[2] > 0 and math.isfinite(v[0])}
    n_mode = _modal_n([v[2] for v in shown.values()])
    varying_n = len({v[2] for v in shown.values()}) > 1

    best: dict[str, float] = {}
    for col in settings:
        vals = [round(shown[(m, col.setting)][0], 2) for m in methods if (m, col.setting) in shown]
        if len(vals) >= 2:
            best[col.setting] = max(vals)

    gains_row: list[float] | None = None
    gains_label = None
    if gains:
        if baseline is None or baseline not in set(s["method"]):
            log.warning("render_table: gains=True but baseline %r has no results; no gains row", baseline)
        else:
            gains_label = f"Gain over {baseline}"
            gains_row = []
            for col in settings:
                b = cells.get((baseline, col.setting))
                others = [v[0] for k, v in cells.items() if k[1] == col.setting and k[0] != baseline
                          and k[0] in methods and v[2] > 0 and math.isfinite(v[0])]
                ok = b is not None and b[2] > 0 and math.isfinite(b[0]) and others
                gains_row.append(max(others) - b[0] if ok else math.nan)

    caption = _caption(metric_key, ddof, n_mode, varying_n, attrs, gains_label, baseline, kind,
                       shared=any(col.shared for col in settings), ci=ci)

    def cell_text(m: str, col: Column, pm: str) -> tuple[str, bool]:
        v = shown.get((m, col.setting))
        if v is None:
            return MISSING, False
        mean, std, n, low, high = v
        txt = _fmt_num(mean) if not math.isfinite(std) else f"{_fmt_num(mean)}{pm}{_fmt_num(std)}"
        if math.isfinite(low):
            txt += f" [{_fmt_num(low)}, {_fmt_num(high)}]"
        if varying_n and n != n_mode:
            txt += f" (n={n})"
        return txt, col.setting in best and round(mean, 2) == best[col.setting]

    if kind == "csv":
        return _render_csv(caption, methods, settings, shown, gains_label, gains_row, ci)
    if kind == "md":
        return _render_md(caption, methods, settings, cell_text, gains_label, gains_row)
    return _render_latex(caption, metric_key, methods, settings, cell_text, gains_label, gains_row)


def _render_md(caption, methods, settings, cell_text, gains_label, gains_row) -> str:
    header = ["Method"] + [_escape_md(col.head) for col in settings]
    lines = [f"*{caption}*", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(settings)) + "|"]
    for m in methods:
        row = [_escape_md(m)]
        for col in settings:
            txt, bold = cell_text(m, col, "±")
            row.append(f"**{txt}**" if bold else txt)
        lines.append("| " + " | ".join(row) + " |")
    if gains_row is not None:
        row = [_escape_md(gains_label)] + [_fmt_signed(g) if math.isfinite(g) else MISSING for g in gains_row]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _render_latex(caption, metric_key, methods, settings, cell_text, gains_label, gains_row) -> str:
    ncol = len(settings)

    def row_start(text: str) -> str:
        esc = _escape_latex(text)
        return "{}" + esc if esc.startswith("[") else esc  # a leading [ would be read as \\[...]

    groups = list(Counter(col.dataset for col in settings).items())   # columns are grouped by data set
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{_escape_latex(caption)}}}", f"\\label{{tab:sslzoo-{metric_key}}}",
             "\\begin{tabular}{l" + "c" * ncol + "}", "\\toprule"]
    lines.append(" & " + " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{_escape_latex(d)}}}" for d, k in groups) + " \\\\")
    col, rules = 2, []
    for _, k in groups:
        rules.append(f"\\cmidrule(lr){{{col}-{col + k - 1}}}")
        col += k
    lines.append(" ".join(rules))
    lines.append("Method & " + " & ".join(_escape_latex(col.setting) if col.shared else str(col.labels)
                                          for col in settings) + " \\\\")
    lines.append("\\midrule")
    for m in methods:
        row = [row_start(m)]
        for col in settings:
            txt, bold = cell_text(m, col, "±")
            txt = _escape_latex(txt)
            row.append(f"\\textbf{{{txt}}}" if bold else txt)
        lines.append(" & ".join(row) + " \\\\")
    if gains_row is not None:
        lines.append("\\midrule")
        row = [row_start(gains_label)] + [_escape_latex(_fmt_signed(g)) if math.isfinite(g) else "--"
                                          for g in gains_row]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _num(x: float, nd: int = 4) -> str:
    return "" if x is None or not math.isfinite(x) else repr(round(float(x) + 0.0, nd))


def _render_csv(caption, methods, settings, shown, gains_label, gains_row, ci: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["# " + caption])
    fields = ["mean", "std", "n"] + (["ci_low", "ci_high"] if ci else [])
    header = ["method"]
    for col in settings:
        header += [f"{col.csv_prefix}/{f}" for f in fields]
    w.writerow(header)
    for m in methods:
        row = [m]
        for col in settings:
            v = shown.get((m, col.setting))
            if v is None:
                row += [""] * len(fields)
            else:
                row += [_num(v[0]), _num(v[1]), str(v[2])] + ([_num(v[3]), _num(v[4])] if ci else [])
        w.writerow(row)
    if gains_row is not None:
        row = [gains_label]
        for g in gains_row:
            row += [_num(g)] + [""] * (len(fields) - 1)
        w.writerow(row)
    return buf.getvalue()


def comparison_csv(summary: pd.DataFrame) -> str:
    """Long-format CSV of the summary (one row per method x setting), full precision."""
    cols = [c for c in COMPARISON_COLUMNS if c in summary.columns]
    return summary[cols].to_csv(index=False, lineterminator="\n")


def _atomic_write(path: Path, text: str) -> Path:
    """UTF-8 text via sslzoo.io.atomic_write: readers never see half a file."""
    atomic_write(path, lambda f: f.write(text), encoding="utf-8", newline="")
    return path


def write_tables(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = "final",
                 methods_order: Sequence[str] | None = None, baseline: str | None = "supervised",
                 gains: bool = False, ddof: int = STD_DDOF, ci: bool = False) -> dict[str, Path]:
    """Summarize ``df`` and write table.md/.csv/.tex and comparison.csv (UTF-8, atomically).

    ``ci=True`` prints the 95 % confidence interval of the mean in the three tables
    (comparison.csv always has it). Returns ``{"md": ..., "csv": ..., "tex": ..., "comparison": ...}``.
    """
    out = Path(out_dir)
    summary = summarize(df, metric=metric, baseline=baseline, ddof=ddof)
    kw = dict(methods_order=methods_order, baseline=baseline, gains=gains, ci=ci)
    texts = {
        "md": ("table.md", render_table(summary, "md", **kw)),
        "csv": ("table.csv", render_table(summary, "csv", **kw)),
        "tex": ("table.tex", render_table(summary, "latex", **kw)),
        "comparison": ("comparison.csv", comparison_csv(summary)),
    }
    paths = {k: _atomic_write(out / name, text) for k, (name, text) in texts.items()}
    if summary.attrs.get("n_excluded"):
        log.info("write_tables: %s", _excluded_text(summary.attrs))
    return paths


__all__ = ["METRICS", "METRIC_ALIASES", "STD_DDOF", "CI_LEVEL", "SUMMARY_COLUMNS", "Column", "mean_ci",
           "resolve_metric", "setting_ids",
           "summarize", "table_columns", "render_table", "comparison_csv", "write_tables"]
