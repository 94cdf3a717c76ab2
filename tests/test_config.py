"""Config resolution: safe YAML, unknown keys with did-you-mean, typed values, layer precedence."""
from __future__ import annotations

import argparse

import pytest
import yaml

from sslzoo import config as config_mod
from sslzoo.cli import add_train_flags, config_layers
from sslzoo.config import DEFAULTS, config_hash, load_yaml, parse_set, resolve
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy


def test_defaults_resolve_and_keep_only_the_active_algorithm_section():
    cfg = resolve([{"algo": "fixmatch"}])
    assert cfg["algo"] == "fixmatch" and "fixmatch" in cfg and "adacm" not in cfg
    # keys no layer touches keep the defaults; the data set's YAML layer applies on top
    assert cfg["optim"]["weight_decay"] == DEFAULTS["optim"]["weight_decay"]
    synthfer_yaml = load_yaml(config_mod.builtin_config_dir() / "datasets" / "synthfer.yaml")
    assert cfg["optim"]["lr"] == synthfer_yaml["optim"]["lr"]


def test_a_capitalised_name_finds_its_yaml_and_keeps_its_section():
    """Registered names are lower-case; "MixMatch" (as a suite might spell it) must not drop the
    algorithm's built-in YAML or the user's own section of it."""
    cfg = resolve([{"algo": "MixMatch", "dataset": "SynthFER", "mixmatch": {"mixup_alpha": 0.3}}])
    assert cfg["algo"] == "mixmatch" and cfg["dataset"] == "synthfer"
    assert cfg["mixmatch"]["mixup_alpha"] == 0.3
    assert cfg["mixmatch"]["unsup_warmup"] == load_yaml(
        config_mod.builtin_config_dir() / "algorithms" / "mixmatch.yaml")["mixmatch"]["unsup_warmup"]


def test_unknown_top_level_key_gets_did_you_mean():
    with pytest.raises(SSLZooError, match=r"Unknown config key 'epoch'.*Did you mean 'epochs'"):
        resolve([{"epoch": 3}])


def test_unknown_nested_key_names_its_path_and_suggests():
    with pytest.raises(SSLZooError, match=r"'optim\.lrr'.*Did you mean 'lr'"):
        resolve([parse_set(["optim.lrr=0.1"])])


def test_unknown_algorithm_section_key_suggests_the_constructor_argument():
    with pytest.raises(SSLZooError, match=r"'adacm\.lambda_x'.*Did you mean 'lambda_(u|c)'"):
        resolve([parse_set(["adacm.lambda_x=1"])])


def test_wrong_type_names_the_key_and_the_expected_type():
    with pytest.raises(SSLZooError, match=r"'epochs' must be a whole number >= 1; got 'abc'"):
        resolve([parse_set(["epochs=abc"])])
    with pytest.raises(SSLZooError, match=r"'optim\.lr' must be a number > 0; got 'fast'"):
        resolve([parse_set(["optim.lr=fast"])])
    with pytest.raises(SSLZooError, match=r"'optim' must be a mapping"):
        resolve([parse_set(["optim=3"])])
    # an int where a float is expected is fine; a bool where an int is expected is not
    assert resolve([parse_set(["optim.lr=1"])])["optim"]["lr"] == 1
    with pytest.raises(SSLZooError, match=r"'epochs' must be a whole number >= 1; got True"):
        resolve([parse_set(["epochs=true"])])


@pytest.mark.parametrize("item", ["epochs", "=3", "optim..lr=1", ".lr=1", "optim.=1"])
def test_malformed_set_is_rejected_with_the_expected_form(item):
    with pytest.raises(SSLZooError, match="--set expects key=value"):
        parse_set([item])


def test_set_values_are_yaml_scalars_and_policy_specs_stay_strings():
    out = parse_set(["optim.lr=1e-3", "epochs=4", "ema.warmup=false", "policy=fixed:0.8", "data_root=/x:y"])
    assert out == {"optim": {"lr": 1e-3}, "epochs": 4, "ema": {"warmup": False}, "policy": "fixed:0.8",
                   "data_root": "/x:y"}


def test_set_cannot_put_a_key_under_a_value():
    with pytest.raises(SSLZooError, match="already given a value"):
        parse_set(["optim=3", "optim.lr=1"])


def test_policy_spec_with_a_non_number_is_explained():
    with pytest.raises(SSLZooError, match=r"'abc' is not a number"):
        build_policy("fixed:abc")
    with pytest.raises(SSLZooError, match=r"Unknown threshold policy 'fixd'.*Did you mean 'fixed'"):
        build_policy("fixd:0.5")


