"""CLI: ``sslzoo bench`` (a grid or a suite of runs), ``sslzoo table``, ``sslzoo plot``.

Why these live here and not in cli.py: they are the harness's front end and keep
cli.py small; cli.py imports :func:`register` and the shared training flags come
from ``flags.add_train_flags`` / ``flags.config_layers``, so every ``sslzoo train``
flag works in a bench and means the same thing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import SSLZooError

BENCH_HELP = """\
Run a benchmark: every method x data set x label count x seed, one `sslzoo train` run each.

  sslzoo bench --algos supervised,fixmatch,adacm --dataset synthfer --labels 70,140 --seeds 3 --out bench/demo
  sslzoo bench --suite benchmarks/paper/table2.yaml --out bench/table2 --set backbone.weights=PATH
  sslzoo bench                      # the built-in default suite (benchmarks/default.yaml) on synthfer

Training flags (--epochs, --backbone, --set KEY=VALUE, ...) apply to every run and
override the suite. Re-running the same command skips finished runs and resumes
interrupted ones. Writes <out>/results.csv (one row per run), table.md/.csv/.tex,
comparison.csv and plots/. Exit code: 0 if every run finished, 1 if some failed or
diverged (they are recorded in results.csv), 2 for a usage error (nothing ran)."""


def register(subparsers: Any) -> None:
    from ..flags import add_train_flags

    sp = subparsers.add_parser("bench", help="run a grid of training runs and make the comparison table",
                               description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = sp.add_argument_group("grid")
    g.add_argument("--suite", default=None, metavar="FILE.yaml|NAME",
                   help="a suite file (a whole table: methods x settings), e.g. benchmarks/paper/table2.yaml, "
                        "or a built-in name (default, paper/table2, ...). Without --suite and --algos: 'default'")
    g.add_argument("--algos", default=None, metavar="A,B,...",
                   help="algorithms (comma list); with --suite: keep only these methods (name or algorithm)")
    g.add_argument("--dataset", dest="bench_datasets", default=None, metavar="D,...",
                   help="data sets (comma list); with --suite: keep only these settings")
    g.add_argument("--labels", dest="bench_labels", default=None, metavar="N,...",
                   help="labeled-image counts (comma list); with --suite: keep only these settings")
    g.add_argument("--seeds", default=None, metavar="K|S1,S2,...",
                   help="a count (5 = seeds 0-4) or a comma list of seeds (0,3,7); default 3 "
                        "(a suite: its defaults.seeds)")
    tr = sp.add_argument_group("training flags (applied to every run; override the suite)")
    add_train_flags(tr, with_single=False)
    r = sp.add_argument_group("running")
    r.add_argument("--out", default=None, help="bench folder (default bench/<suite name>, or bench/grid)")
    r.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (subprocesses; CPU threads "
                                                       "are split, GPUs assigned round-robin)")
    r.add_argument("--shard", default=None, metavar="i/n",
                   help="run only shard i of n (0 <= i < n) of the grid, e.g. one task of a SLURM array; "
                        "all shards may write into the same --out")
    r.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed or diverged")
    r.add_argument("--dry-run", action="store_true", help="check every run's config, list the runs, train nothing")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished run)")
    r.add_argument("--no-plots", action="store_true", help="skip the figures at the end")
    t = sp.add_argument_group("table")
    t.add_argument("--metric", default=None, help="final | best | val (default final, or the suite's metric)")
    t.add_argument("--baseline", default=None, help="method the comparison is made against "
                                                    "(default: supervised / the suite's first supervised method)")
    sp.set_defaults(func=cmd_bench)

    sp = subparsers.add_parser("table", help="make the mean±std table of a bench folder",
                               description="Regenerate results.csv from the run rows of a bench folder and write "
                                           "table.md/.csv/.tex and comparison.csv; print one of them.")
    sp.add_argument("path", help="bench folder (or a results.csv)")
    sp.add_argument("--metric", default=None, help="final | best | val (default: the bench's metric, else final)")
    sp.add_argument("--format", default="md", choices=["md", "csv", "latex", "tex"], help="what to print")
    sp.add_argument("--baseline", default=None, help="method to compare with (default: the bench's baseline)")
    sp.add_argument("--gains", action="store_true", help="add a 'Gain over <baseline>' row")
    sp.add_argument("--ci", action="store_true", help="add the 95%% confidence interval of the mean to each cell "
                                                      "(Student t with n-1 degrees of freedom)")
    sp.add_argument("--out", default=None, help="folder for the table files (default: the bench folder)")
    sp.set_defaults(func=cmd_table)

    sp = subparsers.add_parser("plot", help="write a bench's figures, or a run's t-SNE (--tsne RUN_DIR)",
                               description="Accuracy curves, per-class thresholds, mask ratio and per-class "
                                           "accuracy of a bench folder (PNG), or the t-SNE of a run's test-set "
                                           "features (the paper's Figure 4).")
    sp.add_argument("path", nargs="?", default=None, help="bench folder")
    sp.add_argument("--out", default=None, help="output folder (default <bench>/plots) or PNG file for --tsne "
                                                "(default <run>/tsne.png)")
    sp.add_argument("--tsne", default=None, metavar="RUN_DIR", help="t-SNE of this run's test-set features "
                                                                    "(EMA weights of its checkpoint)")
    sp.add_argument("--max-points", type=int, default=2000, help="t-SNE: subsample the test set to this many")
    sp.add_argument("--device", default="auto", help="t-SNE feature extraction device")
    sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="for --tsne: a plugin that registers the run's backbone/data set")
    sp.set_defaults(func=cmd_plot)

    sp = subparsers.add_parser("calibration", help="how accurate a run's confident predictions are (per confidence bin)",
                               description="Bin a finished run's EMA-model confidence on its unlabeled pool (or test "
                                           "set) and report each bin's share and accuracy, what a fixed threshold at "
                                           "each edge admits, and the ECE: the evidence behind a threshold.",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run folders (config.yaml + checkpoint.pt)")
    sp.add_argument("--split", default="unlabeled", choices=["unlabeled", "test"],
                    help="images to measure on (unlabeled: the run's own pool, where ground truth is known)")
    sp.add_argument("--edges", default="0.5,0.8,0.95", metavar="E1,E2,...",
                    help="bin edges in (0, 1), increasing (default 0.5,0.8,0.95)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="a plugin that registers the run's backbone/data set")
    sp.set_defaults(func=cmd_calibration)

    sp = subparsers.add_parser("eval", help="a finished run's model on its test set, another split or another data set",
                               description="Evaluate a finished run's EMA model (the one its metrics.json reports) "
                                           "on its test set, on another of its splits, or on another data set's test "
                                           "split (cross-data-set, e.g. RAF-DB -> CK+): accuracy, mean class accuracy, "
                                           "per-class accuracy and the confusion matrix.")
    sp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run folders (config.yaml + checkpoint.pt)")
    sp.add_argument("--split", default="test", choices=["test", "val", "labeled", "unlabeled"],
                    help="which of the run's image sets (default: test)")
    sp.add_argument("--test-dataset", default=None, metavar="NAME",
                    help="evaluate on this data set's test split instead (same label space)")
    sp.add_argument("--test-data-root", default=None, metavar="PATH", help="where --test-dataset lives")
    sp.add_argument("--which", default="final", choices=["final", "val", "best"],
                    help="which saved model: final (checkpoint.pt, metrics.json's final_acc), val (best_val.pt, "
                         "val_selected_acc; runs with a validation split) or best (best_test.pt, best_test_acc; "
                         "runs trained with save_best_test=true)")
    sp.add_argument("--json", action="store_true", help="print the results as JSON (a list, one per run)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="a plugin that registers the run's backbone/data set")
    sp.set_defaults(func=cmd_eval)


# ----------------------------------------------------------------------------- bench

def build_cells(args: argparse.Namespace):
    """The suite, bench folder and resolved cells the arguments describe (shared by the tests)."""
    from ..flags import config_layers
    from .grid import (expand, filter_suite, grid_suite, load_suite, parse_labels, parse_list, parse_seeds,
                       resolve_cells)
    cli_layers = config_layers(args)   # also imports --plugin files, before any name is checked
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    algos, datasets, labels = parse_list(args.algos), parse_list(args.bench_datasets), parse_labels(args.bench_labels)
    if args.suite is not None or not algos:
        full = load_suite(args.suite or "default")
        suite = filter_suite(full, methods=algos, datasets=datasets, labels=labels, seeds=seeds)
        where = f"suite '{suite.name}'"
    else:
        suite = full = grid_suite(algos, datasets, labels, seeds if seeds is not None else parse_seeds(3))
        where = ""
    out = Path(args.out or f"bench/{suite.name}")
    cells = resolve_cells(expand(suite), cli_layers, out, where=where)
    return suite, full, out, cells


def _manifest(out: Path, suite, full, cells, baseline: str | None, metric: str) -> dict[str, Any]:
    """bench.json: row and column order for the tables; several (filtered) commands into one folder add up."""
    from .grid import setting_id
    from .results import read_manifest
    old = read_manifest(out)
    naive = [setting_id(s, {"dataset": s.dataset, "labels": s.labels, "test_dataset": s.overrides.get("test_dataset")})
             for s in full.settings if s.dataset is not None and s.labels is not None]
    real = [c.setting_id for c in sorted(cells, key=lambda c: c.order[1])]

    def union(*lists: list) -> list:
        return list(dict.fromkeys(x for lst in lists for x in lst))
    return {"name": suite.name, "description": suite.description, "suite": suite.path,
            "methods": union([m.name for m in full.methods], old.get("methods") or []),
            "settings": union(naive, real, old.get("settings") or []),
            "seeds": union(old.get("seeds") or [], suite.seeds),
            "baseline": baseline, "metric": metric}


def cmd_bench(args: argparse.Namespace) -> int:
    from ..io import check_locking
    from .grid import parse_shard, shard
    from .results import write_manifest, write_results_csv
    from .runner import BenchRunner, inspect_run
    from .tables import resolve_metric

    if args.jobs < 1:
        raise SSLZooError(f"--jobs must be at least 1; got {args.jobs}.")
    i, n = parse_shard(args.shard)
    suite, full, out, cells = build_cells(args)
    metric = resolve_metric(args.metric or suite.metric)[0]
    baseline = args.baseline or suite.default_baseline()
    if baseline is not None and baseline not in [m.name for m in suite.methods]:
        raise SSLZooError(f"--baseline '{baseline}' is not one of the methods ({', '.join(m.name for m in suite.methods)}).")
    mine = shard(cells, i, n)
    n_settings = len({c.setting_id for c in cells})
    print(f"bench '{suite.name}': {len(suite.methods)} method(s) x {n_settings} setting(s) x "
          f"{len(suite.seeds)} seed(s)"
          + (f" = {len(cells)} runs" if len(cells) == len(suite.methods) * n_settings * len(suite.seeds) else
             f": {len(cells)} runs (some methods run only in some settings)")
          + (f"; shard {i}/{n}: {len(mine)} runs" if n > 1 else "") + f" -> {out}", flush=True)
    if args.dry_run:
        from ..config import config_hash
        for cell in mine:
            state, _ = inspect_run(cell.run_dir(out), config_hash(cell.cfg), args.retry_failed)
            what = {"done": "done", "resume": "resume", "fresh": "to run"}[state]
            print(f"  {what:<7} {cell.rel_dir}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    check_locking(out)   # a file system without locks: one clear error now, not one per run
    manifest = _manifest(out, suite, full, cells, baseline, metric)
    write_manifest(out, manifest)
    runner = BenchRunner(mine, out, jobs=args.jobs, plugins=args.plugin, progress=not args.no_progress,
                         retry_failed=args.retry_failed, on_result=lambda: write_results_csv(out),
                         before_launch=_prebuild_pretrained)
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        write_results_csv(out)
        raise
    print(summary.line(), flush=True)
    finalize(out, manifest, metric=metric, baseline=baseline, plots=not args.no_plots)
    bad = {k: v for k, v in summary.counts.items() if k != "finished"}
    if bad:
        print(f"not finished: {', '.join(f'{v} {k}' for k, v in sorted(bad.items()))} (see the error column of "
              f"{out / 'results.csv'}; rerun with --retry-failed to try failed runs again)", file=sys.stderr)
        return 1
    return 0


def _prebuild_pretrained(cells: list) -> None:
    """Pretrained backbones the runs start from, built here once rather than by the first run
    while its parallel siblings wait on the lock."""
    from ..pretrain.store import prebuild
    prebuild([cell.cfg for cell in cells])


def table_methods(df: Any, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the methods with result rows, in the suite's order; the suite's methods without any).

    Why: a suite filtered with --algos (or a folder filled one method at a time) lists every
    method in bench.json; a row of "–" per method that was never run buries the ones that
    did, so the tables show the methods that ran and the rest is said once ("not run").
    """
    from .results import method_order
    present = set(df["method"].astype(str))
    order = method_order(df, manifest)
    return [m for m in order if m in present], [m for m in order if m not in present]


