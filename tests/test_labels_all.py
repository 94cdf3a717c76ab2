"""``labels: all`` (every known label; the paper's "Fully Supervised" row) and the suite keys that
confine a method to some settings (``methods:`` on a setting, ``settings:`` on a method)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sslzoo.bench import grid as G
from sslzoo.bench import tables as T
from sslzoo.bench.commands import build_cells
from sslzoo.bench.results import make_row
from sslzoo.cli import _register_extra_commands, build_parser, main
from sslzoo.config import resolve
from sslzoo.data.splits import make_split
from sslzoo.errors import SSLZooError

# tests/conftest.py TINY as command-line flags (a run takes seconds); no --labels: each test gives its own
TINY_FLAGS = ["--dataset", "synthfer", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "8",
              "--num-workers", "0", "--no-progress", "--set", "data.n_train=420", "--set", "data.n_test=140",
              "--set", "tensorboard=false", "--set", "backbone.width=8"]

# classes 0, 1, 2 with 5, 4 and 3 images, and 2 images without ground truth (-1)
LABELS = np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0, 1, -1, 0])


# ----------------------------------------------------------------------------- the split

@pytest.mark.parametrize("protocol", ["balanced", "stratified"])
def test_all_labels_every_image_with_a_known_label(protocol):
    split = make_split(LABELS, "all", seed=0, num_classes=3, protocol=protocol)
    assert split.labeled.tolist() == np.flatnonzero(LABELS >= 0).tolist()
    assert split.unlabeled.tolist() == [3, 12]            # only the images without ground truth
    assert len(split.val) == 0


def test_all_labels_holds_out_the_validation_split_first():
    split = make_split(LABELS, "all", seed=0, num_classes=3, val_per_class=2)
    assert np.bincount(LABELS[split.val], minlength=3).tolist() == [2, 2, 2]
    assert np.bincount(LABELS[split.labeled], minlength=3).tolist() == [3, 2, 1]   # the rest of each class
    assert split.unlabeled.tolist() == [3, 12]
    assert not set(split.val) & set(split.labeled)
    assert split.val.tolist() == make_split(LABELS, "all", seed=0, num_classes=3, val_per_class=2).val.tolist()


def test_all_labels_with_the_adacm_rafdb_split_is_an_error():
    with pytest.raises(SSLZooError) as err:
        make_split(np.repeat(np.arange(7), 700), "all", seed=0, num_classes=7, protocol="adacm_rafdb")
    message = str(err.value)
    assert message.startswith("--split adacm_rafdb does not apply to --labels all") and "--split balanced" in message


def test_all_labels_with_more_validation_images_than_a_class_has_is_an_error():
    with pytest.raises(SSLZooError, match=r"Class 'c' has 3 training images.*4 validation images"):
        make_split(LABELS, "all", seed=0, num_classes=3, val_per_class=4, class_names=("a", "b", "c"))


# ----------------------------------------------------------------------------- config and command line

def test_the_config_takes_a_count_or_the_word_all():
    assert resolve([{"labels": "all"}])["labels"] == "all"
    assert resolve([{"labels": 35}])["labels"] == 35
    for bad, what in (("al", "a whole number >= 1 or all; got 'al' (did you mean 'all'?)"), (0, ">= 1; got 0"),
                      (2.5, "a whole number >= 1 or all; got 2.5"), (True, "a whole number >= 1 or all; got True")):
        with pytest.raises(SSLZooError) as err:
            resolve([{"labels": bad}])
        assert str(err.value) == f"Config key 'labels' must be {what}."


def test_train_supervised_with_all_labels_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--algo", "supervised", *TINY_FLAGS, "--labels", "all", "--out", str(run)]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["labels"] == "all"
    assert len(split["labeled"]) == 420 and split["unlabeled"] == [] and split["val"] == []
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def test_an_ssl_algorithm_with_all_labels_stops_with_a_clear_message(tmp_path, capsys):
    code = main(["train", "--algo", "fixmatch", *TINY_FLAGS, "--labels", "all", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "learns from unlabeled images, but none are left" in err and "--algo supervised" in err
    assert "Traceback" not in err


def test_a_bad_labels_flag_is_a_schema_error(tmp_path, capsys):
    code = main(["train", "--algo", "supervised", *TINY_FLAGS, "--labels", "many", "--out", str(tmp_path / "r")])
    assert code == 2
    assert capsys.readouterr().err == ("sslzoo train: error: Config key 'labels' must be a whole number >= 1 "
                                       "or all; got 'many'.\n")


def test_bench_labels_list_takes_all():
    assert G.parse_labels("100,all") == [100, "all"]
    with pytest.raises(SSLZooError, match="'all' is given twice"):
        G.parse_labels("all,100,all")
    with pytest.raises(SSLZooError, match=r"'many' is neither a whole number nor 'all'"):
        G.parse_labels("70,many")


# ----------------------------------------------------------------------------- the bench

def _cells(argv: list[str]):
    _register_extra_commands()
    return build_cells(build_parser().parse_args(["bench", *argv]))


def test_a_grid_with_all_labels_names_its_setting_and_column(tmp_path):
    _, _, _, cells = _cells(["--algos", "supervised", "--labels", "35,all", "--seeds", "1",
                             "--out", str(tmp_path / "b"), *TINY_FLAGS])
    assert [c.rel_dir for c in cells] == ["runs/synthfer-35/supervised/seed0", "runs/synthfer-all/supervised/seed0"]
    assert [c.cfg["labels"] for c in cells] == [35, "all"]
    rows = [make_row(method="supervised", setting=c.setting_id, cfg=c.cfg, rel_dir=c.rel_dir, config_hash="h",
                     metrics={"final_acc": acc}, status="finished") for c, acc in zip(cells, (40.0, 60.0))]
    assert rows[1]["labels"] == "all"
    table = T.render_table(T.summarize(pd.DataFrame(rows)), "md")
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert header.index("synthfer (35)") < header.index("synthfer (all)")   # "all" after every count


RESTRICTED = """\
name: restricted
defaults: {seeds: [0, 1], epochs: 1, iters_per_epoch: 2, batch_size: 8, num_workers: 0, tensorboard: false,
           data: {n_train: 420, n_test: 140}, backbone: {name: smallcnn, width: 8}}
