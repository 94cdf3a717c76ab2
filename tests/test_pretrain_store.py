"""Pretrained backbones by name: SimCLR's augmentation and loss, the weights cache, config wiring."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from sslzoo.config import config_hash
from sslzoo.errors import SSLZooError
from sslzoo.io import FileLock
from sslzoo.models import build_backbone
from sslzoo.pretrain.augment import SimCLRAugment, blend, grayscale, rotate_hue
from sslzoo.pretrain.simclr import nt_xent, simclr
from sslzoo.pretrain.store import (PretrainRecipe, prebuild, pretrained_weights, resolve_pretrained,
                                   weights_path)
from sslzoo.registry import PRETRAINED

IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def _images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ----------------------------------------------------------------------------- augmentation

def test_augment_with_every_transform_off_is_the_identity():
    x = _images()
    out = SimCLRAugment(**IDENTITY)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.float() / 255, atol=1e-5)


def test_augment_flip_and_grayscale_when_certain():
    x = _images()
    flipped = SimCLRAugment(**{**IDENTITY, "flip_p": 1.0})(x, torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1).float() / 255, atol=1e-5)
    gray = SimCLRAugment(**{**IDENTITY, "grayscale_p": 1.0})(x, torch.Generator().manual_seed(0))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert torch.allclose(gray[:, 0], 0.299 * x[:, 0] / 255 + 0.587 * x[:, 1] / 255 + 0.114 * x[:, 2] / 255, atol=1e-6)


def test_augment_crop_of_a_quarter_of_the_area_magnifies_2x():
    """Crop side w = 0.5: neighbouring output pixels sample the input w = 0.5 pixels apart, so a
    ramp of slope 1 comes out with slope 0.5 (away from the border, where reflection pads)."""
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(5, 3, 8, 8)
    aug = SimCLRAugment(**{**IDENTITY, "crop_scale": (0.25, 0.25)})
    out = aug.crop_and_flip(ramp, torch.Generator().manual_seed(0))
    steps = out[:, :, :, 2:7].diff(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, 0.5), atol=1e-5)
    assert len({round(v, 4) for v in out[:, 0, 0, 3].tolist()}) == 5     # each image its own crop position
    assert out.min() >= 0 and out.max() <= 7                                # the crop stays inside the image


def test_augment_is_a_pure_function_of_the_generator_and_stays_in_range():
    x = _images(6, 16)
    a = SimCLRAugment()(x, torch.Generator().manual_seed(3))
    b = SimCLRAugment()(x, torch.Generator().manual_seed(3))
    c = SimCLRAugment()(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1


def test_colour_operations_by_hand():
    x = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)
    luma = 0.299 * 0.8 + 0.587 * 0.4 + 0.114 * 0.2
    assert grayscale(x).item() == pytest.approx(luma)
    assert torch.allclose(blend(x, grayscale(x), torch.tensor(0.0)), torch.full_like(x, luma))   # saturation 0
    assert torch.allclose(blend(x, grayscale(x), torch.tensor(1.0)), x)
    assert torch.allclose(blend(x, grayscale(x), torch.tensor(2.0)), (2 * x - luma).clamp(0, 1))
    assert torch.allclose(rotate_hue(x, torch.tensor([0.0])), x, atol=1e-6)
    assert torch.allclose(rotate_hue(x, torch.tensor([1.0])), x, atol=1e-5)          # a full turn
    turned = rotate_hue(x, torch.tensor([0.5]))
    assert not torch.allclose(turned, x, atol=0.05)
    assert grayscale(turned).item() == pytest.approx(luma, abs=1e-5)                  # hue keeps the luma
    gray = torch.full((1, 3, 1, 1), 0.5)
    assert torch.allclose(rotate_hue(gray, torch.tensor([0.3])), gray, atol=1e-6)     # no chroma to turn


# ----------------------------------------------------------------------------- NT-Xent and the loop

def test_nt_xent_by_hand_and_against_a_loop():
    # two images, two identical views each: every row's positive has similarity 1, its two negatives 0
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent(z, z.clone(), 1.0).item() == pytest.approx(np.log(1 + 2 / np.e))
    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 3), torch.randn(5, 3), 0.2
    allz = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    terms = []
    for i in range(10):
        j = (i + 5) % 10
        denom = sum(torch.exp(allz[i] @ allz[k] / t) for k in range(10) if k != i)
        terms.append(-torch.log(torch.exp(allz[i] @ allz[j] / t) / denom))
    assert nt_xent(z1, z2, t).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def _simclr_once(images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_backbone({"name": "smallcnn", "width": 4, "dropout": 0.0, "normalize_feature": False}, 1, 16)
    simclr(model, images, epochs=1, batch_size=16, lr=1e-2, temperature=0.2, seed=seed,
           device=torch.device("cpu"), log=lambda _: None)
    return model.state_dict()


def test_simclr_trains_the_backbone_reproducibly():
    images = _images(48, 16)
    torch.manual_seed(0)
    before = build_backbone({"name": "smallcnn", "width": 4}, 1, 16).state_dict()
    a, b, c = _simclr_once(images, 0), _simclr_once(images, 0), _simclr_once(images, 1)
    assert not torch.equal(a["features.0.0.weight"], before["features.0.0.weight"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.0.weight"], c["features.0.0.weight"])
    with pytest.raises(SSLZooError, match="at least batch_size=64 images"):
        simclr(build_backbone({"name": "smallcnn", "width": 4}, 1, 16), images, epochs=1, batch_size=64, lr=1e-3,
               temperature=0.2, seed=0, device=torch.device("cpu"))


# ----------------------------------------------------------------------------- the weights cache

@pytest.fixture
def fake_recipe(monkeypatch, tmp_path):
    """A registered recipe whose 'training' fills the backbone with a constant, counting its calls."""
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))   # the shared cache would remember builds
    calls: list[int] = []

    def fill(model, images, *, seed, device, log, value):
        calls.append(len(images))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)

    recipe = PretrainRecipe(description="test recipe", dataset="digits", method=fill, params={"value": 0.25})
    monkeypatch.setitem(PRETRAINED._items, "fake_fill", recipe)
    return calls, recipe


BACKBONE = {"name": "smallcnn", "width": 4, "pretrained": "fake_fill"}


def test_weights_are_built_once_then_read_from_the_cache(fake_recipe):
    calls, _ = fake_recipe
    path = pretrained_weights("fake_fill", BACKBONE, 32, "cpu", log=lambda _: None)
    assert calls == [1258] and path.is_file() and path.parent.name == "pretrained"
    assert pretrained_weights("fake_fill", BACKBONE, 32, "cpu") == path and calls == [1258]
    saved = torch.load(path, weights_only=True)
    assert saved["pretrained"]["recipe"] == "fake_fill" and not any(k.startswith("head.") for k in saved["state_dict"])
    path.write_bytes(b"not a checkpoint")                       # a broken file is rebuilt, not trusted
    assert pretrained_weights("fake_fill", BACKBONE, 32, "cpu", log=lambda _: None) == path and len(calls) == 2


def test_the_key_follows_architecture_image_size_and_recipe_but_not_head_options(fake_recipe, monkeypatch):
    _, recipe = fake_recipe
    base = weights_path("fake_fill", BACKBONE, 32, "cpu")
    assert weights_path("fake_fill", {**BACKBONE, "dropout": 0.1, "weights": None}, 32, "cpu") == base
    assert weights_path("fake_fill", {**BACKBONE, "width": 8}, 32, "cpu") != base
    assert weights_path("fake_fill", BACKBONE, 16, "cpu") != base
    assert weights_path("fake_fill", BACKBONE, 32, "cuda") != base
    monkeypatch.setitem(PRETRAINED._items, "fake_fill", PretrainRecipe(**{**recipe.__dict__, "version": 2}))
    assert weights_path("fake_fill", BACKBONE, 32, "cpu") != base


def test_build_model_starts_from_the_recipe_weights(fake_recipe):
    from sslzoo.factory import build_model
    model = build_model({"backbone": BACKBONE, "device": "cpu"}, 7, 32)
    assert torch.all(model.features[0][0].weight == 0.25)
    assert not torch.all(model.head.fc.weight == 0.25)           # the head is new
    assert resolve_pretrained({"name": "smallcnn", "width": 4}, 32, "cpu") == {"name": "smallcnn", "width": 4}
    with pytest.raises(SSLZooError, match="both name the weights"):
        build_model({"backbone": {**BACKBONE, "weights": "w.pt"}, "device": "cpu"}, 7, 32)


def test_unknown_recipe_names_fail_with_the_known_ones():
    with pytest.raises(SSLZooError, match="did you mean 'simclr_faces'.*backbone.weights=PATH"):
        build_backbone({"name": "smallcnn", "pretrained": "simclr_face"}, 7, 32)
    with pytest.raises(SSLZooError, match="'imagenet', a pretraining recipe \\(.*simclr_faces"):
        build_backbone({"name": "resnet18", "pretrained": "simclr_face"}, 7, 32)


def test_a_backbone_without_weights_is_refused_before_anything_is_built(fake_recipe):
    from sslzoo.factory import build_model
    with pytest.raises(SSLZooError, match="'wrn28_2' takes no weights file"):
        build_model({"backbone": {"name": "wrn28_2", "pretrained": "fake_fill"}, "device": "cpu"}, 7, 32)
    assert fake_recipe[0] == []


def test_config_hash_follows_the_recipe(fake_recipe, monkeypatch, tiny, tmp_path):
    _, recipe = fake_recipe
    cfg = tiny(tmp_path, backbone=dict(BACKBONE))
    before = config_hash(cfg)
    monkeypatch.setitem(PRETRAINED._items, "fake_fill", PretrainRecipe(**{**recipe.__dict__, "params": {"value": 0.5}}))
    assert config_hash(cfg) != before


def test_prebuild_builds_each_file_once_and_skips_what_it_cannot_size(fake_recipe, tiny, tmp_path):
    calls, _ = fake_recipe
    cfgs = [tiny(tmp_path, backbone=dict(BACKBONE), image_size=32, seed=s) for s in range(3)]
    cfgs.append(tiny(tmp_path, backbone=dict(BACKBONE), image_size=None))
    cfgs.append(tiny(tmp_path))
    assert len(prebuild(cfgs, log=lambda _: None)) == 1 and len(calls) == 1
    clash = tiny(tmp_path, backbone={**BACKBONE, "width": 8, "weights": "w.pt"}, image_size=32)
    with pytest.raises(SSLZooError, match="both name the weights"):
        prebuild([tiny(tmp_path, backbone={**BACKBONE, "width": 8}, image_size=32), clash])
    assert len(calls) == 1                                   # the conflict stopped it before any build


def test_a_run_starts_from_the_recipe_and_its_config_names_it(fake_recipe, tiny, tmp_path):
    from sslzoo.config import load_yaml
    from sslzoo.trainer import train
    cfg = tiny(tmp_path, algo="fixmatch", backbone=dict(BACKBONE), image_size=32)
    assert math.isfinite(train(cfg)["final_acc"]) and len(fake_recipe[0]) == 1
    assert load_yaml(tmp_path / "run" / "config.yaml")["backbone"]["pretrained"] == "fake_fill"


def test_file_lock_excludes_a_second_holder(tmp_path):
    lock = FileLock(tmp_path / "x.lock")
    assert lock.acquire(blocking=False)
    other = FileLock(tmp_path / "x.lock")
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(other.acquire(blocking=False)))
    t.start()
    t.join()
    assert got == [False]
    lock.release()
    with other:
        assert not FileLock(tmp_path / "x.lock").acquire(blocking=False)


# ----------------------------------------------------------------------------- CLI and bench

RECIPE_PLUGIN = '''
import os
import torch
from sslzoo.pretrain import PretrainRecipe, register_pretrained

def fill(model, images, *, seed, device, log, value):
    with open(os.environ["FILL_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)

register_pretrained("plugin_fill", PretrainRecipe(description="fills every weight", dataset="digits",
                                                  method=fill, params={"value": 0.1}))
'''


def test_cli_pretrain_builds_then_finds_the_weights(fake_recipe, capsys):
    from sslzoo import cli
    argv = ["pretrain", "fake_fill", "--set", "data.n_train=140", "--set", "backbone.width=4"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "fake_fill (test recipe) for backbone 'smallcnn' at 32 px:" in first and "already cached" not in first
    assert cli.main(argv) == 0
    assert "(already cached)" in capsys.readouterr().out and len(fake_recipe[0]) == 1
    assert cli.main(["pretrain", "fake_fil"]) == 2
    assert "Did you mean 'fake_fill'" in capsys.readouterr().err


def test_bench_builds_the_pretrained_backbone_once_before_its_parallel_runs(tmp_path, monkeypatch, capsys):
    from sslzoo import cli
    from tests.test_bench import TINY_FLAGS
    plugin = tmp_path / "recipe.py"
    plugin.write_text(RECIPE_PLUGIN)
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FILL_LOG", str(tmp_path / "fill.log"))
    out = tmp_path / "bench"
    argv = ["bench", "--algos", "supervised,fixmatch", "--dataset", "synthfer", "--labels", "35", "--seeds", "1",
            "--out", str(out), "--jobs", "2", "--plugin", str(plugin), "--no-plots", *TINY_FLAGS,
            "--set", "backbone.pretrained=plugin_fill"]
    assert cli.main(argv) == 0
    assert (tmp_path / "fill.log").read_text().splitlines() == [str(__import__("os").getpid())]   # here, once
    for log in out.glob("runs/*/*/seed0/log.txt"):
        assert "pretraining backbone" not in log.read_text()
    assert "pretraining backbone 'smallcnn' with 'plugin_fill'" in capsys.readouterr().out


def test_the_example_recipe_file_adds_simclr_faces_with_another_seed(monkeypatch):
    import sys
    from pathlib import Path
    from sslzoo.registry import load_plugin
    monkeypatch.setattr(PRETRAINED, "_items", dict(PRETRAINED._items))    # keep the registry as it was
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    load_plugin(Path(__file__).resolve().parents[1] / "examples" / "simclr_faces_seed1.py")
    base, other = PRETRAINED.get("simclr_faces"), PRETRAINED.get("simclr_faces_seed1")
    assert (other.seed, other.params, other.dataset, other.method) == (1, base.params, base.dataset, base.method)
    backbone = {"name": "smallcnn", "width": 16}
    assert weights_path("simclr_faces_seed1", backbone, 32, "cpu") != weights_path("simclr_faces", backbone, 32, "cpu")
