"""Command line: sslzoo list | train | pretrain | data | cache | bench | table | plot | calibration | eval | throughput.

User errors (SSLZooError) print as one paragraph and exit 2; --debug shows the traceback.
"""
from __future__ import annotations

import os

# Before torch loads OpenMP: spin-waiting threads made steps 2.5-8x slower on shared machines
# (docs/performance.md); passive waiting is within noise of the default on an idle one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
from typing import Any, Callable

from .errors import DivergedError, SSLZooError

# flag -> config key, for the training flags shared by train and bench
TRAIN_FLAGS: list[tuple[str, str, type, str]] = [
    ("--algo", "algo", str, "algorithm name (see `sslzoo list`)"),
    ("--dataset", "dataset", str, "data set name"),
    ("--data-root", "data_root", str, "folder holding the data set"),
    ("--labels", "labels", int, "number of labeled training images"),
    ("--seed", "seed", int, "random seed (split, init, augmentation)"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--iters-per-epoch", "iters_per_epoch", int, "iterations per epoch"),
    ("--batch-size", "batch_size", int, "labeled images per step"),
    ("--mu", "mu", int, "unlabeled/labeled batch ratio"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--image-size", "image_size", int, "resize images to this side"),
    ("--split", "split", str, "labeled-subset protocol: balanced | stratified | adacm_rafdb"),
    ("--val-per-class", "val_per_class", int, "hold out N images per class for model selection"),
    ("--unlabeled-extra", "unlabeled_extra", str, "add this data set's training images as unlabeled data"),
    ("--test-dataset", "test_dataset", str, "evaluate on another data set (cross-data-set)"),
    ("--num-workers", "num_workers", int, "data loader workers (-1: auto)"),
]


def add_train_flags(p: argparse.ArgumentParser, *, with_single: bool = True) -> None:
    for flag, key, typ, help_ in TRAIN_FLAGS:
        if not with_single and key in ("algo", "dataset", "labels", "seed"):
            continue
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    p.add_argument("--backbone", default=None, help="backbone name (see `sslzoo list`)")
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML config (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set policy=fixed:0.8 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers algorithms/policies (repeatable)")


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


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import ALGORITHMS, BACKBONES, DATASETS, POLICIES, PRETRAINED, describe
    for title, reg in (("algorithms", ALGORITHMS), ("threshold policies", POLICIES),
                       ("data sets", DATASETS), ("backbones", BACKBONES),
                       ("pretrained backbones (backbone.pretrained=NAME)", PRETRAINED)):
        print(f"{title}:")
        width = max([12, *(len(name) + 1 for name, _ in reg.items())])
        for name, obj in reg.items():
            extra = ""
            if reg is ALGORITHMS and getattr(obj, "default_policy", None):
                extra = f" [policy: {obj.default_policy}]"
            print(f"  {name:<{width}} {describe(obj)}{extra}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os
    from .config import resolve
    from .trainer import train
    if args.nproc and args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    cfg = resolve(config_layers(args))
    metrics = train(cfg, resume=args.resume, overwrite=args.overwrite, stop_after_epoch=args.stop_after_epoch)
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun only rank 0 reports
        return 0
    if metrics.get("status") == "interrupted":
        print(f"run: {cfg['out']}\nstopped after epoch {metrics['epochs_done']} of {metrics['epochs']} "
              f"(checkpoint saved); continue with the same command plus --resume.")
    elif metrics.get("final_acc") is not None:
        print(f"run: {cfg['out']}\nfinal test accuracy: {metrics['final_acc']:.2f}% "
              f"(best over epochs: {metrics['best_test_acc']:.2f}% at epoch {metrics['best_epoch']})")
    return 0


def _relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Run the same command under torchrun (DDP), without --nproc."""
    import subprocess
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sslzoo", *rest]
    return subprocess.call(cmd)


def cmd_data(args: argparse.Namespace) -> int:
    from .data.describe import describe_dataset, format_description
    from .config import parse_set
    options = parse_set(args.set)
    d = describe_dataset(args.name, args.data_root, **options)
    print(json.dumps(d, indent=1, default=str) if args.json else format_description(d))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .data.cache_admin import format_items, human_bytes, list_items, remove, select_for_pruning
    from .paths import cache_dir
    items = list_items()
    if args.action == "list":
        total = sum(i.bytes for i in items)
        print(f"{cache_dir()}: {len(items)} item(s), {human_bytes(total)}")
        if items:
            print(format_items(items))
        return 0
    chosen = select_for_pruning(items, superseded=args.superseded, missing_root=args.missing_root,
                                older_than_days=args.older_than, everything=args.all)
    size = human_bytes(sum(i.bytes for i in chosen))
    if args.dry_run or not chosen:
        print(f"would remove {len(chosen)} item(s), {size}" if args.dry_run else "nothing to remove")
        if chosen:
            print(format_items(chosen))
        return 0
    freed, problems = remove(chosen)
    print(f"removed {len(chosen) - len(problems)} item(s), {human_bytes(freed)}")
    print(format_items(chosen))
    if problems:
        raise SSLZooError("some cache items could not be removed (in use on Windows, or no permission):\n  "
                          + "\n  ".join(problems))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Build (or find) a recipe's pretrained backbone for the config's backbone and image size."""
    from .config import resolve
    from .data.prepare import load_bundle
    from .pretrain.store import is_built, pretrained_weights, weights_path
    from .registry import PRETRAINED
    cfg = resolve(config_layers(args))
    recipe, name = PRETRAINED.get(args.name), args.name.lower()
    size = cfg["image_size"] or load_bundle(cfg["dataset"], cfg["data_root"], None, cfg["data"]).image_size
    backbone = {k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")}
    cached = is_built(weights_path(name, backbone, size))
    path = pretrained_weights(name, backbone, size)
    print(f"{name} ({recipe.description}) for backbone '{backbone['name']}' at {size} px: "
          f"{path}{' (already cached)' if cached else ''}\n"
          f"use it with --set backbone.pretrained={name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslzoo", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("list", help="list algorithms, threshold policies, data sets and backbones")
    sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py")
    sp.set_defaults(func=_with_plugins(cmd_list))

    sp = sub.add_parser("train", help="train one run")
    add_train_flags(sp)
    sp.add_argument("--out", default=None, help="run folder (default runs/run)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    sp.add_argument("--nproc", type=int, default=0, help="train with N processes (DDP via torchrun)")
    sp.add_argument("--stop-after-epoch", type=int, default=None, metavar="N",
                    help="checkpoint and stop after epoch N; continue later with --resume (not part of the config)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar / per-epoch lines")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("data", help="show what a data set loader finds on disk")
    sp.add_argument("name")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="loader option")
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("cache", help="list the data caches, or prune what is no longer needed",
                        description="sslzoo cache [list]: every cached item (decoded images, generated "
                                    "synthfer data, pretrained backbones) with its size. "
                                    "sslzoo cache prune: remove by criterion.")
    sp.add_argument("action", nargs="?", default="list", choices=["list", "prune"])
    sp.add_argument("--superseded", action="store_true",
                    help="prune: decoded entries replaced by a newer one (same loader, root, size, crop and options)")
    sp.add_argument("--missing-root", action="store_true", help="prune: decoded entries whose data folder is gone")
    sp.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="prune: items older than this")
    sp.add_argument("--all", action="store_true", help="prune: everything (it is rebuilt on next use)")
    sp.add_argument("--dry-run", action="store_true", help="prune: only list what would be removed")
    sp.set_defaults(func=cmd_cache)

    sp = sub.add_parser("pretrain", help="build a pretrained backbone now (else built on first use)",
                        description="Train (or find in the cache) the backbone a recipe makes, for the "
                                    "backbone and image size the config gives (by default synthfer's "
                                    "smallcnn). Runs with --set backbone.pretrained=NAME use it.")
    sp.add_argument("name", help="a pretraining recipe (see `sslzoo list`)")
    add_train_flags(sp)
    sp.set_defaults(func=cmd_pretrain)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


def _with_plugins(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .registry import load_plugin
        for plugin in getattr(args, "plugin", []):
            load_plugin(plugin)
        return fn(args)
    return run


_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def _register_extra_commands() -> None:
    """Sub-commands that live in their own modules (bench, table, plot, throughput)."""
    import importlib
    if _EXTRA_COMMANDS:
        return
    for module in ("sslzoo.bench.commands", "sslzoo.perf"):
        try:
            _EXTRA_COMMANDS.append(importlib.import_module(module).register)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    _register_extra_commands()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv   # accepted after the sub-command too (sslzoo train ... --debug)
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = args.debug or debug
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except SSLZooError as exc:
        if args.debug:
            raise
        kind = "diverged" if isinstance(exc, DivergedError) else "error"
        print(f"sslzoo {args.command}: {kind}: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, DivergedError) else 2
    except KeyboardInterrupt as exc:
        print(f"sslzoo {args.command}: interrupted. {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