def test_yaml_is_parsed_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SSLZooError, match="not valid YAML"):
        load_yaml(evil)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SSLZooError, match="must hold a mapping"):
        load_yaml(listy)
    with pytest.raises(SSLZooError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_train_flags(p)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def test_layer_precedence_defaults_dataset_algorithm_config_flags_set(tmp_path, monkeypatch):
    """defaults < configs/datasets/<ds>.yaml < configs/algorithms/<algo>.yaml < --config < flags < --set."""
    builtin = tmp_path / "builtin"
    (builtin / "datasets").mkdir(parents=True)
    (builtin / "algorithms").mkdir()
    # each layer sets every key it is allowed to win on, plus the ones later layers override
    (builtin / "datasets" / "digits.yaml").write_text(yaml.safe_dump(
        {"epochs": 11, "batch_size": 11, "mu": 11, "seed": 11, "eval_batch_size": 11, "iters_per_epoch": 11}))
    (builtin / "algorithms" / "fixmatch.yaml").write_text(yaml.safe_dump(
        {"epochs": 22, "batch_size": 22, "mu": 22, "seed": 22, "iters_per_epoch": 22}))
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"epochs": 33, "batch_size": 33, "mu": 33, "seed": 33}))
    monkeypatch.setattr(config_mod, "builtin_config_dir", lambda: builtin)
    args = _args(["--algo", "fixmatch", "--dataset", "digits", "--config", str(user),
                  "--epochs", "44", "--batch-size", "44", "--mu", "44",
                  "--set", "epochs=55"])
    args.plugin = []
    cfg = resolve(config_layers(args))
    assert cfg["epochs"] == 55             # --set beats everything
    assert cfg["batch_size"] == 44         # flags beat --config
    assert cfg["seed"] == 33               # --config beats the built-in YAML
    assert cfg["iters_per_epoch"] == 22    # algorithm YAML beats data-set YAML
    assert cfg["eval_batch_size"] == 11    # data-set YAML beats the defaults
    assert cfg["labels"] == DEFAULTS["labels"]


def test_builtin_yaml_with_unknown_key_is_rejected(tmp_path, monkeypatch):
    builtin = tmp_path / "builtin"
    (builtin / "datasets").mkdir(parents=True)
    (builtin / "datasets" / "digits.yaml").write_text("epochz: 3\n")
    monkeypatch.setattr(config_mod, "builtin_config_dir", lambda: builtin)
    with pytest.raises(SSLZooError, match="epochz"):
        resolve([{"dataset": "digits"}])


def test_unknown_algorithm_is_an_error_before_anything_else():
    with pytest.raises(SSLZooError, match=r"Unknown algorithm 'fixmach'.*Did you mean 'fixmatch'"):
        resolve([{"algo": "fixmach"}])


def test_config_hash_ignores_where_and_how_verbosely_but_not_what():
    a = resolve([{"out": "a", "progress": True}])
    b = resolve([{"out": "b", "progress": False, "num_workers": 3, "tensorboard": False}])
    c = resolve([{"out": "a", "seed": 1}])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_config_hash_follows_the_content_of_backbone_weights(tmp_path):
    """A re-made checkpoint at the same path must not let a bench reuse runs fine-tuned from the old one."""
    import os
    weights = tmp_path / "pretrained.pt"
    weights.write_bytes(b"first")
    cfg = resolve([{"backbone": {"name": "smallcnn", "weights": str(weights)}}])
    first = config_hash(cfg)
    assert config_hash(cfg) == first
    os.utime(weights, ns=(1, 1))                      # touched, same content: same configuration
    assert config_hash(cfg) == first
    weights.write_bytes(b"other")
    assert config_hash(cfg) != first
    weights.unlink()
    assert config_hash(cfg) not in (first, config_hash(resolve([{"backbone": {"name": "smallcnn"}}])))


def test_exponent_floats_without_a_dot_are_floats_in_yaml_and_set(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; a config must read it as the number it means."""
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 3e-2, weight_decay: 5E-4}\n")
    assert load_yaml(f) == {"optim": {"lr": 0.03, "weight_decay": 5e-4}}
    assert parse_set(["optim.lr=1e-3", "x='1e-3'"]) == {"optim": {"lr": 1e-3}, "x": "1e-3"}
    assert resolve([load_yaml(f)])["optim"]["lr"] == 0.03