def _not_run_note(not_run: list[str], out: Path) -> str:
    return f"not run: {', '.join(not_run)} (methods of the suite without results in {out})"


def finalize(out: Path, manifest: dict[str, Any], *, metric: str = "final", baseline: str | None = None,
             plots: bool = True, gains: bool = False, echo: bool = True) -> dict[str, Path]:
    """results.csv, the table files and (optionally) the figures of a bench folder; print the table."""
    from .results import table_frame, write_results_csv
    from .tables import write_tables
    df = write_results_csv(out)
    if df.empty:
        print(f"no results in {out} yet", file=sys.stderr)
        return {}
    methods = set(df["method"].astype(str))
    ran, not_run = table_methods(df, manifest)
    paths = write_tables(table_frame(df), out, metric=metric, methods_order=ran,
                         baseline=baseline if baseline in methods else None, gains=gains)
    if echo:
        print()
        print(paths["md"].read_text(encoding="utf-8"))
        if not_run:
            print(_not_run_note(not_run, out))
    if plots:
        from .plots import plot_bench
        messages: list[str] = []
        written = plot_bench([out / d for d in df["run_dir"]], out / "plots", messages=messages)
        for message in messages:
            if message.startswith("could not draw"):
                print(f"warning: {message}", file=sys.stderr)
        if written:
            paths["plots"] = out / "plots"
    if echo:
        print(f"results: {out / 'results.csv'}; tables: {out / 'table.md'} (.csv, .tex), "
              f"{out / 'comparison.csv'}" + (f"; figures: {out / 'plots'}" if "plots" in paths else ""))
    return paths


