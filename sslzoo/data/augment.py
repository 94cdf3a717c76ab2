"""Weak and strong views of a whole uint8 batch at once, with per-image parameters, on any device.

Weak view: random crop of a padded copy (reflect padding as USB, or zeros as torchvision's
``RandomCrop`` default and the official Ada-CM code) applied with probability ``crop_prob``,
then a horizontal flip with probability 1/2.

Strong view: the RandAugment variant of FixMatch (Sohn et al. 2020, Appendix: "RandAugment
... with the magnitude sampled uniformly at random for each op"), as USB
(``semilearn/datasets/augmentation/randaugment.py``) and the official Ada-CM code
(``dataset/randaugment.py``) build it: N operations drawn with replacement from the 14 below,
each with its magnitude drawn uniformly over the operation's whole range, per image, then
Cutout of a grey (125, 123, 114) square whose side is U(0, 0.5) of the image side.

    AutoContrast  Brightness [.05,.95]  Color [.05,.95]  Contrast [.05,.95]  Equalize  Identity
    Posterize [4,8] bits  Rotate [-30,30] deg  Sharpness [.05,.95]  ShearX/Y [-.3,.3]
    Solarize [0,256]  TranslateX/Y [-.3,.3] of the side

Every operation reproduces its PIL definition (ImageOps / ImageEnhance / Image.transform with
nearest resampling and black fill), pixel for pixel: point operations through per-image
lookup tables, Color and Sharpness with PIL's integer luma and SMOOTH kernel and float32
blending, geometric operations as one nearest-neighbour gather per operation
(tests/test_augment.py compares each with PIL), geometric ones included: they use PIL's own
16.16 fixed-point source coordinates (and its integer shift for translations).

Why batched tensor ops and not PIL per image: the per-image Python of a PIL pipeline is what
starves a GPU at 224 px. Here every operation runs on all the images that drew it at once
(the batch is grouped by operation, in an order computed on the host from parameters drawn
on the host), on the CPU inside loader workers or on the training GPU, without a host read of
a device tensor. Kornia's and torchvision v2's batched ops were considered: torchvision v2
applies one random operation to the whole batch, and neither reproduces the PIL semantics
(integer blending, lookup-table equalize, nearest fill) that FixMatch/USB numbers come from.
On the CPU the crop, RandAugment and Cutout take a per-image route instead (:mod:`.augment_cpu`:
the same operations with host-number parameters, measured faster there); both routes give
the same pixels.

Randomness: every parameter is drawn from the ``torch.Generator`` handed in (the data
pipeline seeds one per step and rank), in a fixed order, on the CPU; the same parameters give
the same view on every device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import augment_cpu

# (name, low, high): the operation pool and magnitude ranges of FixMatch's RandAugment (USB's augment_list)
RANDAUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("AutoContrast", 0.0, 1.0), ("Brightness", 0.05, 0.95), ("Color", 0.05, 0.95), ("Contrast", 0.05, 0.95),
    ("Equalize", 0.0, 1.0), ("Identity", 0.0, 1.0), ("Posterize", 4.0, 8.0), ("Rotate", -30.0, 30.0),
    ("Sharpness", 0.05, 0.95), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0.0, 256.0),
    ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3),
)
OP_INDEX = {name: i for i, (name, _, _) in enumerate(RANDAUGMENT_OPS)}
CUTOUT_FILL = (125, 123, 114)
CUTOUT_MAX = 0.5
# On the CPU some steps take a per-image route (slices, one image at a time: measured faster there);
# on a GPU every step is one batched kernel. Both give the same pixels (tests/test_augment.py);
# turning this off runs the GPU routes on the CPU (how the tests check them without a GPU).
CPU_ROUTES = True


def _cpu_route(x: Tensor) -> bool:
    return CPU_ROUTES and x.device.type == "cpu"


# ----------------------------------------------------------------------------- weak: crop + flip

def sample_weak(n: int, size: int, padding: int, crop_prob: float, flip: bool,
                gen: torch.Generator) -> dict[str, Tensor]:
    """Crop offsets (dy, dx) in [-padding, padding] (zero where the crop is not applied) and flips."""
    offsets = torch.randint(-padding, padding + 1, (n, 2), generator=gen) if padding else torch.zeros(n, 2, dtype=torch.long)
    if crop_prob < 1.0:
        offsets = offsets * (torch.rand(n, generator=gen) < crop_prob).long()[:, None]
    flips = torch.rand(n, generator=gen) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return {"offsets": offsets, "flip": flips}


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map positions in a reflect-padded axis back to the original axis (torch/numpy 'reflect')."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(x: Tensor, offsets: Tensor, flip: Tensor, padding_mode: str = "reflect") -> Tensor:
    """Crop each image at (dy, dx) = ``offsets[i]`` from a padded copy, then flip it if ``flip[i]``.

    Equivalent to ``F.pad(img, (p,)*4, mode)[:, p+dy : p+dy+H, p+dx : p+dx+W]`` (then ``.flip(-1)``)
    for |dy|, |dx| < the image side. On the CPU: per image, at most four block copies of the image
    itself, no padded copy (:func:`augment_cpu.crop_flip`); on a GPU: one gather on uint8 for the
    whole batch.
    """
    if padding_mode not in ("reflect", "zeros"):
        raise ValueError(f"padding_mode must be 'reflect' or 'zeros'; got {padding_mode!r}")
    if _cpu_route(x):
        return _crop_flip_per_image(x, offsets, flip, padding_mode)
    return _crop_flip_gather(x, offsets, flip, padding_mode)


def _crop_flip_per_image(x: Tensor, offsets: Tensor, flip: Tensor, padding_mode: str) -> Tensor:
    return augment_cpu.crop_flip(x, offsets.tolist(), flip.tolist(), padding_mode)   # CPU parameters: host numbers


def _crop_flip_gather(x: Tensor, offsets: Tensor, flip: Tensor, padding_mode: str) -> Tensor:
    n, c, h, w = x.shape
    offsets, flip = offsets.to(x.device), flip.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + offsets[:, :1]                     # [N, H]
    cols = torch.arange(w, device=x.device)[None, :] + offsets[:, 1:]                     # [N, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if padding_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        inside = None
    else:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    pixel = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, pixel).view(n, c, h, w)   # a flat gather: ~4x faster than x[i, :, r, c]
    return out if inside is None else out * inside[:, None].to(out.dtype)


# ----------------------------------------------------------------------------- strong: RandAugment

def sample_randaugment(n: int, num_ops: int, gen: torch.Generator) -> dict[str, Any]:
    """Per image: ``num_ops`` operations (with replacement) and their magnitudes (uniform in range).

    Also the host-side grouping used to apply each operation to all its images at once:
    for slot k, ``order[k]`` lists the images grouped by operation and ``counts[k]`` the group
    sizes (Python ints, so a device never has to be asked how many images drew what).
    """
    ops = torch.randint(len(RANDAUGMENT_OPS), (n, num_ops), generator=gen)
    unit = torch.rand(n, num_ops, generator=gen, dtype=torch.float64)
    low = torch.tensor([lo for _, lo, _ in RANDAUGMENT_OPS], dtype=torch.float64)
    high = torch.tensor([hi for _, _, hi in RANDAUGMENT_OPS], dtype=torch.float64)
    mags = low[ops] + (high[ops] - low[ops]) * unit
    order = torch.argsort(ops, dim=0, stable=True).t().contiguous() if n else torch.zeros(num_ops, 0, dtype=torch.long)
    counts = [torch.bincount(ops[:, k], minlength=len(RANDAUGMENT_OPS)).tolist() for k in range(num_ops)]
    return {"ops": ops, "mags": mags, "order": order, "counts": counts}


def sample_cutout(n: int, size: int, gen: torch.Generator, max_fraction: float = CUTOUT_MAX) -> Tensor:
    """Cutout boxes [N, 4] = (y0, y1, x0, x1), end-exclusive, as USB's ``CutoutAbs`` draws them.

    Side v = U(0, max_fraction) * size; the corner is ``int(max(0, c - v/2))`` for a centre drawn
    as ``np.random.uniform(size)`` (numpy reads that as uniform(low=size, high=1): a centre in
    (1, size], a quirk reproduced here); PIL's rectangle covers [x0, int(x0 + v)] inclusive.
    """
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    v = u[:, 0] * max_fraction * size
    cy, cx = size + (1 - size) * u[:, 1], size + (1 - size) * u[:, 2]
    y0, x0 = (cy - v / 2).clamp_min(0).floor(), (cx - v / 2).clamp_min(0).floor()
    y1, x1 = (y0 + v).clamp_max(size).floor() + 1, (x0 + v).clamp_max(size).floor() + 1
    boxes = torch.stack([y0, y1.clamp_max(size), x0, x1.clamp_max(size)], dim=1).long()
    return torch.where((v > 0)[:, None], boxes, torch.zeros_like(boxes))   # v = 0: PIL's Cutout returns the image


def fill_boxes(x: Tensor, boxes: Tensor, value: tuple[int, ...] | int = CUTOUT_FILL) -> Tensor:
    """Set rows [y0, y1) x columns [x0, x1) of each image to ``value`` (per channel); empty boxes change nothing.

    On the CPU a slice per image; on a GPU one masked select for the batch.
    """
    values = value if isinstance(value, tuple) else (value,) * x.shape[1]
    return _fill_boxes_slices(x, boxes, values) if _cpu_route(x) else _fill_boxes_masked(x, boxes, values)


def _fill_boxes_slices(x: Tensor, boxes: Tensor, values: tuple[int, ...]) -> Tensor:
    out = x.clone()
    fill = torch.tensor(values, dtype=x.dtype).view(-1, 1, 1)
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):   # CPU parameters: host numbers
        out[i, :, y0:y1, x0:x1] = fill
    return out


def _fill_boxes_masked(x: Tensor, boxes: Tensor, values: tuple[int, ...]) -> Tensor:
    n, c, h, w = x.shape
    boxes = boxes.to(x.device)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys[None, :] >= boxes[:, :1]) & (ys[None, :] < boxes[:, 1:2])           # [N, H]
    in_cols = (xs[None, :] >= boxes[:, 2:3]) & (xs[None, :] < boxes[:, 3:4])          # [N, W]
    inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]                      # [N, 1, H, W]
    fill = torch.stack([torch.full((), v, dtype=x.dtype, device=x.device) for v in values])   # fills, no copy
    return torch.where(inside, fill.view(1, c, 1, 1), x)


# -- point operations: one lookup table per image and channel (exactly PIL's) ------------------

def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """uint8 [k, C, H, W] through per-image, per-channel tables ``lut`` [k, C, 256] (uint8):
    one ``index_select`` into the tables laid end to end (int32 indices: the cheapest lookup)."""
    k, c, h, w = x.shape
    base = torch.arange(0, k * c * 256, 256, device=x.device, dtype=torch.int32).view(k, c, 1, 1)
    return lut.reshape(-1).index_select(0, (x.int() + base).view(-1)).view(k, c, h, w)


def _levels(x: Tensor) -> Tensor:
    return torch.arange(256, device=x.device, dtype=torch.float32)


def _blend_lut(degenerate: Tensor, factor: Tensor, levels: Tensor) -> Tensor:
    """PIL's Image.blend for a constant degenerate: trunc(d + f (i - d)) in float32, per table entry."""
    d, f = degenerate.float()[..., None], factor.float().view(-1, *([1] * (degenerate.dim() - 1)), 1)
    return (d + f * (levels - d)).clamp(0, 255).trunc().to(torch.uint8)


