"""Resolved run configuration: defaults <- data-set YAML <- algorithm YAML <- --config <- flags <- --set.

Why one nested dict: every key a user can set is visible in ``DEFAULTS`` (or an
algorithm's or policy's constructor), YAML is parsed with ``yaml.safe_load``, and
the resolved dict is saved as the run's ``config.yaml``.

Why a schema of small frozen dataclasses (:class:`Num`, :class:`Word`, ...) and not
pydantic or OmegaConf: a key needs a type, a range or a set of words, and one
message in our words ("Config key 'optim.lr' must be > 0; got -1."); pydantic is
not a dependency (and would need its errors translated and its coercion of "3" to 3
turned off), OmegaConf is neither installed nor able to state ranges; and the
algorithms' and policies' sections are made at run time from the registries (their
constructors, plugins included), which plain objects handle without generated model
classes. ``tests/test_config_schema.py`` holds every key of ``DEFAULTS`` to a rule.

:func:`resolve` checks every layer against the schema, then :func:`validate` builds
what a run builds from the config alone (optimizer, schedule, policy, algorithm), so
``sslzoo train``, ``sslzoo.fit`` and every cell of ``sslzoo bench`` fail before
anything trains. ``sslzoo config --schema`` prints every key with what it accepts
(docs/config.md).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .data.labels import FER7
from .data.splits import LABELS_ALL
from .data.splits import SPLITS
from .errors import SSLZooError
from .optim import OPTIMIZERS, SCHEDULES
from .registry import ALGORITHMS, BACKBONES, DATASETS, POLICIES, Registry

DEFAULTS: dict[str, Any] = {
    "algo": "adacm",
    "policy": None,              # None: the algorithm's default; "fixed:0.8", or {name: fixed, threshold: 0.8}
    "policies": {},              # per-policy settings, applied only when that policy is in force,
                                 # e.g. policies: {freematch: {momentum: 0.99}}; the policy spec wins
    "dataset": "synthfer",
    "data_root": None,
    "data": {},                  # data-set loader options (checked by the loader)
    "image_size": None,          # None: the data set's own default
    "labels": 70,
    "split": "balanced",         # balanced | stratified | adacm_rafdb
    "val_per_class": 0,          # >0 holds out a validation split from the training data
    "unlabeled_extra": None,     # another data set whose training images join the unlabeled pool
    "unlabeled_extra_root": None,
    "test_dataset": None,        # cross-data-set evaluation (train on one, test on another)
    "test_data_root": None,
    "seed": 0,
    "epochs": 10,
    "iters_per_epoch": 100,
    "batch_size": 16,            # labeled images per step (per process)
    "mu": 1,                     # unlabeled / labeled batch ratio
    "eval_batch_size": 512,
    "backbone": {"name": "smallcnn"},   # other keys go to the backbone factory (weights, dropout, ...)
    "optim": {"name": "adam", "lr": 5e-4, "weight_decay": 0.0, "momentum": 0.9, "nesterov": True,
              "no_decay_norm_bias": True,   # no weight decay on 1-d parameters (norms, biases), as USB and timm
              "clip_grad": None},           # max global L2 norm of the gradients (None: no clipping)
    "schedule": {"name": "constant", "warmup_steps": 0},   # constant | cosine (FixMatch's 7/16 cosine)
    "ema": {"decay": 0.999, "warmup": True,
            "buffers": "copy"},             # copy (USB) | average (official Ada-CM, timm): batch-norm statistics
    "augment": {
        "crop_padding": 0.125,          # weak crop: padding as a fraction of the image side
        "crop_padding_mode": "reflect",  # reflect (USB) | zeros (torchvision's RandomCrop default, official Ada-CM)
        "crop_prob": 1.0,                # probability that the weak crop is applied (official Ada-CM: 0.5)
        "flip": True,
        "randaugment": "fixmatch",      # fixmatch (FixMatch/USB/official Ada-CM) | torchvision (fixed magnitude) | none
        "randaugment_n": 2,              # operations per image (FixMatch 2, official Ada-CM 3)
        "randaugment_m": 10,             # torchvision's fixed magnitude (0-30); the fixmatch variant draws its own
        "randaugment_first": False,      # official Ada-CM: RandAugment (+ Cutout) before the weak crop and flip
        "cutout": 0.5,                   # max side of the Cutout square, as a fraction of the image side (0: off)
        "device": "auto",                # where views are built: auto | loader (CPU workers) | train (training device)
    },
    "forward_mode": "concat",    # concat (one pass) | separate (one pass per input, official Ada-CM)
    "device": "auto",
    "amp": "auto",               # auto: bf16/fp16 autocast on CUDA, off on CPU
    "channels_last": "auto",
    "compile": False,
    "num_workers": -1,           # -1: one per spare CPU core (at most 4)
    "tensorboard": True,
    "loggers": [],               # more loggers: csv (metrics.csv), wandb (needs the wandb package)
    "log_interval": 50,          # steps between host reads of the running losses/stats (and divergence checks)
    "save_best_test": False,     # also keep best_test.pt, the model of the best test epoch (best_val.pt is kept
                                 # whenever a validation split exists)
    "progress": True,
    "out": "runs/run",
}


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3, else a string)."""


_SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass: no Python objects


def builtin_config_dir() -> Path:
    """The packaged ``configs/`` folder (installed as the ``sslzoo.configs`` package data)."""
    return Path(str(resources.files("sslzoo.configs")))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SSLZooError(f"Config file '{path}' does not exist.")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SSLZooError(f"Config file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SSLZooError(f"Config file '{path}' must hold a mapping of keys to values; got {type(data).__name__}.")
    return data


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "policy=fixed:0.8"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise SSLZooError(f"--set expects key=value (e.g. --set optim.lr=0.001 or --set policy=fixed:0.8); "
                              f"got '{item}'.")
        try:
            value = safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and ":" in raw and key.strip() == "policy":
            value = raw.strip()
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SSLZooError(f"--set '{item}': '{part}' was already given a value, not a section.")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "policy":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- the schema

# The words the components accept come from the components; the loggers are named here (callbacks.py
# builds them and imports this list: it sits above this module).
LOGGERS = ("tensorboard", "csv", "wandb")
SWITCH_WORDS: dict[str, bool | None] = {"auto": None, "true": True, "on": True, "yes": True, "1": True,
                                        "false": False, "off": False, "no": False, "0": False, "none": False}
API_DATASET, API_BACKBONE = "user", "user:"   # names sslzoo.fit gives the user's own data and network
FALLBACK_CLASSES = len(FER7)   # the canonical FER label space, for checking an algorithm before its data is loaded


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any) -> str:
    """A default as YAML writes it (null, true), for the schema table."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What one config key accepts. Subclasses say what (:meth:`text`) and test a value (:meth:`fault`)."""

    nullable: bool = False   # null means something ("the data set's own size", "no clipping")

    def text(self) -> str:
        raise NotImplementedError

    def fault(self, value: Any) -> str | None:
        """None when ``value`` (not None) is accepted, else what it must be (the words after "must be")."""
        raise NotImplementedError

    def hint(self, value: Any) -> str:
        return ""

    def allowed(self) -> str:
        return f"null or {self.text()}" if self.nullable else self.text()

    def check(self, value: Any, path: str) -> None:
        what = (None if self.nullable else self.allowed()) if value is None else self.fault(value)
        if what:
            shown = "null" if value is None else repr(value)
            raise SSLZooError(f"Config key '{path}' must be {what}; got {shown}{self.hint(value)}.")


@dataclass(frozen=True, kw_only=True)
class Typed(Rule):
    """A value of one of ``types``: switches, paths, strings, lists, policy specs."""

    types: tuple[type, ...]
    what: str

    def text(self) -> str:
        return self.what

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, self.types) else self.allowed()


@dataclass(frozen=True, kw_only=True)
class Num(Rule):
    """A finite number (``whole``: an int) within optional bounds; an int is a number too."""

    whole: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def bounds(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        signs = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return next((f"{sign} {bound:g}" for sign, bound in signs if bound is not None), "")

    def text(self) -> str:
        return f"{'a whole number' if self.whole else 'a number'} {self.bounds()}".rstrip()

    def fault(self, value: Any) -> str | None:
        kinds = (int,) if self.whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)):
            return self.allowed()
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if inside else self.bounds()


