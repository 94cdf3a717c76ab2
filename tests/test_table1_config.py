"""The paper's Table 1 as configuration: every row resolves, builds, and (on synthfer) trains."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from sslzoo.config import builtin_config_dir, deep_merge, load_yaml, resolve
from sslzoo.policies.adacm_margin import AdaptiveMargin
from sslzoo.policies.fixed import FixedThreshold
from sslzoo.policies.flexmatch import FlexMatchThreshold
from sslzoo.trainer import build_algorithm

PAPER = builtin_config_dir() / "paper"
ROWS = ["Baseline", "FT = 0.5", "FT = 0.8", "FT = 0.95", "FlexMatch", "Ada-CM (L_u)", "Ada-CM (L_c)",
        "Ada-CM (L_u + L_c)"]


def _cells(suite: dict) -> list[tuple[str, dict]]:
    """(row name, config layer) for every setting x method: defaults <- setting <- method, no name/seeds."""
    defaults = {k: v for k, v in suite["defaults"].items() if k != "seeds"}
    out = []
    for setting in suite["settings"]:
        for method in suite["methods"]:
            layer = deep_merge(deep_merge(defaults, setting), method)
            out.append((layer.pop("name"), layer))
    return out


@pytest.mark.parametrize("file", ["table1.yaml", "table1_synthfer.yaml"])
def test_every_row_resolves_and_builds_its_algorithm_and_policy(file, tmp_path):
    suite = load_yaml(PAPER / file)
    assert [m["name"] for m in suite["methods"]] == ROWS
    cells = _cells(suite)
    assert len(cells) == 8 * len(suite["settings"])
    for name, layer in cells:
        cfg = resolve([dict(layer, out=str(tmp_path / "x"))])
        algo = build_algorithm(cfg, num_classes=7)
        if name == "Baseline":
            assert cfg["algo"] == "supervised" and algo.policy is None
            continue
        assert cfg["algo"] == "adacm" and algo.lambda_sup == 0.5
        expected_policy = {"FT = 0.5": (FixedThreshold, 0.5), "FT = 0.8": (FixedThreshold, 0.8),
                           "FT = 0.95": (FixedThreshold, 0.95), "FlexMatch": (FlexMatchThreshold, 0.95)}
        cls, tau = expected_policy.get(name, (AdaptiveMargin, None))
        assert type(algo.policy) is cls, name
        if tau is not None:
            assert algo.policy.threshold == tau
        lambdas = {"Ada-CM (L_c)": (0.0, 0.1), "Ada-CM (L_u + L_c)": (1.0, 0.1)}.get(name, (1.0, 0.0))
        assert (algo.lambda_u, algo.lambda_c) == lambdas, name


def test_paper_suite_settings():
    suite = load_yaml(PAPER / "table1.yaml")
    assert suite["defaults"]["seeds"] == [0, 1, 2, 3, 4]
    cfgs = {f"{lay['dataset']}-{lay['labels']}": resolve([lay]) for _, lay in _cells(suite)}
    assert set(cfgs) == {"rafdb-100", "sfew-400"}
    assert cfgs["sfew-400"]["unlabeled_extra"] == "rafdb"
    for cfg in cfgs.values():
        assert cfg["backbone"]["name"] == "resnet18" and cfg["epochs"] == 20


def test_suite_files_parse_with_the_bench():
    grid = pytest.importorskip("sslzoo.bench.grid")
    for file in ("table1.yaml", "table1_synthfer.yaml"):
        suite = grid.load_suite(PAPER / file)
        assert [m.name for m in suite.methods] == ROWS
    assert grid.load_suite("paper/table1").seeds == [0, 1, 2, 3, 4]


def test_synthfer_suite_first_two_rows_train_one_tiny_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    suite = load_yaml(PAPER / "table1_synthfer.yaml")
    assert suite["settings"] == [{"dataset": "synthfer", "labels": 70}] and len(suite["defaults"]["seeds"]) == 3
    assert suite["defaults"]["backbone"]["pretrained"] == "simclr_faces"     # the main command's backbone
    for i, (name, layer) in enumerate(_cells(suite)[:2]):
        shrink = {k: v for k, v in tiny(tmp_path).items() if k in ("data", "labels", "epochs", "iters_per_epoch",
                                                                   "batch_size", "num_workers", "tensorboard",
                                                                   "progress", "backbone")}
        shrink["backbone"] = {**shrink["backbone"], "pretrained": None}     # minutes of pretraining: not here
        cfg = resolve([deep_merge(copy.deepcopy(layer), shrink), {"out": str(tmp_path / f"row{i}")}])
        metrics = train(cfg)
        assert metrics["status"] == "finished", name
        assert Path(tmp_path / f"row{i}" / "metrics.json").is_file()
        assert metrics["algorithm"] == layer["algo"]
    assert metrics["policy"] == "fixed:0.5"
