"""benchmarks/fer_ssl.yaml (Roy & Etemad's SSL-for-FER study): it parses, expands and resolves (no training)."""
from __future__ import annotations

import numpy as np
import pytest

from sslzoo.bench import grid as G
from sslzoo.bench.commands import build_cells
from sslzoo.cli import _register_extra_commands, build_parser
from sslzoo.data.splits import per_class_counts
from sslzoo.errors import SSLZooError

METHODS = [("Supervised", "supervised"), ("Pi-Model", "pimodel"), ("Pseudo-Label", "pseudolabel"),
           ("Mean Teacher", "meanteacher"), ("VAT", "vat"), ("MixMatch", "mixmatch"), ("ReMixMatch", "remixmatch"),
           ("UDA", "uda"), ("FixMatch", "fixmatch"), ("Ada-CM", "adacm")]
PER_CLASS = (10, 25, 100, 250)


def _cells(tmp_path, *extra: str):
    _register_extra_commands()
    args = build_parser().parse_args(["bench", "--suite", "fer_ssl", "--out", str(tmp_path / "b"), *extra])
    return build_cells(args)[3]


@pytest.fixture
def data_roots(monkeypatch, tmp_path):
    roots = {var: str(tmp_path / var.lower()) for var in ("FER2013_ROOT", "RAFDB_ROOT", "AFFECTNET_ROOT")}
    for var, path in roots.items():
        monkeypatch.setenv(var, path)
    return roots


def test_layout_methods_settings_seeds():
    suite = G.load_suite("fer_ssl")
    assert [(m.name, m.algo) for m in suite.methods] == METHODS
    assert [(s.dataset, s.labels) for s in suite.settings] == [
        (d, 7 * k) for d in ("fer2013", "rafdb", "affectnet") for k in PER_CLASS]
    assert suite.seeds == [0, 1, 2] and suite.metric == "best" and suite.default_baseline() == "Supervised"
    assert len(G.expand(suite)) == len(METHODS) * 12 * 3


@pytest.mark.parametrize("per_class", PER_CLASS)
def test_totals_are_per_class_counts_under_the_balanced_split(per_class):
    """The grid takes totals: labels = per class x 7 gives exactly `per_class` labels in every class."""
    suite = G.load_suite("fer_ssl")
    labels = np.repeat(np.arange(7), 300)
    for setting in (s for s in suite.settings if s.labels == 7 * per_class):
        assert "split" not in setting.overrides          # the default split: balanced
        assert per_class_counts(labels, setting.labels, 7, "balanced").tolist() == [per_class] * 7


def test_every_cell_resolves_with_the_studys_protocol(tmp_path, data_roots):
    cells = _cells(tmp_path, "--seeds", "1")
    assert len(cells) == len(METHODS) * 12
    for cell in cells:
        cfg = cell.cfg
        assert cfg["epochs"] * cfg["iters_per_epoch"] == 2 ** 20 and cfg["batch_size"] == 64
        assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["lr"] == 0.03 and cfg["optim"]["nesterov"]
        assert cfg["schedule"]["name"] == "cosine" and cfg["ema"] == {"decay": 0.999, "warmup": False, "buffers": "copy"}
        assert cfg["mu"] == (7 if cfg["algo"] in ("fixmatch", "uda") else 1)
        assert cfg["split"] == "balanced" and cfg["data_root"] == data_roots[
            {"fer2013": "FER2013_ROOT", "rafdb": "RAFDB_ROOT", "affectnet": "AFFECTNET_ROOT"}[cfg["dataset"]]]
        head = {"dropout": 0.0, "normalize_feature": False}
        if cfg["dataset"] == "fer2013":
            assert cfg["image_size"] == 48 and cfg["backbone"] == {"name": "wrn28_2", **head}
        else:
            assert cfg["image_size"] == 224 and cfg["backbone"] == {"name": "resnet18", **head}
        assert (cfg["data"].get("num_classes") == 7) == (cfg["dataset"] == "affectnet")
        assert cfg["optim"]["weight_decay"] == {"supervised": 1e-3, "fixmatch": 3e-4}.get(cfg["algo"], 5e-4)
    by_algo = {c.cfg["algo"]: c.cfg for c in cells}
    assert by_algo["vat"]["vat"]["lambda_u"] == 0.3
    assert by_algo["mixmatch"]["mixmatch"] == {**by_algo["mixmatch"]["mixmatch"], "mixup_alpha": 0.5,
                                               "unsup_warmup": 0.4, "mixup_per_sample": False}
    assert by_algo["remixmatch"]["remixmatch"]["da_window"] == 128       # not the CPU config's 32
    assert by_algo["pimodel"]["pimodel"]["rampup"] == by_algo["meanteacher"]["meanteacher"]["rampup"] == "linear"
    assert cells[0].rel_dir == "runs/fer2013-70/Supervised/seed0"


def test_unset_data_root_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("FER2013_ROOT", raising=False)
    with pytest.raises(SSLZooError, match="FER2013_ROOT"):
        _cells(tmp_path, "--seeds", "1", "--dataset", "fer2013", "--algos", "supervised")
