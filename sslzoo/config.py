"""Resolved run configuration: defaults <- data-set YAML <- algorithm YAML <- --config <- flags <- --set.

Why one nested dict with a schema taken from the defaults: every key a user can
set is visible in ``DEFAULTS`` (or an algorithm's constructor), YAML is parsed
with ``yaml.safe_load``, unknown keys get a did-you-mean, and a type error names
the key. The resolved dict is saved as the run's ``config.yaml``.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import SSLZooError
from .registry import ALGORITHMS

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
FREE_FORM = {"data", "backbone"}   # sections whose keys the component checks
NULLABLE_ANY = {"policy"}


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3, else a string)."""


_SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                  list("-+0123456789."))


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass: no Python objects


def builtin_config_dir() -> Path:
    """The packaged ``configs/`` folder (installed as the ``sslzoo.configs`` package data)."""
    try:
        return Path(str(resources.files("sslzoo.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


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


def _check(schema: dict[str, Any], given: dict[str, Any], where: str) -> None:
    for key, value in given.items():
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SSLZooError(f"Unknown config key '{where}{key}'.{hint} "
                              f"Known keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(schema))}.")
        default = schema[key]
        path = f"{where}{key}"
        if key in FREE_FORM and not where:
            if not isinstance(value, dict):
                raise SSLZooError(f"Config key '{path}' must be a mapping; got {value!r}.")
            continue
        if key in NULLABLE_ANY and not where:
            continue
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise SSLZooError(f"Config key '{path}' must be a mapping; got {value!r}.")
            _check(default, value, path + ".")
        elif default is not None and value is not None:
            ok = (isinstance(value, bool) if isinstance(default, bool)
                  else isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float)
                  else isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int)
                  else isinstance(value, type(default)))
            if not ok:
                raise SSLZooError(f"Config key '{path}' expects a {type(default).__name__} "
                                  f"(default {default!r}); got {value!r}.")


def parse_switch(value: Any, key: str) -> bool | None:
    """A config switch given as a bool or a word (on/off, true/false, yes/no, 1/0); None for "auto"."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word == "auto":
        return None
    if word in ("true", "on", "yes", "1"):
        return True
    if word in ("false", "off", "no", "0", "none"):
        return False
    raise SSLZooError(f"Config key '{key}' must be auto, true or false; got {value!r}.")


def schema() -> dict[str, Any]:
    """DEFAULTS plus one section per registered algorithm (its constructor's keyword arguments)."""
    from .algorithm import policy_hyperparameters
    from .registry import POLICIES
    full = copy.deepcopy(DEFAULTS)
    for name, cls in ALGORITHMS.items():
        full[name] = cls.hyperparameters()
    full["policies"] = {name: policy_hyperparameters(cls) for name, cls in POLICIES.items()}
    return full


def resolve(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge user layers over the defaults and the built-in per-data-set / per-algorithm YAML."""
    full_schema = schema()
    for layer in layers:
        _check(full_schema, layer, "")
    user = {}
    for layer in layers:
        user = deep_merge(user, layer)
    algo = user.get("algo", DEFAULTS["algo"])
    dataset = user.get("dataset", DEFAULTS["dataset"])
    ALGORITHMS.get(algo)   # unknown algorithm -> a clear error before anything else
    builtin: list[dict[str, Any]] = []
    for sub, name in (("datasets", dataset), ("algorithms", algo)):
        path = builtin_config_dir() / sub / f"{name}.yaml"
        if path.is_file():
            layer = load_yaml(path)
            _check(full_schema, layer, "")
            builtin.append(layer)
    cfg = copy.deepcopy(DEFAULTS)
    cfg[algo] = full_schema[algo]
    for layer in builtin + [user]:
        cfg = deep_merge(cfg, layer)
    for other in ALGORITHMS.names():   # keep only the active algorithm's section
        if other != algo:
            cfg.pop(other, None)
    return cfg


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