def autocontrast(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.autocontrast: stretch each channel's [min, max] to [0, 255] (int() truncation)."""
    k, c = x.shape[:2]
    flat = x.reshape(k, c, -1)
    lo, hi = flat.amin(dim=2).double(), flat.amax(dim=2).double()
    scale = 255.0 / (hi - lo).clamp_min(1)
    lut = (_levels(x).double() * scale[..., None] - (lo * scale)[..., None]).trunc().clamp(0, 255)
    lut = torch.where((hi > lo)[..., None], lut, _levels(x).double())
    return _apply_lut(x, lut.to(torch.uint8))


def equalize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.equalize: per channel, lut[i] = (step // 2 + #pixels below i) // step."""
    k, c = x.shape[:2]
    flat = x.reshape(k * c, -1).long()
    hist = torch.zeros(k * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = torch.where(hist > 0, torch.arange(256, device=x.device), -1).amax(dim=1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last.clamp_min(0))) // 255
    below = hist.cumsum(1) - hist
    lut = (step // 2 + below) // step.clamp_min(1)
    lut = torch.where(step > 0, lut.clamp(0, 255), torch.arange(256, device=x.device))
    return _apply_lut(x, lut.view(k, c, 256).to(torch.uint8))


def posterize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.posterize with int(v) bits (v in [4, 8])."""
    bits = v.long().clamp(1, 8)
    mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8).view(-1, 1, 1, 1)
    return x & mask


def solarize(x: Tensor, v: Tensor) -> Tensor:
    """ImageOps.solarize: invert every value >= the threshold v (in [0, 256]), as a lookup table
    (for an integer pixel value, i < v exactly when i < ceil(v))."""
    levels = torch.arange(256, device=x.device, dtype=torch.int32)
    threshold = torch.ceil(v.double()).int().view(-1, 1)
    lut = torch.where(levels < threshold, levels, 255 - levels).to(torch.uint8)             # [k, 256]
    return _apply_lut(x, lut[:, None].expand(-1, x.shape[1], -1))


def brightness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Brightness: blend with black by factor v."""
    lut = _blend_lut(torch.zeros(x.shape[:2], device=x.device), v, _levels(x))
    return _apply_lut(x, lut)


def _luma(x: Tensor) -> Tensor:
    """PIL's RGB -> L conversion: (R 19595 + G 38470 + B 7471 + 32768) >> 16, exact integers."""
    xi = x.int()
    return (xi[:, 0] * 19595 + xi[:, 1] * 38470 + xi[:, 2] * 7471 + 32768) >> 16


def contrast(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Contrast: blend with the image's mean grey level, int(mean + 0.5)."""
    mean = (_luma(x).double().flatten(1).mean(dim=1) + 0.5).floor()
    lut = _blend_lut(mean[:, None].expand(-1, x.shape[1]), v, _levels(x))
    return _apply_lut(x, lut)


def _blend(degenerate: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """PIL's Image.blend(degenerate, x, v) for v in [0, 1]: trunc(d + v (x - d)) in float32 (the
    result lies in [0, 255], where the cast to uint8 is the truncation)."""
    d = degenerate.float()
    diff = x.float().sub_(d)
    return diff.mul_(v.float().view(-1, 1, 1, 1)).add_(d).to(torch.uint8)


def color(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Color: blend with the image's own grey version (PIL's integer luma)."""
    return _blend(_luma(x)[:, None].expand_as(x), x, v)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, /13, rounded; borders kept).

    The 3x3 sum is two separable 3-tap sums in int16 (exact: at most 13 x 255), plus 4 x the centre.
    """
    xi = x.to(torch.int16)
    cols = xi[..., :-2] + xi[..., 1:-1] + xi[..., 2:]                         # [k, C, H, W-2]
    box = cols[..., :-2, :] + cols[..., 1:-1, :] + cols[..., 2:, :]           # [k, C, H-2, W-2]
    s = box + 4 * xi[..., 1:-1, 1:-1]
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = torch.div(s * 2 + 13, 26, rounding_mode="floor").to(x.dtype)   # round(s / 13)
    return _blend(smooth, x, v)


def identity(x: Tensor, v: Tensor) -> Tensor:
    return x


# -- geometric operations: nearest-neighbour gathers with PIL's own integer coordinates ----------

def _gather_or_fill(x: Tensor, xin: Tensor, yin: Tensor, fill: int = 0) -> Tensor:
    """out[..., y, x] = x[..., yin, xin] where (yin, xin) lies in the image, else ``fill``."""
    k, c, h, w = x.shape
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    index = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(k, 1, h * w).expand(k, c, h * w).long()
    out = x.reshape(k, c, h * w).gather(2, index).view(k, c, h, w)
    return out * inside[:, None].to(out.dtype) if fill == 0 else torch.where(inside[:, None], out, fill)


def affine_fixed(x: Tensor, a: Tensor) -> Tensor:
    """Image.transform(AFFINE, NEAREST) as PIL computes it (``affine_fixed`` in Geometry.c): the
    coefficients in 16.16 fixed point, FIX(v) = floor(v 65536 + 1/2), the source pixel
    (A2 + x A0 + y A1) >> 16 with the half-pixel offset folded into A2 (and likewise for y).
    ``a`` [k, 6] float64 holds PIL's (a, b, c, d, e, f); black fill outside the image."""
    k, c, h, w = x.shape
    fix = lambda t: torch.floor(t * 65536.0 + 0.5).to(torch.int32)   # noqa: E731
    a0, a1, a3, a4 = fix(a[:, 0]), fix(a[:, 1]), fix(a[:, 3]), fix(a[:, 4])
    a2 = fix(a[:, 2] + a[:, 0] * 0.5 + a[:, 1] * 0.5)
    a5 = fix(a[:, 5] + a[:, 3] * 0.5 + a[:, 4] * 0.5)
    xs = torch.arange(w, device=x.device, dtype=torch.int32).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=torch.int32).view(1, h, 1)
    col = lambda v: v.view(k, 1, 1)   # noqa: E731
    xin = (col(a2) + ys * col(a1) + xs * col(a0)) >> 16
    yin = (col(a5) + ys * col(a4) + xs * col(a3)) >> 16
    return _gather_or_fill(x, xin, yin)


def _coefficients(v: Tensor, a: tuple[float, ...], scale: tuple[float, ...]) -> Tensor:
    """[k, 6] affine coefficients a + v * scale, built from ``v`` by arithmetic (a tensor made from
    Python numbers would be a host-to-device copy on a GPU)."""
    v = v.double()
    return torch.stack([v * s + b for b, s in zip(a, scale)], dim=1)


def rotate(x: Tensor, v: Tensor) -> Tensor:
    """Image.rotate(v degrees) about the centre: PIL's inverse matrix (rounded to 15 decimals,
    which moves no coefficient at fixed-point precision), then its fixed-point transform."""
    h, w = x.shape[-2:]
    t = -torch.deg2rad(v.double())
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2.0, h / 2.0
    return affine_fixed(x, torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1))


def shear_x(x: Tensor, v: Tensor) -> Tensor:
    return affine_fixed(x, _coefficients(v, (1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, 0)))


def shear_y(x: Tensor, v: Tensor) -> Tensor:
    return affine_fixed(x, _coefficients(v, (1, 0, 0, 0, 1, 0), (0, 0, 0, 1, 0, 0)))


def _translate(x: Tensor, shift: Tensor, axis: int) -> Tensor:
    """A translation is PIL's scaling path (ImagingScaleAffine): source = output + floor(t + 1/2),
    an integer shift per image (t = v x side, in float64 as PIL's doubles)."""
    k, c, h, w = x.shape
    s = torch.floor(shift + 0.5).to(torch.int32).view(k, 1, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.int32).view(1, 1, w).expand(k, h, w)
    ys = torch.arange(h, device=x.device, dtype=torch.int32).view(1, h, 1).expand(k, h, w)
    return _gather_or_fill(x, xs + s, ys) if axis == 1 else _gather_or_fill(x, xs, ys + s)


def translate_x(x: Tensor, v: Tensor) -> Tensor:
    return _translate(x, v.double() * x.shape[-1], 1)


def translate_y(x: Tensor, v: Tensor) -> Tensor:
    return _translate(x, v.double() * x.shape[-2], 0)


OPS = {"AutoContrast": autocontrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
       "Equalize": equalize, "Identity": identity, "Posterize": posterize, "Rotate": rotate,
       "Sharpness": sharpness, "ShearX": shear_x, "ShearY": shear_y, "Solarize": solarize,
       "TranslateX": translate_x, "TranslateY": translate_y}
_FUNCTIONS = [OPS[name] for name, _, _ in RANDAUGMENT_OPS]
_CPU_FUNCTIONS = [augment_cpu.OPS[name] for name, _, _ in RANDAUGMENT_OPS]


def randaugment(x: Tensor, params: dict[str, Any]) -> Tensor:
    """Apply each image's operations in its drawn order.

    On a GPU every operation runs once per slot on all the images that drew it (few, large
    kernels). On the CPU each image goes through its own operations one after the other
    (:mod:`.augment_cpu`: the same operations, parameters as host numbers), whose temporaries
    stay in the CPU's caches (measured 2-4x faster than whole-group calls for the colour
    operations at 224 px, one thread).
    """
    if x.shape[0] == 0:
        return x
    if _cpu_route(x):
        return _randaugment_per_image(x, params)
    return _randaugment_grouped(x, params)


def _randaugment_per_image(x: Tensor, params: dict[str, Any]) -> Tensor:
    ops, mags = params["ops"].tolist(), params["mags"].tolist()      # CPU parameters: host numbers, no device read
    x = x.contiguous()                                                # the per-image operations view their planes flat
    out = torch.empty_like(x)
    for i, (row, magnitudes) in enumerate(zip(ops, mags)):
        img = x[i]
        for op, magnitude in zip(row, magnitudes):
            img = _CPU_FUNCTIONS[op](img, magnitude)
        out[i] = img
    return out


def _randaugment_grouped(x: Tensor, params: dict[str, Any]) -> Tensor:
    """Slot by slot, every operation once on all images that drew it: the images are put in the
    slot's ``order`` (grouped by operation) so each group is a contiguous slice, the group sizes
    coming from the host (``counts``): no device read."""
    order, mags = params["order"].to(x.device), params["mags"].to(x.device)
    for k, counts in enumerate(params["counts"]):
        idx = order[k]
        grouped, v = x.index_select(0, idx), mags[idx, k]
        parts, start = [], 0
        for op, count in zip(_FUNCTIONS, counts):
            if count:
                parts.append(op(grouped[start:start + count], v[start:start + count]))
                start += count
        x = torch.empty_like(x).index_copy_(0, idx, torch.cat(parts))
    return x


# ----------------------------------------------------------------------------- the views

@dataclass(frozen=True)
class ViewRecipe:
    """How the weak and strong views of one run are made (from the ``augment`` config section)."""

    size: int
    padding: int
    padding_mode: str = "reflect"
    crop_prob: float = 1.0
    flip: bool = True
    randaugment: str = "fixmatch"      # fixmatch | torchvision | none
    num_ops: int = 2
    magnitude: int = 10                # torchvision only
    randaugment_first: bool = False
    cutout: float = CUTOUT_MAX

    def sample(self, view: str, n: int, gen: torch.Generator) -> dict[str, Any]:
        """The parameters of ``view`` for ``n`` images, drawn from ``gen`` on the CPU."""
        if view == "plain":
            return {}
        params: dict[str, Any] = {"weak": sample_weak(n, self.size, self.padding, self.crop_prob, self.flip, gen)}
        if view == "weak":
            return params
        if view != "strong":
            raise ValueError(f"unknown view {view!r}; expected plain, weak or strong")
        if self.randaugment == "fixmatch" and self.num_ops > 0:
            params["randaugment"] = sample_randaugment(n, self.num_ops, gen)
        elif self.randaugment == "torchvision" and self.num_ops > 0:
            params["seed"] = int(torch.randint(2 ** 62, (1,), generator=gen))
        if self.cutout > 0:
            params["cutout"] = sample_cutout(n, self.size, gen, self.cutout)
        return params

    def apply(self, view: str, x: Tensor, params: dict[str, Any]) -> Tensor:
        """``view`` of the uint8 [N, 3, H, W] batch ``x`` (any device) with ``params`` from :meth:`sample`."""
        if view == "plain" or x.shape[0] == 0:
            return x.contiguous()
        if view == "strong" and self.randaugment_first:   # the official Ada-CM order: RandAugment + Cutout, then weak
            return self._weak(self._randaugment(x, params), params)
        x = self._weak(x, params)
        return self._randaugment(x, params) if view == "strong" else x

    def _weak(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        weak = params["weak"]
        if not self.padding and not self.flip:
            return x.contiguous()
        return crop_flip(x, weak["offsets"], weak["flip"], self.padding_mode)

    def _randaugment(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        if "randaugment" in params:
            x = randaugment(x.contiguous(), params["randaugment"])
        elif "seed" in params:
            x = torchvision_randaugment(x, self.num_ops, self.magnitude, params["seed"])
        if "cutout" in params:
            x = fill_boxes(x, params["cutout"])
        return x


def torchvision_randaugment(x: Tensor, num_ops: int, magnitude: int, seed: int) -> Tensor:
    """torchvision's RandAugment (every op at a fixed magnitude of 30 levels), per image, seeded.

    Kept as the ``augment.randaugment=torchvision`` option (sslzoo's strong view until late 2026).
    It draws from torch's global generator, so it runs under a forked, seeded stream.
    """
    from torchvision.transforms import v2
    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return torch.stack([op(img) for img in x])


def to_device(params: Any, device: torch.device) -> Any:
    """View parameters (nested dicts/lists of tensors and Python numbers) on ``device``, copied
    without blocking (the loader pins them), so applying them there never waits on the host."""
    if isinstance(params, Tensor):
        return params.to(device, non_blocking=True)
    if isinstance(params, dict):
        return {k: to_device(v, device) for k, v in params.items()}
    if isinstance(params, list):
        return [to_device(v, device) for v in params]
    return params
