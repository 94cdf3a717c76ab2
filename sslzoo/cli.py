"""Command line: sslzoo list | train | config | predict | pretrain | data | cache | bench | table | plot | calibration | eval | throughput.

A thin layer over the Python API (sslzoo.api, docs/api.md): each command parses its flags into
config layers and calls the same function a Python user would. User errors (SSLZooError) print
as one paragraph and exit 2; --debug shows the traceback.
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

from .errors import SSLZooError, run_command

from .flags import TRAIN_FLAGS, add_train_flags, config_layers  # noqa: F401 - re-exported


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import ALGORITHMS, BACKBONES, DATASETS, POLICIES, PRETRAINED, describe   # what sslzoo.list_* read
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
    from .api import fit
    if args.nproc and args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    result = fit(config=config_layers(args), resume=args.resume, overwrite=args.overwrite,
                 stop_after_epoch=args.stop_after_epoch)
    cfg, metrics = result.config, result.metrics
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


def cmd_config(args: argparse.Namespace) -> int:
    """Resolve and check a config as `sslzoo train` would, and print it (nothing trains); or the schema."""
    from .config import resolve, schema_table
    if args.schema:
        print(schema_table())
        return 0
    import yaml
    print(yaml.safe_dump(resolve(config_layers(args)), sort_keys=False), end="")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Build (or find) a recipe's pretrained backbone for the config's backbone and image size."""
    from .config import resolve
    from .data.prepare import load_bundle
    from .device import device_type
    from .pretrain.store import is_built, pretrained_weights, reference_note, weights_path
    from .registry import PRETRAINED
    cfg = resolve(config_layers(args))
    recipe, name = PRETRAINED.get(args.name), args.name.lower()
    size = cfg["image_size"] or load_bundle(cfg["dataset"], cfg["data_root"], None, cfg["data"]).image_size
    backbone = {k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")}
    kind = device_type(cfg["device"])
    cached = is_built(weights_path(name, backbone, size, kind))
    path = pretrained_weights(name, backbone, size, kind)
    print(f"{name} ({recipe.description}) for backbone '{backbone['name']}' at {size} px: "
          f"{path}{' (already cached)' if cached else ''}\n"
          f"use it with --set backbone.pretrained={name}")
    note = reference_note(name, path)
    if note:
        print(note)
    return 0


PREDICT_HELP = """\
Predict the expression of face images with a finished run's model.

  sslzoo predict runs/demo faces/                    # every image in a folder (and its subfolders)
  sslzoo predict runs/demo 'faces/*.jpg' a.png --topk 3 --csv predictions.csv
  sslzoo predict runs/demo faces/ --which val        # the model of the best validation epoch

Images are expected to be aligned face crops, as in the data sets: each is decoded and resized
to the run's image size as its training images were (no face detection, no face-box crop), then
normalised and evaluated as the run evaluated its test set. Prints a table (path, predicted
class, confidence; --topk K adds the K most probable classes); --csv / --json write the results
for machine use. A file that is not a readable image is reported on stderr and skipped.
Exit code: 0 all images predicted, 1 some inputs skipped, 2 usage error, not a run folder,
or no readable image. Python: sslzoo.load_run(RUN_DIR).predict(images)."""


def cmd_predict(args: argparse.Namespace) -> int:
    from .registry import load_plugin
    from .runs import load_run
    for plugin in args.plugin:
        load_plugin(plugin)
    if args.topk < 1:
        raise SSLZooError(f"--topk must be at least 1; got {args.topk}.")
    run = load_run(args.run_dir, args.device, which=args.which)
    result = run.predict(args.images)
    for path, why in result.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(result.format_table(args.topk))
    info = {"run": str(args.run_dir), "which": run.which, "model_epoch": run.epoch}
    if args.csv:
        result.to_csv(args.csv)
    if args.json:
        result.to_json(args.json, args.topk, **info)
    if result.skipped:
        print(f"{len(result)} image(s) predicted, {len(result.skipped)} input(s) skipped", file=sys.stderr)
    return 1 if result.skipped else 0


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

    sp = sub.add_parser("config", help="check a config and print it resolved, or list every key (--schema)",
                        description="sslzoo config [training flags]: resolve and check the config `sslzoo train` "
                                    "would run and print it as YAML; nothing trains. sslzoo config --schema: every "
                                    "key, its default and what it accepts (docs/config.md).")
    add_train_flags(sp)
    sp.add_argument("--out", default=None, help="run folder (default runs/run)")
    sp.add_argument("--schema", action="store_true", help="print every config key, its default and what it accepts")
    sp.set_defaults(func=_with_plugins(cmd_config))

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

    sp = sub.add_parser("predict", help="predict face images (files, folders, globs) with a finished run's model",
                        description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (config.yaml + checkpoint.pt)")
    sp.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    sp.add_argument("--which", default="final", choices=["final", "val", "best"],
                    help="which saved model: final (checkpoint.pt), val (best_val.pt) or best (best_test.pt)")
    sp.add_argument("--topk", type=int, default=1, metavar="K", help="also show the K most probable classes")
    sp.add_argument("--csv", default=None, metavar="FILE", help="write path, class, confidence and every "
                                                                 "class's probability as CSV")
    sp.add_argument("--json", default=None, metavar="FILE", help="write the predictions (with top-K) and the "
                                                                  "skipped inputs as JSON")
    sp.add_argument("--device", default=None, help="where to run the model (default: the run's own setting)")
    sp.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                    help="a plugin that registers the run's backbone")
    sp.set_defaults(func=cmd_predict)

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
    """Sub-commands that live in their own modules (bench, table, plot, ..., throughput)."""
    from .bench import commands
    from .benchmarks import throughput
    if not _EXTRA_COMMANDS:
        _EXTRA_COMMANDS.extend([commands.register, throughput.register])


def main(argv: list[str] | None = None) -> int:
    _register_extra_commands()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv   # accepted after the sub-command too (sslzoo train ... --debug)
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = args.debug or debug
    args.argv = argv
    return run_command(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
