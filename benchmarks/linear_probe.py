"""Linear probe: how much class information do a backbone's frozen features hold?

``python -m benchmarks.linear_probe --dataset synthfer --set backbone.pretrained=simclr_faces`` (a
recipe) or ``--weights pretrained/synthfer_faces/checkpoint.pt`` (a file).

Why: before fine-tuning from pretrained weights, check that they help. A logistic regression
on the frozen features, fit on *every* training label (an upper bound no SSL run sees), then
scored on the test split. Compared with randomly initialised features of the same backbone
(``--seeds``), it says whether pretraining kept or discarded what the task needs
(docs/pretraining.md has the numbers that motivated it).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from sslzoo.config import parse_set, resolve
from sslzoo.data.base import ImageSet
from sslzoo.data.pipeline import view_batches
from sslzoo.data.prepare import load_bundle
from sslzoo.data.views import AugmentConfig, Views, normalize_batch
from sslzoo.errors import SSLZooError
from sslzoo.evaluation import predict
from sslzoo.models import build_backbone
from sslzoo.registry import load_plugin


def features(model: torch.nn.Module, images: ImageSet, batch: int = 500) -> np.ndarray:
    """The backbone's feature (second output, eval mode, plain views) for every image."""
    views = Views(images.images.shape[1], AugmentConfig())
    cpu = torch.device("cpu")
    _, _, feats = predict(model, view_batches(images, views, "plain", 0, batch),
                          lambda x: normalize_batch(x, cpu), with_features=True)
    return feats.numpy()


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy (%) of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=3000).fit((train_x - mean) / std, train_y)
    return 100.0 * float(clf.score((test_x - mean) / std, test_y))


def run(cfg: dict[str, Any], weights: str | None, seeds: list[int]) -> list[tuple[str, int, float]]:
    """(features, seed, probe accuracy) rows: random init per seed, then the pretrained backbone if any.

    The pretrained backbone is ``weights`` or the config's ``backbone.weights`` / ``backbone.pretrained``.
    """
    bundle = load_bundle(cfg["dataset"], cfg["data_root"], cfg["image_size"], cfg["data"])
    pretrained = {**cfg["backbone"], **({"weights": weights} if weights else {})}
    random_init = {k: v for k, v in cfg["backbone"].items() if k not in ("weights", "pretrained")}
    has_pretrained = bool(pretrained.get("weights") or pretrained.get("pretrained"))
    rows = []
    for name, seed in [("random init", s) for s in seeds] + ([("pretrained", seeds[0])] if has_pretrained else []):
        torch.manual_seed(seed)
        options = pretrained if name == "pretrained" else random_init
        model = build_backbone(options, bundle.num_classes, bundle.image_size)
        acc = probe_accuracy(features(model, bundle.train), bundle.train.labels,
                             features(model, bundle.test), bundle.test.labels)
        rows.append((name, seed, acc))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthfer")
    p.add_argument("--weights", default=None, help="backbone.weights to probe (a checkpoint file)")
    p.add_argument("--seeds", default="0,1", help="random initialisations to compare with, e.g. 0,1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config keys, e.g. backbone.width=32 or data.n_train=1000")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a file that registers components, e.g. a pretraining recipe")
    args = p.parse_args(argv)
    try:
        for plugin in args.plugin:
            load_plugin(plugin)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        cfg = resolve([{"dataset": args.dataset}, parse_set(args.set)])
        for name, seed, acc in run(cfg, args.weights, seeds or [0]):
            backbone = cfg["backbone"]
            label = (f"random init (seed {seed})" if name == "random init"
                     else args.weights or backbone.get("weights") or f"pretrained={backbone.get('pretrained')}")
            print(f"{cfg['dataset']}: linear probe on {cfg['backbone']['name']} features, {label}: "
                  f"{acc:.2f} % test accuracy")
    except (SSLZooError, ValueError) as exc:
        print(f"linear_probe: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