@dataclass(frozen=True, kw_only=True)
class Word(Rule):
    """One of a few words: the listed ``choices``, plus synonyms the reader also takes (``aliases``)."""

    choices: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    fold_case: bool = False   # the reader lower-cases the word
    bools: bool = False       # YAML's true/false/on/off, read as booleans, are accepted too
    pattern: str = ""         # the accepted words as a regular expression, where a choice is a family (cuda:N)

    def text(self) -> str:
        return "one of " + ", ".join(self.choices)

    def fault(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str):
            return None if isinstance(value, bool) and self.bools else self.allowed()
        word = value.strip().lower() if self.fold_case else value
        ok = re.fullmatch(self.pattern, word) if self.pattern else word in self.choices + self.aliases
        return None if ok else self.allowed()

    def hint(self, value: Any) -> str:   # not for a family of words: "gpu" is not a typo of "cpu"
        return "" if self.pattern else _did_you_mean(str(value), self.choices)


@dataclass(frozen=True, kw_only=True)
class Words(Rule):
    """A list of words, each one of ``choices``."""

    choices: tuple[str, ...]

    def text(self) -> str:
        return "a list of any of " + ", ".join(self.choices)

    def fault(self, value: Any) -> str | None:
        ok = isinstance(value, list) and all(isinstance(v, str) and v in self.choices for v in value)
        return None if ok else self.allowed()

    def hint(self, value: Any) -> str:
        if not isinstance(value, list):
            return f" (a list: [{value}])" if value in self.choices else ""
        bad = [v for v in value if v not in self.choices]
        return _did_you_mean(str(bad[0]), self.choices) if bad else ""


