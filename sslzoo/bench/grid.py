"""The grid of a benchmark: methods x settings (data set x labels) x seeds, from flags or a suite file.

Why a module of pure functions: what a bench runs (its cells, their run folders,
their resolved configs, which shard runs which cell) must be decidable without
training anything, so a typo fails before the first run, a cluster job array can
split the same grid on every machine identically, and all of it is unit-testable.

A *cell* is one training run. Its config is the merge, in this order, of
``suite.defaults`` <- the setting's keys <- the method's keys <- ``{seed}`` <- the
command line (``--config`` files, training flags, ``--set``) <- ``{out, progress}``.
The command line comes last so that ``--epochs 1`` turns a whole paper suite into
a smoke run. Its run folder is ``<out>/runs/<setting>/<method>/seed<k>``; the
setting id is ``<dataset>-<labels>`` (``-on-<test_dataset>`` for cross-data-set
evaluation) unless the setting has a ``name``.

A suite crosses every method with every setting, except where a setting's ``methods:``
or a method's ``settings:`` narrows that (the paper's "Fully Supervised" row runs only in
the ``labels: all`` settings, and no SSL method runs there).
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..data.splits import LABELS_ALL
from ..errors import SSLZooError

SUITE_KEYS = ("name", "description", "defaults", "settings", "methods", "baseline", "metric")
DEFAULT_SEEDS = 3


# ----------------------------------------------------------------------------- small parsers

def parse_list(text: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped); None -> []."""
    if text is None:
        return []
    return [item.strip() for item in str(text).split(",") if item.strip()]


def parse_labels(text: str | None) -> list[int | str]:
    """``"70,140,all"`` -> ``[70, 140, "all"]`` (all: every known label)."""
    out: list[int | str] = []
    for item in parse_list(text):
        if item == LABELS_ALL:
            out.append(item)
            continue
        try:
            value = int(item)
        except ValueError:
            raise SSLZooError(f"--labels expects label counts separated by commas (e.g. --labels 70,140, or "
                              f"--labels 100,{LABELS_ALL} where {LABELS_ALL} labels every training image); "
                              f"'{item}' is neither a whole number nor '{LABELS_ALL}'.") from None
        if value <= 0:
            raise SSLZooError(f"--labels: label counts must be positive; got {value}.")
        out.append(value)
    return _unique(out, "--labels")


def parse_seeds(value: Any) -> list[int]:
    """``5`` or ``"5"`` -> seeds 0..4; ``"0,3,7"`` or ``[0, 3, 7]`` -> those seeds; ``"3,"`` -> [3]."""
    if isinstance(value, bool):
        raise SSLZooError(f"seeds must be a count (e.g. 5) or a list of seeds (e.g. 0,3,7); got {value!r}.")
    if isinstance(value, int):
        count = value
        if count <= 0:
            raise SSLZooError(f"seeds: a count of seeds must be at least 1; got {count}. "
                              f"(To run only seed 0 use --seeds 1; to list seeds use --seeds 0,3,7.)")
        return list(range(count))
    if isinstance(value, (list, tuple)):
        items: list[Any] = list(value)
    else:
        text = str(value).strip()
        if "," not in text:
            try:
                return parse_seeds(int(text))
            except ValueError:
                raise SSLZooError(f"--seeds expects a count (e.g. --seeds 5 for seeds 0-4) or a comma list "
                                  f"(e.g. --seeds 0,3,7); got '{value}'.") from None
        items = parse_list(text)
    seeds = []
    for item in items:
        try:
            seed = int(item)
            if isinstance(item, bool) or (isinstance(item, float) and not float(item).is_integer()):
                raise ValueError
        except (TypeError, ValueError):
            raise SSLZooError(f"seeds: '{item}' is not a whole number (seeds: {value!r}).") from None
        if seed < 0:
            raise SSLZooError(f"seeds must be non-negative; got {seed}.")
        seeds.append(seed)
    if not seeds:
        raise SSLZooError(f"seeds: no seeds given ({value!r}).")
    return _unique(seeds, "seeds")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise SSLZooError(f"--shard expects i/n, e.g. --shard 0/4 for the first of 4 shards; got '{text}'.")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise SSLZooError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0, e.g. with SLURM "
                          f"--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT and --array=0-{max(n, 2) - 1}).")
    return i, n


def _unique(items: list, what: str) -> list:
    seen = set()
    dup = [x for x in items if x in seen or seen.add(x)]
    if dup:
        raise SSLZooError(f"{what}: {dup[0]!r} is given twice.")
    return items


