"""Guards against known pitfalls of SSL codebases (model selection, leakage, pairing)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sslzoo.data.prepare import assert_disjoint
from sslzoo.data.splits import make_split
from sslzoo.trainer import Trainer, train
from tests.conftest import tiny_config


def test_split_overlap_and_test_leakage_are_caught():
    labels = np.repeat(np.arange(3), 10)
    split = make_split(labels, 6, seed=0, num_classes=3, val_per_class=1)
    assert_disjoint(split, 30, [f"t{i}" for i in range(30)], [f"x{i}" for i in range(5)])
    with pytest.raises(AssertionError, match="both the training and the test"):
        assert_disjoint(split, 30, [f"t{i}" for i in range(30)], ["x0", "t3"])
    split.unlabeled = np.append(split.unlabeled, split.labeled[0])
    with pytest.raises(AssertionError, match="not disjoint"):
        assert_disjoint(split, 30)


def test_adacm_margin_sees_only_the_labeled_training_set(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, algo="adacm", val_per_class=2))
    trainer.setup()
    ctx = trainer.epoch_context(1)
    probs, targets = ctx.labeled_predictions("weak")
    data = trainer.data
    assert len(targets) == len(data.labeled) == 35
    assert targets.tolist() == data.labeled.labels.tolist() == ctx.labeled_targets.tolist()
    labeled_ids = set(data.labeled.ids)
    assert not labeled_ids & set(data.unlabeled.ids)
    assert not labeled_ids & set(data.val.ids) and not labeled_ids & set(data.test.ids)


def test_same_seed_same_split_for_every_algorithm(tmp_path):
    splits = []
    for algo in ("supervised", "fixmatch", "adacm"):
        cfg = tiny_config(tmp_path / algo, algo=algo, iters_per_epoch=1)
        train(cfg)
        splits.append(json.loads((tmp_path / algo / "run" / "split.json").read_text()))
    assert splits[0]["labeled"] == splits[1]["labeled"] == splits[2]["labeled"]
    assert splits[0]["unlabeled"] == splits[2]["unlabeled"]


def test_metrics_report_final_best_test_and_val_selected(tmp_path):
    metrics = train(tiny_config(tmp_path, algo="fixmatch", epochs=2, iters_per_epoch=2, val_per_class=2))
    accs = [e["test_acc"] for e in metrics["history"]]
    vals = [e["val_acc"] for e in metrics["history"]]
    assert metrics["final_acc"] == accs[-1]
    assert metrics["best_test_acc"] == max(accs)
    assert metrics["val_selected_acc"] == accs[int(np.argmax(vals))]
