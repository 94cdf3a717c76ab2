"""sslzoo eval: a finished run's EMA model on its test set, its other splits, and another data set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sslzoo import cli
from sslzoo.bench.run_eval import evaluate_run, format_report
from sslzoo.errors import SSLZooError
from sslzoo.registry import DATASETS
from sslzoo.trainer import train
from tests.fixtures_fer import make_ckplus


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run (2 epochs) and its metrics.json."""
    import torch

    from tests.conftest import tiny_config
    tmp = tmp_path_factory.mktemp("eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(tmp, algo="fixmatch", epochs=2)
        metrics = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return cfg["out"], metrics


def test_eval_on_the_runs_test_set_reproduces_its_final_metrics(finished):
    run, metrics = finished
    result = evaluate_run(run)
    last = metrics["history"][-1]
    assert result["acc"] == pytest.approx(metrics["final_acc"], abs=1e-9)
    assert result["confusion"] == last["confusion"] and result["per_class_acc"] == last["test_per_class_acc"]
    assert result["images"] == 140 and result["evaluated_on"] == "synthfer" and result["algo"] == "fixmatch"
    report = format_report(result)
    assert f"accuracy {metrics['final_acc']:.2f} %" in report and "happiness" in report


def test_eval_on_the_runs_other_splits(finished):
    run, _ = finished
    labeled = evaluate_run(run, split="labeled")
    unlabeled = evaluate_run(run, split="unlabeled")
    assert labeled["images"] == 35 and unlabeled["images"] == 420 - 35
    assert int(np.sum(unlabeled["confusion"])) == 385
    with pytest.raises(SSLZooError, match="no validation split"):
        evaluate_run(run, split="val")
    with pytest.raises(SSLZooError, match="--split must be one of"):
        evaluate_run(run, split="train")


def test_eval_on_another_data_set_uses_the_shared_label_space(finished, tmp_path):
    run, _ = finished
    make_ckplus(tmp_path / "ck")
    result = evaluate_run(run, test_dataset="ckplus", test_data_root=str(tmp_path / "ck"))
    ck = DATASETS.get("ckplus")(root=str(tmp_path / "ck"), image_size=32).test.labels
    assert result["evaluated_on"] == "ckplus" and result["classes"][-1] == "neutral"
    assert result["images"] == len(ck) == int(np.sum(result["confusion"])) > 0   # every CK+ test frame
    with pytest.raises(SSLZooError, match="cannot be combined with --split labeled"):
        evaluate_run(run, split="labeled", test_dataset="ckplus", test_data_root=str(tmp_path / "ck"))
    with pytest.raises(SSLZooError, match="does not exist"):
        evaluate_run(run, test_dataset="ckplus", test_data_root=str(tmp_path / "missing"))


def test_eval_command_prints_text_or_json_and_explains_bad_folders(finished, tmp_path, capsys):
    run, metrics = finished
    assert cli.main(["eval", run]) == 0
    assert f"accuracy {metrics['final_acc']:.2f} %" in capsys.readouterr().out
    assert cli.main(["eval", run, run, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and results[0]["acc"] == pytest.approx(metrics["final_acc"])
    assert cli.main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
