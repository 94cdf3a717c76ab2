"""Fidelity round 2: FixMatch's temperature in its subclasses, ReMixMatch's official DA buffer,
a cold pretraining cache, the reference weights, the confidence interval of the tables and the
paper suites' EMA and precision."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.policies import build_policy
from sslzoo.registry import ALGORITHMS

# ----------------------------------------------------------------------------- FixMatch's temperature

@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("algo", ["fixmatch", "flexmatch", "freematch", "softmatch", "dash"])
def test_policies_see_the_unsharpened_prediction_whatever_the_temperature(algo, hard):
    """T = 0.5 must shape soft targets only: the policy receives softmax(logits), not softmax(logits / T)."""
    cls = ALGORITHMS.get(algo)
    algorithm = cls(3, build_policy(cls.default_policy), temperature=0.5, use_hard_label=hard)
    algorithm.setup(4, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    real = algorithm.policy.weights

    def spy(inp, ctx):
        seen.append(inp.probs.clone())
        return real(inp, ctx)
    algorithm.policy.weights = spy
    weak = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    out = ForwardOutput(torch.zeros(2, 3), torch.zeros(2, 4), [weak, torch.zeros(4, 3)], [torch.zeros(4, 4)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), [], torch.arange(4), torch.tensor([0, 0, 1, 2]))
    ctx = StepContext(epoch=0, iteration=0, step=0, total_steps=100, iters_per_epoch=100, num_classes=3)
    algorithm.losses(out, batch, ctx)
    assert len(seen) == 1 and torch.allclose(seen[0], torch.softmax(weak, dim=-1))
    assert not torch.allclose(seen[0], torch.softmax(weak / 0.5, dim=-1))


# ----------------------------------------------------------------------------- ReMixMatch's DA buffer

def _da(official: bool):
    from sslzoo.algorithms.remixmatch import DistributionAlignment
    return DistributionAlignment(2, 2, official=official)      # 2 classes, window 2, p(y) uniform


def test_official_da_buffer_starts_at_1_over_c_and_aligns_before_pushing():
    """By hand, window 2: step 0 aligns with (0.5, 0.5), i.e. not at all, then pushes (0.8, 0.2);
    step 1 aligns with mean((0.8, 0.2), (0.5, 0.5)) = (0.65, 0.35): (0.5, 0.5) -> (0.35, 0.65)."""
    da = _da(official=True)
    assert torch.allclose(da.p_model(), torch.tensor([0.5, 0.5]))
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    assert torch.allclose(da(probs), probs)
    assert torch.allclose(da.p_model(), torch.tensor([0.65, 0.35]))
    assert torch.allclose(da(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.35, 0.65]]), atol=1e-5)
    da(torch.tensor([[0.2, 0.8]]))                              # the oldest row, (0.8, 0.2), drops out
    assert torch.allclose(da.p_model(), torch.tensor([0.35, 0.65]))


def test_running_da_buffer_pushes_first_and_averages_the_filled_rows():
    """Default: step 0 is aligned by its own mean (0.8, 0.2): ratio (0.5 / 0.8, 0.5 / 0.2)."""
    da = _da(official=False)
    out = da(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))
    expected = torch.tensor([[0.9 / 0.8, 0.1 / 0.2], [0.7 / 0.8, 0.3 / 0.2]])
    assert torch.allclose(out, expected / expected.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(da.p_model(), torch.tensor([0.8, 0.2]))


def test_remixmatch_da_buffer_switch_and_its_checkpoint():
    from sslzoo.algorithms.remixmatch import ReMixMatch

    from sslzoo.errors import SSLZooError
    from sslzoo.factory import build_algorithm
    algo = ReMixMatch(2, da_window=2, da_buffer="official", da_target="uniform")
    algo.da(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))
    again = ReMixMatch(2, da_window=2, da_buffer="official", da_target="uniform")
    again.load_state_dict(algo.state_dict())
    assert torch.allclose(again.da.p_model(), torch.tensor([0.65, 0.35]))
    assert not ReMixMatch(2).da.official
    cfg = {"algo": "remixmatch", "policy": None, "policies": {}, "remixmatch": {**ReMixMatch.hyperparameters(),
                                                                              "da_buffer": "usb"}}
    with pytest.raises(SSLZooError, match="da_buffer must be 'running'.*'official'.*got 'usb'"):
        build_algorithm(cfg, 2)


# ----------------------------------------------------------------------------- a cold pretraining cache

TIMING = ("time_s", "img_per_s")


def _noise(model, images, *, seed, device, log, scale):
    """A cheap 'pretraining' that draws from the global generator, as a real recipe does."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)


