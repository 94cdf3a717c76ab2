"""The throughput benchmark runs and reports its JSON shape; batches are a pure function of (seed, step, rank).

No timing assertions: timings on a shared machine are noise. What is checked is that the
benchmark runs end to end with tiny sizes, and that a step's batch is the same whoever
builds its views (loader workers or the training device) and however many workers there are.
The augmentations themselves are checked against PIL in tests/test_augment.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sslzoo.data.base import ImageSet
from sslzoo.data.pipeline import BatchPlan, StepBatches, step_loader, view_batches
from sslzoo.data.views import AugmentConfig, Views, normalize_batch

REPO = Path(__file__).resolve().parent.parent


# -- normalisation and the step stream -------------------------------------------------------
def test_normalize_batch_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    ref = (x.float() / 255.0 - mean) / std
    assert torch.allclose(normalize_batch(x, torch.device("cpu")), ref, atol=1e-6)
    cl = normalize_batch(x, torch.device("cpu"), channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, ref, atol=1e-6)


# -- batches stay a pure function of (seed, step, rank) ----------------------------------------
def _pools(n: int = 60, size: int = 12) -> tuple[ImageSet, ImageSet]:
    rng = np.random.default_rng(0)
    def make(k: int, tag: str) -> ImageSet:
        return ImageSet(rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8), np.arange(k) % 7,
                        [f"{tag}{i}" for i in range(k)])
    return make(n // 3, "l"), make(n, "u")


def _batches(seed: int = 3, build_views: bool = True) -> StepBatches:
    labeled, unlabeled = _pools()
    return StepBatches(labeled, unlabeled, BatchPlan(4, 2, 5), seed, "weak", ("weak", "strong"),
                       Views(12, AugmentConfig()), build_views=build_views)


def _equal(a: dict, b: dict) -> bool:
    return (torch.equal(a["x_l"], b["x_l"]) and torch.equal(a["y_l"], b["y_l"])
            and all(torch.equal(u, v) for u, v in zip(a["u_views"], b["u_views"]))
            and torch.equal(a["u_index"], b["u_index"]))


def test_step_batches_are_pure_and_leave_the_global_rng_alone():
    sb = _batches()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    b7 = sb[7]
    assert torch.equal(torch.get_rng_state(), state)   # num_workers=0 must not reseed training's RNG
    assert _equal(_batches()[7], b7)                    # another instance, other steps not visited
    sb[3]
    assert _equal(sb[7], b7)                            # order of access does not matter
    assert not _equal(sb[8], b7)
    assert b7["x_l"].shape == (4, 3, 12, 12) and b7["x_l"].dtype == torch.uint8
    assert [v.shape[0] for v in b7["u_views"]] == [8, 8]


def test_views_built_on_the_training_device_equal_views_built_in_the_loader():
    from sslzoo.data.pipeline import realize
    views = Views(12, AugmentConfig())
    for step in (0, 4, 7):
        built, raw = _batches()[step], _batches(build_views=False)[step]
        assert "raw" in raw and "x_l" not in raw
        x_l, u_views, _ = realize(raw, views, "weak", ("weak", "strong"), (), torch.device("cpu"))
        assert torch.equal(x_l, built["x_l"]) and all(torch.equal(a, b) for a, b in zip(u_views, built["u_views"]))


def test_loader_output_does_not_depend_on_worker_count():
    sb = _batches()
    serial = list(step_loader(sb, 2, 6, 0, False))
    parallel = list(step_loader(sb, 2, 6, 2, False))
    assert len(serial) == len(parallel) == 4
    assert all(_equal(a, b) for a, b in zip(serial, parallel))


def test_view_batches_deterministic_and_isolated():
    labeled, _ = _pools()
    views = Views(12, AugmentConfig())
    first = [x for x, _ in view_batches(labeled, views, "weak", 5, 7)]
    interleaved = []
    for x, _ in view_batches(labeled, views, "weak", 5, 7):
        torch.rand(100)   # the caller's random draws between chunks change nothing
        interleaved.append(x)
    assert all(torch.equal(a, b) for a, b in zip(first, interleaved))
    plain = torch.cat([x for x, _ in view_batches(labeled, views, "plain", 0, 7)])
    assert torch.equal(plain, torch.from_numpy(np.asarray(labeled.images)).permute(0, 3, 1, 2))


# -- the benchmark itself ----------------------------------------------------------------------
def test_throughput_cli_emits_json_shape(tmp_path, tiny, capsys):
    from sslzoo.benchmarks.throughput import REQUIRED_KEYS
    from sslzoo.cli import main
    cfg = tiny(tmp_path)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "throughput.json"
    rc = main(["throughput", "--config", str(cfg_file), "--algos", "supervised,fixmatch",
               "--repeats", "1", "--iters", "1", "--warmup", "0", "--loader-steps", "1",
               "--e2e-steps", "1", "--e2e-warmup", "1", "--e2e-repeats", "1", "--workdir", str(tmp_path / "work"),
               "--no-augment", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "config", "algorithms"}
    assert {"cpu", "cores", "torch", "threads", "device"} <= set(result["machine"])
    assert result["config"]["batch_size"] == cfg["batch_size"] and result["config"]["mu"] == cfg["mu"]
    assert set(result["algorithms"]) == {"supervised", "fixmatch"}
    for name, r in result["algorithms"].items():
        assert "error" not in r, r.get("error")
        for key in REQUIRED_KEYS:
            assert isinstance(r[key], float) and r[key] > 0, (name, key)
        assert r["step_over_raw"] == pytest.approx(r["raw_img_s"] / r["step_img_s"])
        assert r["e2e_over_step"] == pytest.approx(r["e2e_img_s"] / r["step_img_s"])
        assert r["e2e_over_step_paired"] > 0 and 0 < r["e2e_in_step_fraction"] <= 1
    fm, sup = result["algorithms"]["fixmatch"], result["algorithms"]["supervised"]
    assert fm["images_per_step"] == cfg["batch_size"] * (1 + 2 * cfg["mu"])
    assert sup["images_per_step"] == cfg["batch_size"]
    assert "separate_over_concat" in fm and "separate_over_concat" not in sup
    table = capsys.readouterr().out
    assert "| fixmatch |" in table and "step/raw" in table


def test_augment_only_reports_the_three_ways_side_by_side(tmp_path, capsys):
    from sslzoo.cli import main
    out = tmp_path / "augment.json"
    assert main(["throughput", "--augment-only", "--augment-size", "32", "--json", str(out)]) == 0
    aug = json.loads(out.read_text())["augment"]
    assert aug["image_size"] == 32 and aug["views_per_step"] == 16 + 16 * 3
    for key in ("batched_img_s_per_core", "per_image_torchvision_img_s_per_core", "pil_img_s_per_core"):
        assert aug[key] > 0
    assert aug["batched_over_pil"] > 0 and aug["batched_over_per_image_torchvision"] > 0
    assert "batched / PIL" in capsys.readouterr().out


def test_speed_ratios_are_paired_per_round():
    """A ratio is the median of each round's slow / fast, not a ratio of two medians: a slow spell
    of the machine (round 2 here) scales both timings of its round and leaves the ratio alone."""
    from sslzoo.benchmarks.augment_speed import paired_ratio
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0      # rounds 2, 4, 3; medians: 4 / 1
    assert paired_ratio([3.0, 30.0, 30.0], [1.0, 10.0, 1.0]) == 3.0   # rounds 3, 3, 30; medians: 30 / 1


def test_benchmarks_entry_point_is_the_same_command(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    sys.modules.pop("benchmarks.throughput", None)
    import benchmarks.throughput as entry
    from sslzoo.benchmarks import throughput
    assert entry.__file__ == throughput.__file__ or entry.main.__code__.co_filename == throughput.main.__code__.co_filename


def test_augment_per_operation_timing_covers_every_operation():
    from sslzoo.benchmarks.augment_speed import measure_operations
    from sslzoo.data.augment import RANDAUGMENT_OPS
    ops = measure_operations(image_size=16, repeats=1, calls=1)
    assert list(ops) == [name for name, _, _ in RANDAUGMENT_OPS]
    assert all(set(r) == {"sslzoo_ms", "pil_ms"} and r["sslzoo_ms"] >= 0 and r["pil_ms"] >= 0 for r in ops.values())


@pytest.mark.parametrize("amp,backbone", [("off", "smallcnn"), ("bf16", "smallcnn"), ("off", "resnet18")])
def test_rss_check_runs_what_it_reports(amp, backbone):
    """The memory benchmark's CLI run and its in-process probe use one config; the flags it passes to
    ``sslzoo train`` resolve to exactly that config (amp included)."""
    from sslzoo.benchmarks.rss_check import _flags, run_settings
    from sslzoo.cli import build_parser, config_layers
    from sslzoo.config import resolve
    run = run_settings(8, amp, backbone)
    args = build_parser().parse_args(["train", *_flags(run)])
    cfg = resolve(config_layers(args))
    assert {k: cfg[k] for k in run if k not in ("backbone", "amp")} == {
        k: v for k, v in run.items() if k not in ("backbone", "amp")}
    assert cfg["amp"] == amp or (amp == "off" and cfg["amp"] is False)   # YAML reads --set amp=off as false
    assert cfg["backbone"]["name"] == backbone
    assert cfg["backbone"].get("width") == (16 if backbone == "smallcnn" else None)


def test_rss_check_reference_point_is_the_bare_network_step():
    from sslzoo.benchmarks.rss_check import bare_step, run_settings
    report = bare_step(run_settings(batch_size=1))
    assert [name for name, _ in report] == ["torch imported", "backbone and a random float batch", "forward + backward"]
    assert all(r["VmHWM"] >= r["VmRSS"] > 0 for _, r in report)


def test_gpu_check_steps_never_run_past_its_budget(tmp_path, monkeypatch):
    """Each step's limit is cut to what is left of the check's budget; with under 10 s left a step
    is not started (recorded as an error), so the prepared check ends within its 8 minutes."""
    import sys
    import time

    from sslzoo.benchmarks import gpu_check
    monkeypatch.setattr(gpu_check, "DEADLINE", time.monotonic() + 60)
    done = gpu_check.run([sys.executable, "-c", "print('hi')"], tmp_path / "ok.log", timeout=600)
    assert done["returncode"] == 0 and "hi" in done["tail"]
    monkeypatch.setattr(gpu_check, "DEADLINE", time.monotonic() + 5)
    with pytest.raises(TimeoutError, match="not started"):
        gpu_check.run([sys.executable, "-c", "print('hi')"], tmp_path / "late.log", timeout=600)
