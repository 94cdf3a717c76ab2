"""The CPU route of :mod:`sslzoo.data.augment`: one image at a time, parameters as host numbers.

Same operations, same pixels as the batched tensor route (``tests/test_augment.py`` compares
the two and both with PIL), written for where they run: in a loader worker, one thread, an
image of 224 px whose temporaries barely fit the caches. Why a second route and not the batched
one on the CPU (measured at 224 px, one thread, ``benchmarks/augment_speed.py``):

* per-image parameters are Python numbers here, so nothing builds one-element tensors (the
  batched route's per-image arithmetic was most of its ``aten::copy_`` calls on a CPU);
* uint8 arithmetic is fast in torch and float -> uint8 casts are slow (~4x a float -> int16 ->
  uint8 cast), so results are cast through int16; a cast that only truncates a value in
  [0, 255] gives the same byte either way;
* geometric operations gather from a zero-bordered copy just large enough for the image's
  corners (the affine map's extremes), so no inside-mask or clamp is computed per pixel;
* float32 arithmetic where it is exact: PIL's luma R 19595 + G 38470 + B 7471 + 32768 stays
  below 2^24 and so does the SMOOTH filter's sum, so both are exact integers in float32;
* the weak crop of a padded image is at most four block copies of the image, no padded copy.

Each operation in ``OPS`` takes a uint8 image [C, H, W] (contiguous) and returns a new one
(Identity returns its input); ``crop_flip`` takes the batch [N, C, H, W].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_UINT8 = torch.uint8


def _to_uint8(x: Tensor) -> Tensor:
    """Truncate floats in [0, 255] to uint8 (through int16: the direct float -> uint8 cast is slow)."""
    return x.to(torch.int16).to(_UINT8)


def _table_index(x: Tensor) -> Tensor:
    """Each pixel's position in per-channel tables laid end to end: value + 256 x channel, flat."""
    c = x.shape[0]
    return x.int().view(c, -1).add_(torch.arange(0, c * 256, 256, dtype=torch.int32).view(c, 1)).view(-1)


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """x [C, H, W] through per-channel tables ``lut`` [C, 256] (uint8), one ``index_select``."""
    return lut.reshape(-1).index_select(0, _table_index(x)).view_as(x)


def _luma(xf: Tensor) -> Tensor:
    """PIL's RGB -> L, (R 19595 + G 38470 + B 7471 + 32768) >> 16, on float32 channels (exact)."""
    return (xf[0] * 19595).add_(xf[1], alpha=38470).add_(xf[2], alpha=7471).add_(32768).mul_(1 / 65536).floor_()


def _blend(degenerate: Tensor | float, xf: Tensor, v: float) -> Tensor:
    """PIL's Image.blend(degenerate, x, v): trunc(d + v (x - d)) in float32 (the order of the batched route)."""
    return _to_uint8((xf - degenerate).mul_(v).add_(degenerate))


def autocontrast(x: Tensor, v: float) -> Tensor:
    flat = x.view(x.shape[0], -1)
    lo, hi = flat.amin(dim=1).double(), flat.amax(dim=1).double()   # (aminmax is ~10x slower on uint8)
    scale = 255.0 / (hi - lo).clamp_min(1)
    levels = torch.arange(256, dtype=torch.float64)
    lut = (levels * scale[:, None] - (lo * scale)[:, None]).trunc().clamp(0, 255)
    lut = torch.where((hi > lo)[:, None], lut, levels)
    return _apply_lut(x, lut.to(_UINT8))


def brightness(x: Tensor, v: float) -> Tensor:
    return _to_uint8(x.float().mul_(v))          # blend with black: 0 + v (x - 0)


def color(x: Tensor, v: float) -> Tensor:
    xf = x.float()
    return _blend(_luma(xf), xf, v)


def contrast(x: Tensor, v: float) -> Tensor:
    xf = x.float()
    mean = math.floor(float(_luma(xf).double().mean()) + 0.5)
    return _blend(float(mean), xf, v)


