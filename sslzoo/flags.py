"""The training flags every command shares (train, bench, pretrain, throughput): flag -> config key.

Why a module of its own: ``sslzoo train``, ``sslzoo bench`` and ``sslzoo throughput`` accept the
same flags and turn them into config layers the same way; this sits below all of them.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def count_or_word(text: str) -> int | str:
    """A whole number as an int, any other word as it is (``--labels all``): the config schema judges it,
    so a bad value gets the same message from a flag, a config file and ``--set``."""
    try:
        return int(text)
    except ValueError:
        return text.strip()


# flag -> config key, for the training flags shared by train and bench
TRAIN_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--algo", "algo", str, "algorithm name (see `sslzoo list`)"),
    ("--dataset", "dataset", str, "data set name"),
    ("--data-root", "data_root", str, "folder holding the data set"),
    ("--labels", "labels", count_or_word, "number of labeled training images, or all of them"),
    ("--seed", "seed", int, "random seed of the split, the init and the augmentation"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--iters-per-epoch", "iters_per_epoch", int, "iterations per epoch"),
    ("--batch-size", "batch_size", int, "labeled images per step"),
    ("--mu", "mu", int, "unlabeled/labeled batch ratio"),
    ("--device", "device", str, "where to train"),
    ("--image-size", "image_size", int, "resize images to this side"),
    ("--split", "split", str, "labeled-subset protocol"),
    ("--val-per-class", "val_per_class", int, "hold out N images per class for model selection"),
    ("--unlabeled-extra", "unlabeled_extra", str, "add this data set's training images as unlabeled data"),
    ("--test-dataset", "test_dataset", str, "evaluate on another data set (cross-data-set)"),
    ("--num-workers", "num_workers", int, "data loader workers, -1: one per spare core"),
]


def add_train_flags(p: argparse.ArgumentParser, *, with_single: bool = True) -> None:
    for flag, key, typ, help_ in TRAIN_FLAGS:
        if not with_single and key in ("algo", "dataset", "labels", "seed"):
            continue
        p.add_argument(flag, dest=key, type=typ, default=None, help=_with_range(key, help_))
    p.add_argument("--backbone", default=None, help="backbone name (see `sslzoo list`)")
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML config (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set policy=fixed:0.8 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers algorithms/policies (repeatable)")


def _with_range(key: str, help_: str) -> str:
    """A flag's help plus the range or words its config key accepts, from the one schema (sslzoo.config)."""
    from .config import Either, Num, Word, rule_at
    rule = rule_at(key)
    return f"{help_} ({rule.text()})" if isinstance(rule, (Num, Word, Either)) else help_


def config_layers(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    from .config import load_yaml, parse_set
    from .registry import load_plugin
    for plugin in args.plugin:
        load_plugin(plugin)
    layers = [load_yaml(f) for f in args.config]
    flags = {key: getattr(args, key) for _, key, _, _ in TRAIN_FLAGS if getattr(args, key, None) is not None}
    if getattr(args, "backbone", None):
        flags["backbone"] = {"name": args.backbone}
    if getattr(args, "out", None):
        flags["out"] = args.out
    if getattr(args, "no_progress", False):
        flags["progress"] = False
    layers.append(flags)
    layers.append(parse_set(args.set))
    if extra:
        layers.append(extra)
    return layers
