"""The config schema: every key has a type and a range or a set of words, and a bad value stops
`sslzoo train`, `sslzoo.fit` and every cell of `sslzoo bench` before anything trains."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import sslzoo
from sslzoo import cli
from sslzoo import config as C
from sslzoo.config import DEFAULTS, parse_set, resolve, validate
from sslzoo.errors import SSLZooError
from sslzoo.registry import ALGORITHMS, register_algorithm

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--dataset", "synthfer", "--labels", "35", "--epochs", "1", "--iters-per-epoch", "2",
              "--batch-size", "8", "--num-workers", "0", "--no-progress", "--set", "data.n_train=420",
              "--set", "data.n_test=140", "--set", "tensorboard=false", "--set", "backbone.width=8"]

# (command-line arguments, the same as sslzoo.fit keywords, the one-line message)
EXAMPLES: list[tuple[list[str], dict[str, Any], str]] = [
    (["--epochs", "-3"], {"epochs": -3}, "Config key 'epochs' must be >= 1; got -3."),
    (["--set", "mu=0"], {"mu": 0}, "Config key 'mu' must be >= 1; got 0."),
    (["--set", "optim.lr=-1"], {"optim": {"lr": -1}}, "Config key 'optim.lr' must be > 0; got -1."),
    (["--set", "image_size=abc"], {"image_size": "abc"},
     "Config key 'image_size' must be null or a whole number in [8, 1024]; got 'abc'."),
    (["--set", "schedule.name=cosin"], {"schedule": {"name": "cosin"}},
     "Config key 'schedule.name' must be one of constant, cosine; got 'cosin' (did you mean 'cosine'?)."),
    (["--set", "amp=fp8"], {"amp": "fp8"}, "Config key 'amp' must be one of auto, bf16, fp16, off; got 'fp8'."),
    (["--set", "augment.randaugment=rand"], {"augment": {"randaugment": "rand"}},
     "Config key 'augment.randaugment' must be one of fixmatch, torchvision, none; got 'rand'."),
]


def _keys(tree: Any) -> Any:
    """The key structure of DEFAULTS or of the schema: {key: sub-structure or None}."""
    if isinstance(tree, C.Section):
        return {k: _keys(v) for k, v in tree.keys.items()}
    if isinstance(tree, dict):
        return {k: _keys(v) for k, v in tree.items()}
    return None


def test_every_default_key_has_a_rule_and_every_default_obeys_it():
    """A key added to DEFAULTS without a rule (or a rule left after its key went) fails here."""
    assert _keys(C._base_schema()) == _keys(DEFAULTS)
    C._check(C.schema(), C.full_defaults(), "")   # the algorithms' and policies' defaults too


def test_builtin_configs_and_suites_obey_the_schema(monkeypatch):
    from sslzoo.bench import grid as G
    for var in ("AFFECTNET_ROOT", "CKPLUS_ROOT", "FER2013_ROOT", "RAFDB_ROOT", "SFEW_ROOT"):
        monkeypatch.setenv(var, "/data")
    for path in sorted((C.builtin_config_dir() / "datasets").glob("*.yaml")):
        resolve([{"dataset": path.stem}])
    for path in sorted((C.builtin_config_dir() / "algorithms").glob("*.yaml")):
        resolve([{"algo": path.stem}])
    suites = {str(p.relative_to(d).with_suffix("")) for d in G.builtin_suite_dirs() for p in d.rglob("*.yaml")
              if G._looks_like_suite(p)}
    assert {"default", "paper/table2"} <= suites
    for name in sorted(suites):
        G.resolve_cells(G.expand(G.load_suite(name)), [], "/tmp/bench")


@pytest.mark.parametrize("item, message", [
    ("optim.clip_grad=0", "Config key 'optim.clip_grad' must be > 0; got 0."),
    ("optim.weight_decay=-0.1", "Config key 'optim.weight_decay' must be >= 0; got -0.1."),
    ("optim.name=adan", "Config key 'optim.name' must be one of adam, adamw, sgd; got 'adan' (did you mean 'adam'?)."),
    ("ema.decay=1", "Config key 'ema.decay' must be in [0, 1); got 1."),
    ("ema.buffers=mean", "Config key 'ema.buffers' must be one of copy, average; got 'mean'."),
    ("augment.crop_prob=1.5", "Config key 'augment.crop_prob' must be in [0, 1]; got 1.5."),
    ("augment.crop_padding=1", "Config key 'augment.crop_padding' must be in [0, 1); got 1."),
    ("augment.crop_padding_mode=edge", ("Config key 'augment.crop_padding_mode' must be one of reflect, zeros; "
                                        "got 'edge'.")),
    ("augment.randaugment_m=31", "Config key 'augment.randaugment_m' must be in [0, 30]; got 31."),
    ("augment.device=gpu", "Config key 'augment.device' must be one of auto, loader, train; got 'gpu'."),
    ("image_size=4", "Config key 'image_size' must be in [8, 1024]; got 4."),
    ("image_size=32.5", "Config key 'image_size' must be null or a whole number in [8, 1024]; got 32.5."),
    ("num_workers=-2", "Config key 'num_workers' must be >= -1; got -2."),
    ("log_interval=0", "Config key 'log_interval' must be >= 1; got 0."),
    ("val_per_class=-1", "Config key 'val_per_class' must be >= 0; got -1."),
    ("split=balancd", ("Config key 'split' must be one of balanced, stratified, adacm_rafdb; got 'balancd' "
                       "(did you mean 'balanced'?).")),
    ("device=gpu", "Config key 'device' must be one of auto, cpu, cuda, cuda:N; got 'gpu'."),
    ("channels_last=maybe", "Config key 'channels_last' must be one of auto, true, false; got 'maybe'."),
    ("forward_mode=joint", "Config key 'forward_mode' must be one of concat, separate; got 'joint'."),
    ("loggers=[csvv]", ("Config key 'loggers' must be a list of any of tensorboard, csv, wandb; got ['csvv'] "
                        "(did you mean 'csv'?).")),
    ("loggers=csv", ("Config key 'loggers' must be a list of any of tensorboard, csv, wandb; got 'csv' "
                     "(a list: [csv]).")),
    ("data_root=3", "Config key 'data_root' must be null or a path; got 3."),
    ("epochs=", "Config key 'epochs' must be a whole number >= 1; got null."),
    ("optim.lr=.nan", "Config key 'optim.lr' must be a number > 0; got nan."),
    ("compile=yes please", "Config key 'compile' must be true or false; got 'yes please'."),
    ("fixmatch.lambda_u=null", "Config key 'fixmatch.lambda_u' must be a number; got null."),
    ("policies.adacm.floor=high", "Config key 'policies.adacm.floor' must be null or a number; got 'high'."),
])
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(item, message):
    with pytest.raises(SSLZooError) as err:
        resolve([parse_set([item])])
    assert str(err.value) == message


@pytest.mark.parametrize("item, key, message", [
    ("dataset=synthfr", "dataset", "Unknown data set 'synthfr'. Did you mean 'synthfer'?"),
    ("test_dataset=rafbd", "test_dataset", "Unknown data set 'rafbd'. Did you mean 'rafdb'?"),
    ("backbone.name=resnet", "backbone.name", "Unknown backbone 'resnet'. Did you mean 'resnet18'?"),
])
def test_a_component_name_is_looked_up_while_resolving(item, key, message):
    with pytest.raises(SSLZooError, match=re.escape(f"Config key '{key}': {message}")):
        resolve([parse_set([item])])


@pytest.mark.parametrize("items", [
    ["channels_last=true"], ["channels_last=off"], ["amp=off"], ["amp=BF16"], ["device=cuda:1"],
    ["optim.name=SGD"], ["image_size=null"], ["optim.clip_grad=1"], ["policies.adacm.floor=null"],
    ["loggers=[csv, wandb]"], ["augment.randaugment=none"], ["optim.lr=1"],
])
def test_values_the_components_read_are_accepted(items):
    resolve([parse_set(items)])


def test_the_optimizer_and_the_schedule_are_built_while_resolving():
    # torch's SGD refuses Nesterov without momentum: a combination no single key's rule sees
    with pytest.raises(SSLZooError, match=r"'optim' / 'schedule' were rejected: Nesterov momentum"):
        resolve([parse_set(["optim.name=sgd", "optim.momentum=0"])])
    # a schedule's factor can fail only past the warm-up: it is evaluated at a middle and the last step
    cfg = resolve([parse_set(["schedule.warmup_steps=5"])])
    cfg["schedule"]["name"] = "bogus"
    with pytest.raises(SSLZooError, match="schedule.name must be one of constant, cosine; got .bogus."):
        validate(cfg)


def test_the_policy_and_the_algorithm_are_built_while_resolving():
    with pytest.raises(SSLZooError, match="Algorithm 'supervised' takes no threshold policy"):
        resolve([{"algo": "supervised", "policy": "fixed:0.8"}])
    with pytest.raises(SSLZooError, match=r"Algorithm 'fixmatch' rejected its settings \(fixmatch\.\*\)"):
        resolve([{"algo": "fixmatch", "fixmatch": {"temperature": 0.0}}])
    with pytest.raises(SSLZooError, match="Threshold policy 'flexmatch' rejected its settings"):
        resolve([{"algo": "flexmatch", "policies": {"flexmatch": {"mapping": "concave-ish"}}}])


def test_the_algorithm_is_checked_with_the_data_sets_class_count_where_the_config_states_it():
    assert C._num_classes(resolve([{"dataset": "affectnet"}])) == 8     # configs/datasets/affectnet.yaml
    assert C._num_classes(resolve([{"dataset": "synthfer"}])) == C.FALLBACK_CLASSES == 7


class _Annotated(ALGORITHMS.get("supervised")):
    """A constructor argument whose default is None: its annotation says what it is."""

    name = "annotated_test"

    def __init__(self, num_classes: int, policy=None, margin: float | None = None, note=None,
                 lambda_u: float = 1.0):
        super().__init__(num_classes, policy)
        torch.rand(1)   # checking a config must not move the global random stream


@pytest.fixture
def annotated(monkeypatch):
    monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))
    register_algorithm("annotated_test")(_Annotated)


def test_algorithm_arguments_are_typed_by_annotation_where_the_default_is_none(annotated):
    with pytest.raises(SSLZooError) as err:
        resolve([{"algo": "annotated_test", "annotated_test": {"margin": "wide"}}])
    assert str(err.value) == "Config key 'annotated_test.margin' must be null or a number; got 'wide'."
    for value in (0.5, 1, None):
        assert resolve([{"algo": "annotated_test", "annotated_test": {"margin": value}}])["annotated_test"] == \
            {"margin": value, "note": None, "lambda_u": 1.0}
    resolve([{"algo": "annotated_test", "annotated_test": {"note": ["anything", 1]}}])   # no annotation: free


def test_resolving_leaves_the_global_random_stream_alone(annotated):
    state = torch.get_rng_state()
    resolve([{"algo": "annotated_test"}])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("argv, overrides, message", EXAMPLES, ids=[" ".join(e[0]) for e in EXAMPLES])
def test_cli_train_stops_before_anything_is_written(capsys, tmp_path, argv, overrides, message):
    run = tmp_path / "run"
    code = cli.main(["train", "--algo", "fixmatch", *TINY_FLAGS, *argv, "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"sslzoo train: error: {message}\n"    # one line: key, value, what is allowed
    assert not run.exists()


@pytest.mark.parametrize("argv, overrides, message", EXAMPLES, ids=[" ".join(e[0]) for e in EXAMPLES])
def test_fit_stops_before_anything_is_written(tmp_path, argv, overrides, message):
    run = tmp_path / "run"
    with pytest.raises(SSLZooError) as err:
        sslzoo.fit("fixmatch", config=dict(TINY), out=run, **overrides)
    assert str(err.value) == message
    assert not run.exists()


BAD_CELL_SUITE = """\
name: one_bad_cell
defaults: {seeds: 2, epochs: 1, iters_per_epoch: 2, batch_size: 8, num_workers: 0, tensorboard: false,
           data: {n_train: 420, n_test: 140}, backbone: {name: smallcnn, width: 8}}