def equalize(x: Tensor, v: float) -> Tensor:
    c = x.shape[0]
    index = _table_index(x)
    hist = torch.bincount(index, minlength=c * 256).view(c, 256)
    levels = torch.arange(256)
    last = torch.where(hist > 0, levels, -1).amax(dim=1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last.clamp_min(0))) // 255
    lut = (step // 2 + hist.cumsum(1) - hist) // step.clamp_min(1)
    lut = torch.where(step > 0, lut.clamp(0, 255), levels).to(_UINT8)
    return lut.view(-1).index_select(0, index).view_as(x)   # _apply_lut, reusing the histogram's index


def identity(x: Tensor, v: float) -> Tensor:
    return x


def posterize(x: Tensor, v: float) -> Tensor:
    bits = min(8, max(1, int(v)))
    return x & (255 - (2 ** (8 - bits) - 1))


def solarize(x: Tensor, v: float) -> Tensor:
    threshold = math.ceil(v)                     # for an integer pixel i: i < v exactly when i < ceil(v)
    if threshold > 255:
        return x.clone()
    if threshold <= 0:
        return 255 - x
    xi = x.to(torch.int16)                       # (a uint8 comparison with a scalar is ~10x slower)
    below = (xi - threshold).bitwise_right_shift_(8)           # -1 where x < threshold, else 0
    return xi.bitwise_xor_(below.bitwise_not_().bitwise_and_(255)).to(_UINT8)   # x ^ 255 = 255 - x


def sharpness(x: Tensor, v: float) -> Tensor:
    """Blend with PIL's SMOOTH (3x3, centre 5, /13 rounded half up; borders kept), sums in float32."""
    xf = x.float()
    cols = xf[..., :-2] + xf[..., 1:-1] + xf[..., 2:]
    s = (cols[..., :-2, :] + cols[..., 1:-1, :] + cols[..., 2:, :]).add_(xf[..., 1:-1, 1:-1], alpha=4)
    smooth = xf.clone()
    smooth[..., 1:-1, 1:-1] = s.mul_(2).add_(13).div_(26).floor_()   # (2s + 13) is odd: never on an integer
    return _blend(smooth, xf, v)


def _fix(value: float) -> int:
    return math.floor(value * 65536.0 + 0.5)


def affine(x: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """Image.transform(AFFINE, NEAREST) in PIL's 16.16 fixed point (see ``augment.affine_fixed``).

    The source coordinates are affine in (x, y), so the image's four corners bound them: the
    source is zero-bordered to just that range and every output pixel is one gather, no mask.
    """
    c, h, w = x.shape
    a, b, cc, d, e, f = coefficients
    a0, a1, a3, a4 = _fix(a), _fix(b), _fix(d), _fix(e)
    a2, a5 = _fix(cc + a * 0.5 + b * 0.5), _fix(f + d * 0.5 + e * 0.5)
    corners = [(yy, xx) for yy in (0, h - 1) for xx in (0, w - 1)]
    xs_c = [(a2 + yy * a1 + xx * a0) >> 16 for yy, xx in corners]
    ys_c = [(a5 + yy * a4 + xx * a3) >> 16 for yy, xx in corners]
    left, right = max(0, -min(xs_c)), max(0, max(xs_c) - (w - 1))
    top, bottom = max(0, -min(ys_c)), max(0, max(ys_c) - (h - 1))
    width, height = w + left + right, h + top + bottom
    src = torch.zeros((c, height, width), dtype=x.dtype)
    src[:, top:top + h, left:left + w] = x
    xs = torch.arange(w, dtype=torch.int32)
    ys = torch.arange(h, dtype=torch.int32).view(h, 1)
    xin = ((ys * a1 + (a2 + (left << 16))) + xs * a0).bitwise_right_shift_(16)    # + left: exact, a multiple of 2^16
    yin = ((ys * a4 + (a5 + (top << 16))) + xs * a3).bitwise_right_shift_(16)
    index = yin.mul_(width).add_(xin).view(1, -1).long().expand(c, -1)
    return src.view(c, -1).gather(1, index).view(c, h, w)


def rotate(x: Tensor, v: float) -> Tensor:
    h, w = x.shape[-2:]
    t = -math.radians(v)
    cos, sin = math.cos(t), math.sin(t)
    cx, cy = w / 2.0, h / 2.0
    return affine(x, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def shear_x(x: Tensor, v: float) -> Tensor:
    return affine(x, (1.0, v, 0.0, 0.0, 1.0, 0.0))


def shear_y(x: Tensor, v: float) -> Tensor:
    return affine(x, (1.0, 0.0, 0.0, v, 1.0, 0.0))


def _shift(x: Tensor, shift: float, axis: int) -> Tensor:
    """PIL's translation: source = output + floor(shift + 1/2), an integer; black where outside."""
    s = math.floor(shift + 0.5)
    out = torch.zeros_like(x)
    size = x.shape[-1] if axis == 1 else x.shape[-2]
    lo, hi = max(0, -s), min(size, size - s)     # output positions whose source is inside
    if lo < hi:
        if axis == 1:
            out[:, :, lo:hi] = x[:, :, lo + s:hi + s]
        else:
            out[:, lo:hi] = x[:, lo + s:hi + s]
    return out


def translate_x(x: Tensor, v: float) -> Tensor:
    return _shift(x, v * x.shape[-1], 1)


def translate_y(x: Tensor, v: float) -> Tensor:
    return _shift(x, v * x.shape[-2], 0)


OPS = {"AutoContrast": autocontrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
       "Equalize": equalize, "Identity": identity, "Posterize": posterize, "Rotate": rotate,
       "Sharpness": sharpness, "ShearX": shear_x, "ShearY": shear_y, "Solarize": solarize,
       "TranslateX": translate_x, "TranslateY": translate_y}


def _parts(size: int, shift: int) -> list[tuple[int, int, int, bool]]:
    """Along one axis, ``out[j] = src[reflect(j + shift)]`` as runs (dst start, src start, length,
    reversed): the part inside the image, and the reflected one past an edge (|shift| < size)."""
    d = abs(shift)
    if shift > 0:
        return [(0, d, size - d, False), (size - d, size - 1 - d, d, True)]
    if shift < 0:
        return [(d, 0, size - d, False), (0, 1, d, True)]
    return [(0, 0, size, False)]


def _run(start: int, length: int, reverse: bool) -> slice:
    """``length`` positions from ``start``, walked backwards from the last one if ``reverse``."""
    if not reverse:
        return slice(start, start + length)
    return slice(start + length - 1, start - 1 if start else None, -1)


def crop_flip(x: Tensor, offsets: list[list[int]], flips: list[bool], padding_mode: str) -> Tensor:
    """Each image's crop at (dy, dx) of its padded copy, flipped where ``flips[i]``, without padding:
    the crop is at most four blocks of the image (inside, a reflected row strip, a reflected column
    strip, a corner), each copied once. A flip is taken first, on the image: the crop of a flipped
    image at (dy, -dx) is the flipped crop (padding commutes with the flip).

    Through numpy views of the same memory: a flipped or reflected block is a negative-stride view,
    so every block is one strided copy and no flipped image is materialised (torch's ``flip``
    copies, and its per-call cost was most of the crop's time at 224 px)."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x) if padding_mode == "reflect" else torch.zeros_like(x)
    source, target = x.numpy(), out.numpy()
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        src = source[i, :, :, ::-1] if flip else source[i]
        for r_dst, r_src, r_len, r_rev in _parts(h, dy):
            for c_dst, c_src, c_len, c_rev in _parts(w, -dx if flip else dx):
                if padding_mode != "reflect" and (r_rev or c_rev):
                    continue                                   # zero padding: the reflected blocks stay 0
                target[i, :, r_dst:r_dst + r_len, c_dst:c_dst + c_len] = \
                    src[:, _run(r_src, r_len, r_rev), _run(c_src, c_len, c_rev)]
    return out