def test_a_cold_pretraining_cache_leaves_the_run_as_a_warm_one(tmp_path, tiny, monkeypatch):
    """Run 1 builds the weights inside its setup (cold cache), run 2 reads them (warm): same numbers.

    Without ``fork_rng`` in ``train_recipe`` the recipe's seeding and draws move the run's
    generator, so the head's initialisation and every later draw of run 1 differ.
    """
    from sslzoo.data.prepare import prepare
    from sslzoo.pretrain.store import PretrainRecipe, weights_path
    from sslzoo.registry import PRETRAINED
    from sslzoo.trainer import Trainer
    name = "noise_cold_cache"                                   # a recipe no other test builds
    monkeypatch.setitem(PRETRAINED._items, name, PretrainRecipe(description="random weights", dataset="digits",
                                                                method=_noise, params={"scale": 0.1}))
    backbone = {"name": "smallcnn", "width": 8, "pretrained": name}
    cfgs = [tiny(tmp_path / run, algo="fixmatch", backbone=backbone) for run in ("cold", "warm")]
    prepare(cfgs[0])                                            # the data cache is warm for both runs
    assert not weights_path(name, backbone, 32, "cpu").exists()
    results = []
    for cfg in cfgs:
        trainer = Trainer(cfg)
        history = trainer.fit()["history"]
        results.append(([{k: v for k, v in e.items() if k not in TIMING} for e in history],
                        trainer.model.state_dict()))
    assert weights_path(name, backbone, 32, "cpu").exists()
    (cold_hist, cold_state), (warm_hist, warm_state) = results
    assert cold_hist == warm_hist
    assert all(torch.equal(cold_state[k], warm_state[k]) for k in cold_state)


# ----------------------------------------------------------------------------- reference weights