def slug(name: str) -> str:
    """A folder-safe version of a method name: ``"FT = 0.5"`` -> ``"FT_0.5"``."""
    out = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(name)).strip("_.")
    return out or "method"


# ----------------------------------------------------------------------------- the grid model

@dataclass
class Setting:
    """A table column: a data set and a label count, plus optional config keys (e.g. unlabeled_extra)."""

    dataset: str | None
    labels: int | str | None        # a count, or "all"
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    methods: list[str] | None = None   # only these methods (names) run here; None: every method

    def layer(self) -> dict[str, Any]:
        layer = copy.deepcopy(self.overrides)
        if self.dataset is not None:
            layer["dataset"] = self.dataset
        if self.labels is not None:
            layer["labels"] = self.labels
        return layer


@dataclass
class Method:
    """A table row: a display name and the config keys that make it (at least ``algo``)."""

    name: str
    overrides: dict[str, Any]
    settings: list[str] | None = None   # only in these settings (ids, slugged); None: in every setting

    @property
    def algo(self) -> str:
        return str(self.overrides.get("algo"))


@dataclass
class Suite:
    name: str
    methods: list[Method]
    settings: list[Setting]
    seeds: list[int]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    baseline: str | None = None
    metric: str = "final"
    path: str | None = None

    def default_baseline(self) -> str | None:
        """The suite's ``baseline``, else the first method trained with the supervised algorithm."""
        if self.baseline:
            return self.baseline
        return next((m.name for m in self.methods if m.algo.lower() == "supervised"), None)


@dataclass
class Cell:
    """One run of the grid. ``cfg`` is filled by :func:`resolve_cells`."""

    method: str
    setting: Setting
    seed: int
    layers: list[dict[str, Any]]
    order: tuple[int, int, int]          # (seed index, setting index, method index): execution order
    cfg: dict[str, Any] | None = None
    setting_id: str | None = None

    @property
    def rel_dir(self) -> str:
        """Run folder relative to the bench folder (also the cell's stable identity for sharding)."""
        if self.setting_id is None:
            raise RuntimeError("resolve the cell first")
        return f"runs/{self.setting_id}/{slug(self.method)}/seed{self.seed}"

    def run_dir(self, out: str | Path) -> Path:
        return Path(out) / self.rel_dir

    def describe(self) -> str:
        sid = self.setting_id or f"{self.setting.dataset}-{self.setting.labels}"
        return f"{self.method} on {sid}, seed {self.seed}"


def grid_suite(algos: Sequence[str], datasets: Sequence[str], labels: Sequence[int | str | None],
               seeds: Sequence[int]) -> Suite:
    """The ``--algos/--dataset/--labels/--seeds`` grid as a suite (method name = algorithm name)."""
    if not algos:
        raise SSLZooError("sslzoo bench needs --algos (e.g. --algos supervised,fixmatch,adacm) or --suite FILE.yaml.")
    methods = [Method(a, {"algo": a}) for a in _unique(list(algos), "--algos")]
    settings = [Setting(d, lab) for d in (datasets or [None]) for lab in (labels or [None])]
    baseline = "supervised" if "supervised" in algos else None
    return Suite("grid", methods, settings, list(seeds), baseline=baseline)


# ----------------------------------------------------------------------------- suite files