@dataclass(frozen=True, kw_only=True)
class Name(Rule):
    """The name of a registered component; the registry's own error lists the known names."""

    registry: Registry
    reserved: tuple[str, ...] = ()   # names the Python API gives its own objects; one ending in ":" is a prefix

    def text(self) -> str:
        return f"a registered {self.registry.kind} (see `sslzoo list`)"

    def fault(self, value: Any) -> str | None:
        return None if isinstance(value, str) else self.allowed()

    def check(self, value: Any, path: str) -> None:
        super().check(value, path)
        if not isinstance(value, str) or any(value == r or (r.endswith(":") and value.startswith(r))
                                             for r in self.reserved):
            return
        try:
            self.registry.get(value)
        except SSLZooError as exc:
            raise SSLZooError(f"Config key '{path}': {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Either(Rule):
    """A value any of ``options`` accepts, e.g. a label count or the word "all"."""

    options: tuple[Rule, ...]

    def text(self) -> str:
        return " or ".join(option.text().removeprefix("one of ") for option in self.options)

    def fault(self, value: Any) -> str | None:
        faults = [option.fault(value) for option in self.options]
        if None in faults:
            return None
        # a value of the right kind for one option but out of its range gets that option's words (">= 1")
        return next((f for option, f in zip(self.options, faults) if f != option.allowed()), self.allowed())

    def hint(self, value: Any) -> str:
        return next((hint for option in self.options if (hint := option.hint(value))), "")


@dataclass(frozen=True)
class Section:
    """A mapping of keys to rules. ``free``: other keys pass (the component that reads them checks them)."""

    keys: dict[str, Rule | Section]
    free: bool = False
    doc: str = ""   # what the section is, for the schema table (sections without rules of their own)


@functools.cache
def _base_schema() -> Section:
    """The rule of every key of ``DEFAULTS`` (:func:`schema` adds the algorithms' and policies' sections)."""
    from .device import AMP_WORDS
    count = Num(whole=True, ge=1)
    switch = Typed(types=(bool,), what="true or false")
    path = Typed(types=(str,), what="a path", nullable=True)
    return Section({
        "algo": Name(registry=ALGORITHMS),
        "policy": Typed(types=(str, dict), what="a threshold policy spec (flexmatch, fixed:0.8) or a mapping "
                                                "with a 'name' and its settings", nullable=True),
        "policies": Section({}, doc="per threshold policy, its constructor's settings: "
                                    "`policies.<policy>.<setting>` (`sslzoo config --schema` lists them)"),
        "dataset": Name(registry=DATASETS, reserved=(API_DATASET,)),
        "data_root": path,
        "data": Section({}, free=True, doc="a mapping of the data set loader's options (the loader checks them)"),
        "image_size": Num(whole=True, ge=8, le=1024, nullable=True),   # 8: digits and the FER loaders; synthfer 16
        "labels": Either(options=(count, Word(choices=(LABELS_ALL,)))),   # all: every known label
        "split": Word(choices=SPLITS),
        "val_per_class": Num(whole=True, ge=0),
        "unlabeled_extra": Name(registry=DATASETS, nullable=True),
        "unlabeled_extra_root": path,
        "test_dataset": Name(registry=DATASETS, nullable=True),
        "test_data_root": path,
        "seed": Num(whole=True, ge=0),
        "epochs": count, "iters_per_epoch": count, "batch_size": count, "mu": count, "eval_batch_size": count,
        "backbone": Section({"name": Name(registry=BACKBONES, reserved=(API_BACKBONE,))}, free=True,
                            doc="a mapping: `name` and the backbone factory's options (weights, pretrained, "
                                "width, ...; the factory checks them)"),
        "optim": Section({"name": Word(choices=OPTIMIZERS, fold_case=True), "lr": Num(gt=0),
                          "weight_decay": Num(ge=0), "momentum": Num(ge=0, lt=1), "nesterov": switch,
                          "no_decay_norm_bias": switch, "clip_grad": Num(gt=0, nullable=True)}),
        "schedule": Section({"name": Word(choices=SCHEDULES, fold_case=True), "warmup_steps": Num(whole=True, ge=0)}),
        "ema": Section({"decay": Num(ge=0, lt=1), "warmup": switch, "buffers": Word(choices=("copy", "average"))}),
        "augment": Section({
            "crop_padding": Num(ge=0, lt=1), "crop_padding_mode": Word(choices=("reflect", "zeros")),
            "crop_prob": Num(ge=0, le=1), "flip": switch,
            "randaugment": Word(choices=("fixmatch", "torchvision", "none")),
            "randaugment_n": Num(whole=True, ge=0), "randaugment_m": Num(whole=True, ge=0, le=30),
            "randaugment_first": switch, "cutout": Num(ge=0, le=1),
            "device": Word(choices=("auto", "loader", "train"))}),
        "forward_mode": Word(choices=("concat", "separate")),
        "device": Word(choices=("auto", "cpu", "cuda", "cuda:N"), pattern=r"auto|cpu|cuda(:\d+)?"),
        "amp": Word(choices=("auto", "bf16", "fp16", "off"), aliases=tuple(AMP_WORDS), fold_case=True, bools=True),
        "channels_last": Word(choices=("auto", "true", "false"), aliases=tuple(SWITCH_WORDS), fold_case=True,
                              bools=True),
        "compile": switch,
        "num_workers": Num(whole=True, ge=-1),
        "tensorboard": switch,
        "loggers": Words(choices=LOGGERS),
        "log_interval": count,
        "save_best_test": switch,
        "progress": switch,
        "out": Typed(types=(str,), what="a path"),
    })


_BY_TYPE: dict[type, Rule] = {bool: Typed(types=(bool,), what="true or false"), int: Num(whole=True), float: Num(),
                              str: Typed(types=(str,), what="a string"), list: Typed(types=(list,), what="a list"),
                              dict: Typed(types=(dict,), what="a mapping")}


def _kwarg_rule(default: Any, hint: Any) -> Rule:
    """A constructor argument's rule: its annotation's type where it has one the default fits, else the
    default's type; null only where the annotation allows it (``float | None``) or the default is None."""
    nullable, kind = False, hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable, kind = len(args) < len(typing.get_args(hint)), (args[0] if len(args) == 1 else None)
    rule = _BY_TYPE.get(typing.get_origin(kind) or kind)   # list[int] -> list
    if typing.get_origin(kind) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(kind)):
        rule = Word(choices=typing.get_args(kind))
    if rule is None or (default is not None and rule.fault(default)):
        rule = _BY_TYPE.get(type(default))
    if rule is None:   # None by default and no usable annotation: the constructor checks it
        return Typed(types=(object,), what="anything", nullable=True)
    return dataclasses.replace(rule, nullable=nullable or default is None)