def test_file_sha256_of_a_known_file(tmp_path):
    from sslzoo.pretrain.store import file_sha256
    (tmp_path / "abc").write_bytes(b"abc")                      # FIPS 180-2's example digest
    assert file_sha256(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _fill(model, images, *, seed, device, log, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


@pytest.fixture
def referenced(monkeypatch, tmp_path):
    """A recipe whose first build is recorded as the reference; returns (register(reference), path)."""
    import dataclasses

    from sslzoo.pretrain.store import PretrainRecipe, pretrained_weights, weights_key
    from sslzoo.registry import PRETRAINED
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    recipe = PretrainRecipe(description="fills", dataset="digits", method=_fill, params={"value": 0.5})
    monkeypatch.setitem(PRETRAINED._items, "fill_ref", recipe)
    backbone = {"name": "smallcnn", "width": 4}
    path = pretrained_weights("fill_ref", backbone, 32, "cpu", log=lambda _: None)
    key = weights_key("fill_ref", backbone, 32, "cpu")

    def register(digest: str | None) -> None:
        refs = {} if digest is None else {key: digest}
        monkeypatch.setitem(PRETRAINED._items, "fill_ref", dataclasses.replace(recipe, reference_sha256=refs))
    return register, path


def test_reference_note_says_whether_the_build_matches(referenced):
    import hashlib

    from sslzoo.pretrain.store import reference_note
    register, path = referenced
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    register(digest)
    assert reference_note("fill_ref", path) == (f"{path.name}: SHA-256 {digest[:16]}... matches the weights "
                                                f"behind the README's numbers")
    register("0" * 64)
    note = reference_note("fill_ref", path)
    assert "differs from the reference 0000000000000000" in note and "expect other numbers than the README's" in note
    assert "no reference SHA-256 recorded" in reference_note("fill_ref", path.with_name("fill_ref-0123456789abcdef.pt"))
    register(None)
    assert reference_note("fill_ref", path) is None             # a recipe without references says nothing


def test_pretrain_and_bench_prebuild_print_the_comparison(referenced, capsys, tiny, tmp_path):
    import hashlib

    from sslzoo import cli
    from sslzoo.pretrain.store import prebuild
    register, path = referenced
    register(hashlib.sha256(path.read_bytes()).hexdigest())
    assert cli.main(["pretrain", "fill_ref", "--set", "data.n_train=140", "--set", "backbone.width=4"]) == 0
    assert "matches the weights behind the README's numbers" in capsys.readouterr().out
    register("f" * 64)
    lines: list[str] = []
    cfg = tiny(tmp_path, backbone={"name": "smallcnn", "width": 4, "pretrained": "fill_ref"}, image_size=32)
    assert prebuild([cfg], log=lines.append) == [path]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert lines == [(f"{path.name}: SHA-256 {digest[:16]}... differs from the reference ffffffffffffffff...: "
                      f"expect other numbers than the README's; see docs/pretraining.md")]


def test_the_builtin_recipe_records_the_readme_weights(monkeypatch):
    """The key the README's weights have today: smallcnn width 16 (synthfer.yaml) at 32 px on the CPU
    (a change of the recipe changes the key and fails here: rebuild, and record the new file or none)."""
    import dataclasses

    from sslzoo.pretrain.simclr import simclr
    from sslzoo.pretrain.store import weights_key
    from sslzoo.registry import PRETRAINED
    real = dataclasses.replace(PRETRAINED.get("simclr_faces"), method=simclr)   # conftest swapped the method
    monkeypatch.setitem(PRETRAINED._items, "simclr_faces", real)
    key = weights_key("simclr_faces", {"name": "smallcnn", "width": 16, "normalize_feature": False}, 32, "cpu")
    assert PRETRAINED.get("simclr_faces").reference_sha256 == {
        key: "1e568ad8a08933d6d8c38358ba9ad3b5b611393a001dc0adbecc491a75c6db13"}


# ----------------------------------------------------------------------------- confidence intervals

def _results(path):
    import pandas as pd
    rows = [{"method": m, "dataset": "synthfer", "labels": 70, "seed": s, "status": "finished", "final_acc": a}
            for m, accs in (("supervised", (50.0, 52.0, 57.0)), ("fixmatch", (60.0, 64.0))) for s, a in enumerate(accs)]
    rows.append({"method": "adacm", "dataset": "synthfer", "labels": 70, "seed": 0, "status": "finished",
                 "final_acc": 55.0})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ci_of_the_mean_by_hand():
    """50, 52, 57: mean 53, s = sqrt(13), t(0.975, 2) = 4.302653: 53 ± 8.9567 = [44.04, 61.96]."""
    from scipy import stats

    from sslzoo.bench.tables import mean_ci
    assert stats.t.ppf(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    low, high = mean_ci([50.0, 52.0, 57.0])
    assert (low, high) == pytest.approx((53 - 4.302653 * 13 ** 0.5 / 3 ** 0.5, 53 + 4.302653 * 13 ** 0.5 / 3 ** 0.5))
    assert (round(low, 2), round(high, 2)) == (44.04, 61.96)
    assert mean_ci([60.0, 64.0]) == pytest.approx((62 - 12.706205 * 2, 62 + 12.706205 * 2))   # s / sqrt(2) = 2
    assert all(math.isnan(x) for x in mean_ci([55.0]))           # one seed has no interval


def test_table_ci_flag_prints_the_interval_in_every_format(tmp_path, capsys):
    import pandas as pd

    from sslzoo import cli
    csv = _results(tmp_path / "results.csv")
    assert cli.main(["table", str(csv), "--ci", "--out", str(tmp_path / "t")]) == 0
    md = capsys.readouterr().out
    assert "| supervised | 53.00±3.61 [44.04, 61.96] |" in md
    assert "| fixmatch | **62.00±2.83 [36.59, 87.41] (n=2)** |" in md
    assert "| adacm | 55.00 (n=1) |" in md                        # one seed: neither std nor interval
    assert "95% confidence interval of the mean" in md and "Student's t distribution with n-1 degrees" in md
    tex = (tmp_path / "t" / "table.tex").read_text()
    assert r"53.00$\pm$3.61 [44.04, 61.96]" in tex
    table = pd.read_csv(tmp_path / "t" / "table.csv", skiprows=1).set_index("method")
    assert table.loc["supervised", "synthfer/70/ci_low"] == pytest.approx(44.0433, abs=1e-4)
    assert table.loc["fixmatch", "synthfer/70/ci_high"] == pytest.approx(87.4124, abs=1e-4)
    assert cli.main(["table", str(csv), "--out", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert "[44.04" not in plain and "confidence interval" not in plain          # off by default
    assert "synthfer/70/ci_low" not in (tmp_path / "plain" / "table.csv").read_text()


# ----------------------------------------------------------------------------- the paper suites

@pytest.mark.parametrize("name", ["paper/table1", "paper/table1_synthfer", "paper/table2", "paper/table3",
                                  "paper/table4"])
def test_paper_suites_use_the_official_ema_and_say_their_precision(name):
    """Every Ada-CM row averages batch-norm statistics in the EMA (official code); every row states amp."""
    from sslzoo.bench.grid import load_suite
    from sslzoo.config import deep_merge
    suite = load_suite(name)
    assert suite.defaults.get("amp") == "off"
    for method in suite.methods:
        layer = deep_merge(suite.defaults, method.overrides)
        if layer.get("algo") == "adacm":
            assert layer["ema"]["buffers"] == "average", method.name


def test_the_readme_suite_keeps_the_defaults():
    from sslzoo.bench.grid import load_suite
    suite = load_suite("default")
    assert "ema" not in suite.defaults and "amp" not in suite.defaults
    assert all("ema" not in m.overrides and "amp" not in m.overrides for m in suite.methods)