def builtin_suite_dirs() -> list[Path]:
    """Where ``--suite NAME`` is looked up: the repository's benchmarks/ and the packaged configs/."""
    from ..config import builtin_config_dir
    from importlib import resources
    dirs = [Path(str(resources.files("sslzoo.benchmarks"))), Path(__file__).resolve().parents[2] / "benchmarks"]
    dirs.append(builtin_config_dir())
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_suite(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = str(name_or_path)
    candidates = [stem] if stem.endswith((".yaml", ".yml")) else [stem + ".yaml", stem + ".yml", stem]
    for d in builtin_suite_dirs():
        for cand in candidates:
            if (d / cand).is_file():
                return d / cand
    known = sorted({str(p.relative_to(d).with_suffix("")) for d in builtin_suite_dirs()
                    for p in d.rglob("*.yaml") if _looks_like_suite(p)})
    raise SSLZooError(f"Suite '{name_or_path}' is neither a file nor a built-in suite. "
                      f"Built-in suites: {', '.join(known) or '(none)'}.")


def _looks_like_suite(path: Path) -> bool:
    try:
        head = path.read_text()[:4000]
    except OSError:
        return False
    return "methods:" in head and "settings:" in head


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite file (structure only; configs are checked by :func:`resolve_cells`)."""
    from ..config import load_yaml
    path = find_suite(name_or_path)
    return parse_suite(load_yaml(path), str(path))


def parse_suite(data: dict[str, Any], where: str = "suite") -> Suite:
    from ..config import rule_at
    if not isinstance(data, dict):
        raise SSLZooError(f"{where}: a suite must be a mapping with 'methods' and 'settings'.")
    for key in data:
        if key not in SUITE_KEYS:
            close = difflib.get_close_matches(str(key), SUITE_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SSLZooError(f"{where}: unknown top-level key '{key}'.{hint} Known: {', '.join(SUITE_KEYS)}.")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SSLZooError(f"{where}: 'defaults' must be a mapping of config keys; got {defaults!r}.")
    data = expand_env(data)
    defaults = copy.deepcopy(data.get("defaults") or {})
    seeds = parse_seeds(defaults.pop("seeds", DEFAULT_SEEDS))
    if "seed" in defaults:
        raise SSLZooError(f"{where}: set 'seeds' (a count or a list) in defaults, not 'seed'.")

    raw_settings = data.get("settings")
    if not isinstance(raw_settings, list) or not raw_settings:
        raise SSLZooError(f"{where}: 'settings' must be a non-empty list like "
                          f"[{{dataset: rafdb, labels: 100}}, ...].")
    settings = []
    for i, s in enumerate(raw_settings):
        if not isinstance(s, dict) or "dataset" not in s or "labels" not in s:
            raise SSLZooError(f"{where}: settings[{i}] must be a mapping with 'dataset' and 'labels' "
                              f"(plus optional config keys); got {s!r}.")
        s = copy.deepcopy(s)
        _no_seed_keys(s, f"{where}: settings[{i}]")
        labels = s.pop("labels")
        wrong = rule_at("labels").fault(labels)
        if wrong:
            raise SSLZooError(f"{where}: settings[{i}].labels must be {wrong}; got {labels!r}.")
        name = s.pop("name", None)
        only = _name_list(s.pop("methods", None), f"{where}: settings[{i}].methods", "method names")
        settings.append(Setting(str(s.pop("dataset")), labels, s, None if name is None else slug(str(name)), only))

    raw_methods = data.get("methods")
    if not isinstance(raw_methods, list) or not raw_methods:
        raise SSLZooError(f"{where}: 'methods' must be a non-empty list like [{{name: Baseline, algo: supervised}}, ...].")
    methods = []
    for i, m in enumerate(raw_methods):
        if not isinstance(m, dict) or "algo" not in m:
            raise SSLZooError(f"{where}: methods[{i}] must be a mapping with 'algo' (and a display 'name'); got {m!r}.")
        m = copy.deepcopy(m)
        _no_seed_keys(m, f"{where}: methods[{i}]")
        name = str(m.pop("name", m["algo"]))
        only = _name_list(m.pop("settings", None), f"{where}: methods[{i}].settings", "setting ids or names")
        methods.append(Method(name, m, None if only is None else [slug(ref) for ref in only]))
    _unique([m.name for m in methods], f"{where}: method names")
    slugs = {}
    for m in methods:
        if slug(m.name) in slugs:
            raise SSLZooError(f"{where}: methods '{slugs[slug(m.name)]}' and '{m.name}' would share the run "
                              f"folder '{slug(m.name)}'; rename one.")
        slugs[slug(m.name)] = m.name

    baseline = data.get("baseline")
    if baseline is not None and baseline not in [m.name for m in methods]:
        raise SSLZooError(f"{where}: baseline '{baseline}' is not one of the methods "
                          f"({', '.join(m.name for m in methods)}).")
    metric = str(data.get("metric", "final"))
    from .tables import resolve_metric
    resolve_metric(metric)
    name = str(data.get("name") or Path(where).stem)
    _check_restrictions(name, where, methods, settings, defaults)
    return Suite(name, methods, settings, seeds, defaults, str(data.get("description") or ""),
                 baseline, metric, where)


def _name_list(value: Any, where: str, what: str) -> list[str] | None:
    """A ``methods:`` / ``settings:`` key of a suite entry: None when absent, else a non-empty list of names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
        example = f" (a list: [{value}])" if isinstance(value, str) else ""
        raise SSLZooError(f"{where} must be a non-empty list of {what}; got {value!r}{example}.")
    return [str(v) for v in value]


def declared_id(setting: Setting, defaults: dict[str, Any]) -> str:
    """The setting's id as the suite file states it (its run folders' id unless the command line changes
    the data set, labels or test data set): what a method's ``settings:`` key refers to."""
    return setting_id(setting, {"test_dataset": defaults.get("test_dataset"), **setting.layer()})


def _check_restrictions(suite: str, where: str, methods: list[Method], settings: list[Setting],
                        defaults: dict[str, Any]) -> None:
    """Every name in a setting's ``methods:`` is a method and every id in a method's ``settings:`` a setting."""
    method_names = [m.name for m in methods]
    setting_ids = list(dict.fromkeys(declared_id(s, defaults) for s in settings))
    checks = [(f"settings[{i}].methods", s.methods, method_names, "method") for i, s in enumerate(settings)]
    checks += [(f"methods[{i}].settings", m.settings, setting_ids, "setting") for i, m in enumerate(methods)]
    for key, names, known, what in checks:
        bad = next((n for n in names or () if n not in known), None)
        if bad is not None:
            close = difflib.get_close_matches(bad, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SSLZooError(f"{where}: {key}: '{bad}' is not a {what} of suite '{suite}'{hint}; "
                              f"its {what}s: {', '.join(known)}.")


def runs_in(method: Method, setting: Setting, defaults: dict[str, Any]) -> bool:
    """Whether the suite's ``methods:`` / ``settings:`` keys let ``method`` run in ``setting``."""
    return ((setting.methods is None or method.name in setting.methods)
            and (method.settings is None or declared_id(setting, defaults) in method.settings))


_ENV_RE = re.compile(r"\$\{(\w+)\}")


def expand_env(obj: Any) -> Any:
    """``"${RAFDB_ROOT}"`` -> the environment variable's value; unset ones stay (checked when resolved)."""
    if isinstance(obj, str):
        return _ENV_RE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), obj)
    if isinstance(obj, dict):
        return {k: expand_env(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_env(v) for v in obj]
    return obj


def unset_env(obj: Any, path: str = "") -> list[tuple[str, str]]:
    """(config key, variable) for every ``${VAR}`` left in a resolved config."""
    if isinstance(obj, str):
        return [(path, v) for v in _ENV_RE.findall(obj)]
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() for hit in unset_env(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, list):
        return [hit for i, v in enumerate(obj) for hit in unset_env(v, f"{path}[{i}]")]
    return []


def _no_seed_keys(entry: dict, where: str) -> None:
    for key in ("seed", "seeds"):
        if key in entry:
            raise SSLZooError(f"{where}: '{key}' can only be set in the suite's defaults (as 'seeds') "
                              f"or with --seeds.")


def filter_suite(suite: Suite, *, methods: Sequence[str] = (), datasets: Sequence[str] = (),
                 labels: Sequence[int] = (), seeds: Sequence[int] | None = None) -> Suite:
    """Keep the rows/columns the command line names (``--algos`` matches a method's name or algorithm)."""
    out = copy.deepcopy(suite)
    if methods:
        wanted = {m.lower() for m in methods}
        out.methods = [m for m in suite.methods if m.name.lower() in wanted or m.algo.lower() in wanted]
        unmatched = wanted - {m.name.lower() for m in out.methods} - {m.algo.lower() for m in out.methods}
        if unmatched:
            raise SSLZooError(f"--algos {', '.join(sorted(unmatched))}: no such method in suite '{suite.name}' "
                              f"(methods: {', '.join(m.name for m in suite.methods)}; algorithms: "
                              f"{', '.join(dict.fromkeys(m.algo for m in suite.methods))}).")
    if datasets:
        wanted_d = {d.lower() for d in datasets}
        out.settings = [s for s in out.settings if str(s.dataset).lower() in wanted_d]
    if labels:
        out.settings = [s for s in out.settings if s.labels in set(labels)]
    if (datasets or labels) and not out.settings:
        raise SSLZooError(f"--dataset/--labels select no setting of suite '{suite.name}' (settings: "
                          f"{', '.join(f'{s.dataset} {s.labels}' for s in suite.settings)}).")
    if seeds is not None:
        out.seeds = list(seeds)
    return out


# ----------------------------------------------------------------------------- cells

def expand(suite: Suite) -> list[Cell]:
    """All cells, in execution order: every method and setting at seed 0, then seed 1, ...

    (so a bench stopped early already holds a complete comparison for its first seeds).
    """
    cells = []
    for si, seed in enumerate(suite.seeds):
        for ti, setting in enumerate(suite.settings):
            for mi, method in enumerate(suite.methods):
                if not runs_in(method, setting, suite.defaults):
                    continue
                layers = [copy.deepcopy(suite.defaults), setting.layer(), copy.deepcopy(method.overrides),
                          {"seed": seed}]
                cells.append(Cell(method.name, setting, seed, [lay for lay in layers if lay], (si, ti, mi)))
    if not cells and suite.seeds:
        raise SSLZooError(
            f"suite '{suite.name}' has no run to make: its settings' `methods:` and its methods' `settings:` "
            f"keys let none of the methods ({', '.join(m.name for m in suite.methods)}) run in any of the "
            f"settings ({', '.join(declared_id(s, suite.defaults) for s in suite.settings)}). "
            f"Select other methods or settings (--algos, --dataset, --labels).")
    return cells


def setting_id(setting: Setting, cfg: dict[str, Any]) -> str:
    if setting.name:
        return setting.name
    sid = f"{cfg['dataset']}-{cfg['labels']}"
    if cfg.get("test_dataset") and cfg["test_dataset"] != cfg["dataset"]:
        sid += f"-on-{cfg['test_dataset']}"
    return slug(sid)


def cell_context(cell: Cell) -> str:
    """How an error names a cell before its config is resolved: method, data set, labels, seed."""
    parts = [f"method '{cell.method}'"]
    if cell.setting.dataset:
        parts.append(f"data set '{cell.setting.dataset}'")
    if cell.setting.labels is not None:
        parts.append(f"{cell.setting.labels} labels")
    return ", ".join(parts + [f"seed {cell.seed}"])


def resolve_cells(cells: list[Cell], cli_layers: list[dict[str, Any]], out: str | Path,
                  where: str = "") -> list[Cell]:
    """Resolve and check every cell's config before anything trains.

    Raises :class:`SSLZooError` naming the cell for anything :func:`sslzoo.config.resolve`
    rejects (an unknown algorithm, data set, backbone or threshold policy with a
    did-you-mean, an unknown config key, a value of the wrong type or out of range, an
    optimizer, schedule, policy or algorithm that does not build), an unset ``${VAR}``,
    or two cells that would share a run folder.
    """
    from ..config import resolve

    by_dir: dict[str, Cell] = {}
    prefix = f"{where}: " if where else ""
    for cell in cells:
        layers = cell.layers + cli_layers
        context = prefix + cell_context(cell)
        try:
            cfg = resolve(layers)
            missing = unset_env(cfg)
            if missing:
                key, var = missing[0]
                raise SSLZooError(f"config key '{key}' uses the environment variable {var}, which is not set. "
                                  f"Set it (e.g. export {var}=/path/to/data) or override the key on the "
                                  f"command line (e.g. --data-root PATH or --set {key}=VALUE).")
        except SSLZooError as exc:
            raise SSLZooError(f"{context}: {exc}") from None
        method_algo = next((lay["algo"] for lay in reversed(cell.layers) if "algo" in lay), cfg["algo"])
        if cfg["algo"] != str(method_algo).lower() or cfg["seed"] != cell.seed:
            raise SSLZooError(f"{context}: 'algo' and 'seed' are set by the grid; choose them with --algos / "
                              f"--seeds (or the suite's methods), not --set or --config.")
        cell.setting_id = setting_id(cell.setting, cfg)
        cfg["out"] = str((Path(out) / cell.rel_dir).resolve())
        cfg["progress"] = False
        cell.cfg = cfg
        other = by_dir.get(cell.rel_dir)
        if other is not None:
            raise SSLZooError(f"{prefix}two cells map to the same run folder '{cell.rel_dir}' "
                              f"({other.describe()} and {cell.describe()}); give the settings distinct "
                              f"`name:` keys or change the overriding flags.")
        by_dir[cell.rel_dir] = cell
    return cells


def shard(cells: Iterable[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard ``index`` of ``count``: every count-th cell of the grid sorted by run folder.

    Deterministic on every machine (it depends only on the grid), disjoint across
    shards and covering the grid exactly once; kept in execution order.
    """
    cells = list(cells)
    if count == 1:
        return cells
    ranked = sorted(cells, key=lambda c: c.rel_dir)
    mine = {id(c) for k, c in enumerate(ranked) if k % count == index}
    return [c for c in cells if id(c) in mine]