def _kwargs_section(cls: type, defaults: dict[str, Any]) -> Section:
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate (a plugin's): type by the defaults
        hints = {}
    return Section({key: _kwarg_rule(default, hints.get(key)) for key, default in defaults.items()})


def full_defaults() -> dict[str, Any]:
    """DEFAULTS plus one section per registered algorithm and policy (their constructors' defaults)."""
    from .policy import policy_hyperparameters
    full = copy.deepcopy(DEFAULTS)
    for name, cls in ALGORITHMS.items():
        full[name] = cls.hyperparameters()
    full["policies"] = {name: policy_hyperparameters(cls) for name, cls in POLICIES.items()}
    return full


def schema() -> Section:
    """The rules of ``DEFAULTS``' keys plus a section per registered algorithm and policy (plugins too)."""
    from .policy import policy_hyperparameters
    keys = dict(_base_schema().keys)
    keys["policies"] = Section({name: _kwargs_section(cls, policy_hyperparameters(cls))
                                for name, cls in POLICIES.items()})
    for name, cls in ALGORITHMS.items():
        keys[name] = _kwargs_section(cls, cls.hyperparameters())
    return Section(keys)


def rule_at(path: str, rules: Section | None = None) -> Rule | Section:
    """The rule of a dotted key (``"optim.lr"``)."""
    node: Rule | Section = rules or _base_schema()
    for part in path.split("."):
        if not isinstance(node, Section) or part not in node.keys:
            raise KeyError(path)
        node = node.keys[part]
    return node


def _check(rules: Section, given: dict[str, Any], where: str) -> None:
    for key, value in given.items():
        path = f"{where}{key}"
        rule = rules.keys.get(key)
        if rule is None:
            if rules.free:
                continue
            close = difflib.get_close_matches(str(key), list(rules.keys), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SSLZooError(f"Unknown config key '{path}'.{hint} "
                              f"Known keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(rules.keys))}.")
        if isinstance(rule, Rule):
            rule.check(value, path)
        elif not isinstance(value, dict):
            raise SSLZooError(f"Config key '{path}' must be a mapping; got {value!r}.")
        else:
            _check(rule, value, path + ".")


def schema_rows(full: bool = True) -> list[tuple[str, str, str]]:
    """(key, default, what it accepts) for every key; ``full=False``: ``DEFAULTS``' keys only."""
    rows: list[tuple[str, str, str]] = []

    def walk(rules: Section, defaults: dict[str, Any], where: str) -> None:
        for key, rule in rules.keys.items():
            default = defaults.get(key)
            if isinstance(rule, Rule):
                rows.append((where + key, _show(default), rule.allowed()))
                continue
            if rule.doc:
                rows.append((where + key, _show(default), rule.doc))
            walk(rule, default if isinstance(default, dict) else {}, f"{where}{key}.")

    walk(schema() if full else _base_schema(), full_defaults() if full else DEFAULTS, "")
    return rows


def schema_table(full: bool = True) -> str:
    """:func:`schema_rows` as a Markdown table (``sslzoo config --schema``; docs/config.md)."""
    lines = ["| key | default | accepts |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {allowed} |" for key, default, allowed in schema_rows(full)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- resolving

def parse_switch(value: Any, key: str) -> bool | None:
    """A config switch given as a bool or a word (on/off, true/false, yes/no, 1/0); None for "auto"."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in SWITCH_WORDS:
        return SWITCH_WORDS[word]
    raise SSLZooError(f"Config key '{key}' must be auto, true or false; got {value!r}.")


def resolve(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge user layers over the defaults and the built-in per-data-set / per-algorithm YAML, and check
    the result whole (:func:`validate`) before anything is built for real."""
    rules = schema()
    for layer in layers:
        _check(rules, layer, "")
    user = {}
    for layer in layers:
        user = deep_merge(user, layer)
    for key, registry in (("algo", ALGORITHMS), ("dataset", DATASETS)):
        # registered names are lower-case: "FixMatch" names fixmatch, and must find its YAML and its section too
        if isinstance(user.get(key), str) and user[key] != user[key].lower() and user[key] in registry:
            user[key] = user[key].lower()
    algo = user.get("algo", DEFAULTS["algo"])
    dataset = user.get("dataset", DEFAULTS["dataset"])
    builtin: list[dict[str, Any]] = []
    for sub, name in (("datasets", dataset), ("algorithms", algo)):
        path = builtin_config_dir() / sub / f"{name}.yaml"
        if path.is_file():
            layer = load_yaml(path)
            _check(rules, layer, "")
            builtin.append(layer)
    cfg = copy.deepcopy(DEFAULTS)
    cfg[algo] = ALGORITHMS.get(algo).hyperparameters()
    for layer in builtin + [user]:
        cfg = deep_merge(cfg, layer)
    for other in ALGORITHMS.names():   # keep only the active algorithm's section
        if other != algo:
            cfg.pop(other, None)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Build what a run builds from the config alone (optimizer, schedule, policy, algorithm), so a value
    only the component can judge fails now, before any run folder or data, and not mid-run."""
    import torch
    from .factory import build_algorithm
    if cfg["labels"] == "all" and cfg["split"] == "adacm_rafdb":
        raise SSLZooError("--split adacm_rafdb (the official Ada-CM label counts) does not apply to --labels all; "
                          "use --split balanced (the default) or stratified, which both take every image.")
    with torch.random.fork_rng(devices=[]):   # checking a config must not move anyone's random stream
        _check_optimization(cfg)
        build_algorithm(cfg, _num_classes(cfg))


def _num_classes(cfg: dict[str, Any]) -> int:
    """The data set's class count where the config states it (``data.num_classes``, as AffectNet's YAML
    does); else the canonical 7: a loader knows its classes only once it has read its files."""
    n = (cfg.get("data") or {}).get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else FALLBACK_CLASSES


def _check_optimization(cfg: dict[str, Any]) -> None:
    """The optimizer on a dummy parameter, its clipping, and the schedule's factor at the first, a middle
    and the last step (a factor may only fail past the warm-up)."""
    import torch
    from .optim import build_optimizer, build_schedule, clip_norm
    total = cfg["epochs"] * cfg["iters_per_epoch"]
    try:
        clip_norm(cfg["optim"])
        optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg["optim"])
        schedule = build_schedule(optimizer, cfg["schedule"], total)
        for step in sorted({0, total // 2, total - 1}):
            for factor in schedule.lr_lambdas:
                factor(step)
    except (ValueError, TypeError) as exc:   # torch rejecting a value: the user's input
        raise SSLZooError(f"Config sections 'optim' / 'schedule' were rejected: {exc} "
                          f"(optim: {cfg['optim']}; schedule: {cfg['schedule']}).") from None


def config_hash(cfg: dict[str, Any]) -> str:
    """A short stable hash of everything that changes results (not where they are written)."""
    # Where data sets are mounted does not change results: a moved data folder, or cluster nodes
    # mounting it at different paths, must not make finished runs look stale.
    ignored = ("out", "progress", "tensorboard", "loggers", "log_interval", "num_workers", "data_root",
               "unlabeled_extra_root", "test_data_root")
    keep = {k: v for k, v in cfg.items() if k not in ignored}
    weights = (cfg.get("backbone") or {}).get("weights")
    if weights:   # a re-made checkpoint at the same path is a different configuration
        keep["backbone_weights_sha256"] = file_fingerprint(weights)
    pretrained = (cfg.get("backbone") or {}).get("pretrained")
    if pretrained:   # a changed recipe (new version, other hyperparameters) is a different configuration
        from .device import device_type
        from .pretrain.store import recipe_fingerprint
        keep["backbone_pretrained_recipe"] = recipe_fingerprint(str(pretrained))
        # the weights are built on the run's device type, and differ with it
        keep["backbone_pretrained_device"] = device_type(str(cfg.get("device", "auto")))
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


_FINGERPRINTS: dict[tuple, str] = {}


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's content, or "missing"; computed once per (path, size, mtime)."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]
