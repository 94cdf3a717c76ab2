"""The batched views against their definitions: every RandAugment operation against PIL (the
operations FixMatch, USB and the official Ada-CM code apply), Cutout, the weak crop and flip,
the sampling of operations and magnitudes, and the two orders of the strong view."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from sslzoo.benchmarks.augment_speed import pil_ops
from sslzoo.data import augment as A
from sslzoo.data import augment_cpu
from sslzoo.data.views import AugmentConfig, Views


def images(n: int = 6, size: int = 24, seed: int = 0, low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)
                            ).permute(0, 3, 1, 2).contiguous()


def pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def back(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


# The PIL reference of each operation (USB's randaugment.py calls exactly these).
PIL_OPS = pil_ops()


@pytest.mark.parametrize("name", [n for n, _, _ in A.RANDAUGMENT_OPS])
def test_each_operation_equals_pil(name):
    _, low, high = A.RANDAUGMENT_OPS[A.OP_INDEX[name]]
    x = torch.cat([images(8, 24, seed=1), images(4, 24, seed=2, low=40, high=180)])   # also low-contrast images
    v = torch.linspace(low, high, len(x), dtype=torch.float64)
    if name == "Solarize":
        v[0], v[1] = 0.0, 256.0       # the range's ends: everything inverted, nothing inverted
    out = A.OPS[name](x, v)
    ref = torch.stack([back(PIL_OPS[name](pil(img), float(m))) for img, m in zip(x, v)])
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, ref), (out != ref).sum()   # geometric ones too: PIL's own fixed-point arithmetic
    per_image = torch.stack([augment_cpu.OPS[name](img, float(m)) for img, m in zip(x, v)])   # the CPU route
    assert per_image.dtype == torch.uint8 and torch.equal(per_image, ref), (per_image != ref).sum()


@pytest.mark.parametrize("name", [n for n, _, _ in A.RANDAUGMENT_OPS])
def test_each_operation_is_the_same_on_both_routes_at_224_px(name):
    """At the paper's size too (where a geometric operation reaches far outside the image and
    the CPU route borders it by its corners): one image at a time equals the whole batch."""
    _, low, high = A.RANDAUGMENT_OPS[A.OP_INDEX[name]]
    x = torch.cat([images(3, 224, seed=3), images(2, 224, seed=4, low=60, high=160)])
    v = torch.tensor([low, high, low + 0.3 * (high - low), low + 0.61 * (high - low), 0.5 * (low + high)],
                     dtype=torch.float64)
    batched = A.OPS[name](x, v)
    assert torch.equal(torch.stack([augment_cpu.OPS[name](img, float(m)) for img, m in zip(x, v)]), batched)


def test_operations_have_the_fixmatch_pool_and_ranges():
    assert [n for n, _, _ in A.RANDAUGMENT_OPS] == [
        "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize", "Rotate",
        "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY"]
    ranges = {n: (lo, hi) for n, lo, hi in A.RANDAUGMENT_OPS}
    assert ranges["Rotate"] == (-30, 30) and ranges["ShearX"] == (-0.3, 0.3) and ranges["Solarize"] == (0, 256)
    assert ranges["Brightness"] == ranges["Color"] == ranges["Contrast"] == ranges["Sharpness"] == (0.05, 0.95)
    assert ranges["Posterize"] == (4, 8) and ranges["TranslateY"] == (-0.3, 0.3)


def test_magnitudes_are_uniform_over_each_whole_range_per_image():
    p = A.sample_randaugment(20000, 3, torch.Generator().manual_seed(0))
    ops, mags = p["ops"], p["mags"]
    assert ops.shape == mags.shape == (20000, 3)
    freq = torch.bincount(ops.flatten(), minlength=14).float() / ops.numel()
    assert torch.allclose(freq, torch.full((14,), 1 / 14), atol=0.006)        # drawn with replacement, uniformly
    for i, (name, lo, hi) in enumerate(A.RANDAUGMENT_OPS):
        m = mags[ops == i]
        assert m.min() >= lo and m.max() <= hi
        assert m.min() < lo + 0.02 * (hi - lo) and m.max() > hi - 0.02 * (hi - lo), name   # the whole range
        assert abs(m.mean().item() - (lo + hi) / 2) < 0.03 * (hi - lo), name
    assert len(set(mags[:, 0].tolist())) == 20000                             # per image, not per batch


def test_randaugment_applies_each_images_operations_in_order():
    x = images(10, 20, seed=3)
    gen = torch.Generator().manual_seed(4)
    p = A.sample_randaugment(10, 3, gen)
    out = A.randaugment(x, p)
    for i in range(10):
        img = pil(x[i])
        for k in range(3):
            name = A.RANDAUGMENT_OPS[int(p["ops"][i, k])][0]
            img = PIL_OPS[name](img, float(p["mags"][i, k]))
        assert torch.equal(out[i], back(img)), i


def test_cutout_as_usb_draws_and_fills_it():
    """Side U(0, 0.5) x size; corner int(max(0, c - v/2)) with c from numpy's uniform(size)
    (that is, in (1, size]); PIL's rectangle covers [x0, int(x0 + v)] inclusive."""
    size, n = 32, 4000
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    boxes = A.sample_cutout(n, size, gen)
    v = u[:, 0] * 0.5 * size
    cx = size + (1 - size) * u[:, 2]
    x0 = torch.clamp(cx - v / 2, min=0).floor()
    assert torch.equal(boxes[:, 2], x0.long())
    side = boxes[:, 3] - boxes[:, 2]
    assert side.max() <= size // 2 + 1 and side.min() >= 0
    x = torch.zeros(3, 3, size, size, dtype=torch.uint8)
    out = A.fill_boxes(x, boxes[:3])
    for i in range(3):   # against PIL's ImageDraw with the same float coordinates
        img = Image.new("RGB", (size, size))
        vx, vy = v[i].item(), v[i].item()
        X0, Y0 = int(boxes[i, 2]), int(boxes[i, 0])
        if vx > 0:
            ImageDraw.Draw(img).rectangle((X0, Y0, min(size, X0 + vx), min(size, Y0 + vy)), (125, 123, 114))
        assert torch.equal(out[i], back(img)), i


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_weak_crop_equals_pad_then_slice(mode):
    x = images(12, 10, seed=5)
    pad = 3
    offsets = torch.randint(-pad, pad + 1, (12, 2), generator=torch.Generator().manual_seed(0))
    offsets[0], offsets[1] = torch.tensor([-pad, pad]), torch.tensor([pad, -pad])   # extreme corners
    flip = torch.arange(12) % 2 == 0
    out = A.crop_flip(x, offsets, flip, mode)
    for i in range(12):
        padded = F.pad(x[i][None].float(), (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")[0]
        dy, dx = offsets[i].tolist()
        ref = padded[:, pad + dy:pad + dy + 10, pad + dx:pad + dx + 10].to(torch.uint8)
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref), i


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
@pytest.mark.parametrize("size,padding", [(14, 5), (32, 4), (224, 28)])
def test_the_crop_has_the_same_result_on_every_path(mode, size, padding):
    """The CPU path (at most four block copies per image) and the GPU path (one gather) are twins."""
    x = images(9, size, seed=9)
    p = A.sample_weak(9, size, padding, 0.7, True, torch.Generator().manual_seed(1))
    assert torch.equal(A._crop_flip_per_image(x, p["offsets"], p["flip"], mode),
                       A._crop_flip_gather(x, p["offsets"], p["flip"], mode))


def test_crop_probability_leaves_the_other_images_uncropped():
    p = A.sample_weak(4000, 32, 4, 0.5, True, torch.Generator().manual_seed(0))
    moved = (p["offsets"] != 0).any(dim=1).float().mean().item()
    assert 0.5 * (1 - 1 / 81) - 0.03 < moved < 0.5 * (1 - 1 / 81) + 0.03     # p = 0.5 (minus offsets of (0, 0))
    assert abs(p["flip"].float().mean().item() - 0.5) < 0.03


def test_strong_view_orders():
    """USB: crop, flip, RandAugment, Cutout; official Ada-CM: RandAugment + Cutout first."""
    x = images(5, 16, seed=6)
    for first in (False, True):
        views = Views(16, AugmentConfig(randaugment_n=3, randaugment_first=first, crop_padding=0.25))
        params = views.sample("strong", 5, torch.Generator().manual_seed(1))
        out = views.apply("strong", x, params)
        weak = lambda t: A.crop_flip(t, params["weak"]["offsets"], params["weak"]["flip"], "reflect")   # noqa: E731
        ra = lambda t: A.fill_boxes(A.randaugment(t, params["randaugment"]), params["cutout"])         # noqa: E731
        assert torch.equal(out, weak(ra(x)) if first else ra(weak(x)))


def test_views_are_pure_functions_of_the_generator_and_other_variants():
    x = images(4, 16, seed=7)
    views = Views(16, AugmentConfig())
    a = views.batch("strong", x, torch.Generator().manual_seed(3))
    b = views.batch("strong", x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, views.batch("strong", x, torch.Generator().manual_seed(4)))
    assert torch.equal(views.batch("plain", x, torch.Generator()), x)
    tv = Views(16, AugmentConfig(randaugment="torchvision", randaugment_n=2, randaugment_m=9))
    t1, t2 = (tv.batch("strong", x, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(t1, t2) and t1.dtype == torch.uint8
    none = Views(16, AugmentConfig(randaugment="none", cutout=0.0))
    p = none.sample("strong", 4, torch.Generator().manual_seed(2))
    assert set(p) == {"weak"}


def test_default_strong_view_changes_pixels_a_lot_more_than_torchvision_fixed_magnitude():
    """The literature's strong view draws magnitudes over whole ranges (rotations up to 30 degrees)."""
    gen = torch.Generator().manual_seed(0)
    p = A.sample_randaugment(5000, 2, gen)
    rot = p["mags"][p["ops"] == A.OP_INDEX["Rotate"]].abs()
    assert rot.max() > 28 and (rot > 10).float().mean() > 0.6   # torchvision's magnitude 10 rotates by 10 degrees only


def test_bad_settings_are_user_errors():
    from sslzoo.errors import SSLZooError
    with pytest.raises(SSLZooError, match="crop_padding"):
        Views(8, AugmentConfig(crop_padding=1.0))
    with pytest.raises(SSLZooError, match="augment.randaugment must be one of"):
        Views(8, AugmentConfig(randaugment="fixmath"))
    with pytest.raises(SSLZooError, match="augment.device must be one of"):
        Views(8, AugmentConfig(device="gpu"))


def test_nothing_reads_device_values_while_applying(monkeypatch):
    """The grouping comes from the host: applying a view on a GPU makes no .item()/.tolist() call.
    (On the CPU the crop, RandAugment and Cutout read their CPU parameters per image; their GPU
    twins, checked here, are equal to them by the *_same_result_on_every_path tests.)"""
    monkeypatch.setattr(A, "CPU_ROUTES", False)       # the GPU routes, here on the CPU
    x = images(8, 16, seed=8)
    views = Views(16, AugmentConfig(randaugment_n=3))
    params = views.sample("strong", 8, torch.Generator().manual_seed(0))
    calls = []
    for name in ("item", "tolist", "__bool__", "nonzero"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    views.apply("strong", x, params)
    assert calls == []


def test_randaugment_has_the_same_result_on_every_path():
    """The CPU path (each image through its own operations) and the GPU path (each operation once
    on all images that drew it, per slot) are twins."""
    x = images(14, 20, seed=10)
    p = A.sample_randaugment(14, 3, torch.Generator().manual_seed(2))
    assert torch.equal(A._randaugment_per_image(x, p), A._randaugment_grouped(x, p))


def test_cutout_has_the_same_result_on_every_path():
    x = images(9, 20, seed=11)
    boxes = A.sample_cutout(9, 20, torch.Generator().manual_seed(3))
    assert torch.equal(A._fill_boxes_slices(x, boxes, A.CUTOUT_FILL), A._fill_boxes_masked(x, boxes, A.CUTOUT_FILL))


@pytest.mark.parametrize("randaugment_first", [False, True])
def test_every_view_has_the_same_result_on_both_routes(randaugment_first, monkeypatch):
    """The CPU routes (slices, one image at a time) and the GPU routes (one batched kernel per
    step), both run here on the CPU, give the same pixels for whole strong views."""
    x = images(24, 20, seed=12)
    views = Views(20, AugmentConfig(randaugment_n=3, randaugment_first=randaugment_first, crop_prob=0.7,
                                    crop_padding_mode="zeros" if randaugment_first else "reflect"))
    params = views.sample("strong", 24, torch.Generator().manual_seed(5))
    cpu = views.apply("strong", x, params)
    monkeypatch.setattr(A, "CPU_ROUTES", False)
    assert torch.equal(cpu, views.apply("strong", x, params))


def test_rows_are_laid_out_channels_first_byte_for_byte():
    """The loader's layout step (numpy's transposing copy) equals torch's permute, contiguous."""
    from sslzoo.data.views import channels_first
    rows = np.random.default_rng(0).integers(0, 256, (3, 7, 5, 3), dtype=np.uint8)
    out = channels_first(rows)
    assert out.dtype == torch.uint8 and out.is_contiguous() and out.shape == (3, 3, 7, 5)
    assert torch.equal(out, torch.from_numpy(rows).permute(0, 3, 1, 2))