# ----------------------------------------------------------------------------- table / plot

def cmd_table(args: argparse.Namespace) -> int:
    from .results import load_results, read_manifest, table_frame
    from .tables import resolve_metric, write_tables
    df, bench_dir = load_results(args.path)
    if df.empty:
        raise SSLZooError(f"'{args.path}' holds no result rows yet.")
    manifest = read_manifest(bench_dir)
    metric = resolve_metric(args.metric or manifest.get("metric") or "final")[0]
    methods = set(df["method"].astype(str))
    baseline = args.baseline or manifest.get("baseline") or ("supervised" if "supervised" in methods else None)
    if args.baseline and args.baseline not in methods:
        raise SSLZooError(f"--baseline '{args.baseline}' has no results; methods: {', '.join(sorted(methods))}.")
    out = Path(args.out) if args.out else bench_dir
    ran, not_run = table_methods(df, manifest)
    paths = write_tables(table_frame(df), out, metric=metric, methods_order=ran,
                         baseline=baseline if baseline in methods else None, gains=args.gains, ci=args.ci)
    key = {"md": "md", "csv": "csv", "latex": "tex", "tex": "tex"}[args.format]
    print(paths[key].read_text(encoding="utf-8"), end="")
    if not_run:
        print(_not_run_note(not_run, bench_dir), file=sys.stderr)
    print(f"(written: {', '.join(str(p) for p in paths.values())})", file=sys.stderr)
    return 0