settings:
  - {dataset: synthfer, labels: 35}
  - {dataset: synthfer, labels: all, methods: [Full]}
methods:
  - {name: Baseline, algo: supervised}
  - {name: FixMatch, algo: fixmatch}
  - {name: Full, algo: supervised, settings: [synthfer-all]}
"""


def test_suite_keys_confine_methods_and_settings(tmp_path):
    path = tmp_path / "restricted.yaml"
    path.write_text(RESTRICTED)
    suite = G.load_suite(path)
    assert [(c.method, G.declared_id(c.setting, suite.defaults), c.seed) for c in G.expand(suite)] == [
        ("Baseline", "synthfer-35", 0), ("FixMatch", "synthfer-35", 0), ("Full", "synthfer-all", 0),
        ("Baseline", "synthfer-35", 1), ("FixMatch", "synthfer-35", 1), ("Full", "synthfer-all", 1)]
    _, _, _, cells = _cells(["--suite", str(path), "--out", str(tmp_path / "b"), "--seeds", "1"])
    assert [c.rel_dir for c in cells] == ["runs/synthfer-35/Baseline/seed0", "runs/synthfer-35/FixMatch/seed0",
                                          "runs/synthfer-all/Full/seed0"]
    assert cells[2].cfg["labels"] == "all" and cells[2].cfg["algo"] == "supervised"
    # a setting's name is a reference too, as written or as its run-folder id
    named = RESTRICTED.replace("labels: all,", "labels: all, name: Every Label,").replace(
        "settings: [synthfer-all]", "settings: [Every Label]")
    path.write_text(named)
    assert [(c.method, c.setting.name) for c in G.expand(G.load_suite(path))][:3] == [
        ("Baseline", None), ("FixMatch", None), ("Full", "Every_Label")]
    # the command-line filters can leave nothing: said, not an empty bench
    path.write_text(RESTRICTED)
    with pytest.raises(SSLZooError, match=r"suite 'restricted'.*no run.*FixMatch.*synthfer-all"):
        _cells(["--suite", str(path), "--out", str(tmp_path / "b"), "--algos", "fixmatch", "--labels", "all"])


@pytest.mark.parametrize("old, new, message", [
    ("methods: [Full]", "methods: [Ful]",
     ("settings[1].methods: 'Ful' is not a method of suite 'restricted' (did you mean 'Full'?); "
      "its methods: Baseline, FixMatch, Full.")),
    ("settings: [synthfer-all]", "settings: [synthfer-al]",
     ("methods[2].settings: 'synthfer-al' is not a setting of suite 'restricted' (did you mean "
      "'synthfer-all'?); its settings: synthfer-35, synthfer-all.")),
    ("methods: [Full]", "methods: Full", "settings[1].methods must be a non-empty list of method names"),
    ("settings: [synthfer-all]", "settings: []", "methods[2].settings must be a non-empty list of setting"),
])
def test_bad_suite_restrictions_are_clear_errors(tmp_path, capsys, old, new, message):
    path = tmp_path / "restricted.yaml"
    path.write_text(RESTRICTED.replace(old, new))
    with pytest.raises(SSLZooError) as err:
        G.load_suite(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert main(["bench", "--suite", str(path), "--out", str(tmp_path / "b"), "--dry-run"]) == 2
    err_text = capsys.readouterr().err
    assert message in err_text and "Traceback" not in err_text and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name, datasets, row", [
    ("paper/table2", ["rafdb", "sfew", "affectnet"], "Fully Supervised"),
    ("paper/table4", ["rafdb"], "Fully Supervised (ResNet-18)"),
])
def test_paper_suites_have_one_fully_supervised_run_per_data_set_and_seed(name, datasets, row):
    suite = G.load_suite(name)
    cells = G.expand(suite)

    def labels(cell: G.Cell) -> object:
        return cell.setting.labels

    full = [c for c in cells if c.method == row]
    assert sorted((c.setting.dataset, c.seed) for c in full) == sorted(
        (d, s) for d in datasets for s in suite.seeds)
    assert all(labels(c) == "all" and [lay["algo"] for lay in c.layers if "algo" in lay] == ["supervised"]
               for c in full)
    assert all(labels(c) != "all" for c in cells if c.method != row)     # no SSL method without unlabeled data
    assert all(c.setting.overrides.get("split", suite.defaults.get("split")) != "adacm_rafdb" for c in full)
    partial = [c for c in cells if c.method != row]
    assert len(partial) == (len(suite.methods) - 1) * (len(suite.settings) - len(datasets)) * len(suite.seeds)