settings:
  - {dataset: synthfer, labels: 35}
methods:
  - {name: fine, algo: supervised}
  - {name: bad, algo: fixmatch, schedule: {name: cosin}}
"""


def test_bench_with_one_bad_cell_stops_before_the_first_run(capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(BAD_CELL_SUITE)
    out = tmp_path / "bench"
    code = cli.main(["bench", "--suite", str(suite), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("sslzoo bench: error: suite 'one_bad_cell': method 'bad', data set 'synthfer', 35 labels, "
                   "seed 0: Config key 'schedule.name' must be one of constant, cosine; got 'cosin' "
                   "(did you mean 'cosine'?).\n")
    assert not out.exists()


def test_sslzoo_config_prints_the_checked_config_or_the_schema(capsys, tmp_path):
    assert cli.main(["config", "--algo", "fixmatch", "--set", "optim.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == resolve([{"algo": "fixmatch", "optim": {"lr": 0.01}}])
    assert resolve([printed]) == printed   # what it prints is a config file for --config
    assert cli.main(["config", "--set", "optim.lr=-1"]) == 2
    assert capsys.readouterr().err == "sslzoo config: error: Config key 'optim.lr' must be > 0; got -1.\n"
    assert cli.main(["config", "--schema"]) == 0
    table = capsys.readouterr().out
    assert "| `optim.lr` | `0.0005` | a number > 0 |" in table
    assert "| `adacm.lambda_c` | `0.1` | a number |" in table and "| `policies.fixed.threshold` |" in table


def test_docs_list_every_key_as_the_schema_does():
    """docs/config.md's table is schema_table(full=False); regenerate it from there when this fails."""
    doc = (ROOT / "docs" / "config.md").read_text()
    assert C.schema_table(full=False) in doc