def cmd_calibration(args: argparse.Namespace) -> int:
    from ..registry import load_plugin
    from .calibration import calibration_report
    for plugin in args.plugin:
        load_plugin(plugin)
    try:
        edges = [float(e) for e in args.edges.split(",") if e.strip()]
    except ValueError:
        raise SSLZooError(f"--edges must be numbers separated by commas, e.g. 0.5,0.8,0.95; got '{args.edges}'.") from None
    print("\n\n".join(calibration_report(run, args.split, edges, args.device) for run in args.runs))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..registry import load_plugin
    from .run_eval import evaluate_run, format_report
    for plugin in args.plugin:
        load_plugin(plugin)
    results = [evaluate_run(run, split=args.split, test_dataset=args.test_dataset,
                            test_data_root=args.test_data_root, device=args.device, which=args.which)
               for run in args.runs]
    print(json.dumps(results, indent=1) if args.json else "\n\n".join(format_report(r) for r in results))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.tsne:
        from ..registry import load_plugin
        for plugin in args.plugin:
            load_plugin(plugin)
        path = plot_run_tsne(args.tsne, args.out, max_points=args.max_points, device=args.device)
        print(f"t-SNE: {path}")
        return 0
    if not args.path:
        raise SSLZooError("sslzoo plot needs a bench folder (sslzoo plot bench/demo) or --tsne RUN_DIR.")
    from .plots import plot_bench
    from .results import load_results
    df, bench_dir = load_results(args.path)
    if "run_dir" not in df.columns or df.empty:
        raise SSLZooError(f"'{args.path}' has no runs to plot.")
    out = Path(args.out) if args.out else bench_dir / "plots"
    messages: list[str] = []
    written = plot_bench([bench_dir / d for d in df["run_dir"]], out, messages=messages)
    for m in messages:
        print(f"  {m}", file=sys.stderr)
    for p in written:
        print(p)
    if not written:
        raise SSLZooError(f"no figures written for '{args.path}' (no finished runs with a history).")
    return 0


def tsne_features(run_dir: str | Path, *, max_points: int = 2000, device: str = "auto", seed: int = 0):
    """Test-set features of a run's EMA model: (features [N, D], labels [N], class names, cfg)."""
    import numpy as np

    from ..runs import load_run

    run = load_run(run_dir, device)
    test = run.data.test
    if max_points and len(test) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(test), max_points, replace=False))
        test = test.subset(idx)
    _, labels, feats = run.predict_set(test, with_features=True)
    return feats.cpu().numpy(), labels.cpu().numpy(), list(run.data.classes), run.cfg, run.data.test_name


def plot_run_tsne(run_dir: str | Path, out: str | Path | None = None, *, max_points: int = 2000,
                  device: str = "auto") -> Path:
    from .plots import plot_tsne
    feats, labels, classes, cfg, test_name = tsne_features(run_dir, max_points=max_points, device=device)
    title = f"{cfg['algo']} ({cfg['dataset']}, {cfg['labels']} labels, seed {cfg['seed']}): {test_name} test features"
    return plot_tsne(feats, labels, classes, Path(out) if out else Path(run_dir) / "tsne.png", title=title)
