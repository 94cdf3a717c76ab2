"""SynthFER: procedurally generated 7-class facial-expression images (offline, cached).

Generative model
----------------
Each image is a cartoon face rendered with numpy from analytic shapes (soft-edged
signed distances, so edges are anti-aliased at any ``image_size``), in batches:

1. **Label.** Class counts follow RAF-DB's basic-expression proportions (train
   counts for the train split, test counts for the test split), in the canonical
   FER7 order of :mod:`sslzoo.data.labels`.
2. **Expression.** The class sets a prototype for 12 geometric action parameters:
   eye openness, brow raise / inner-end raise / inner gap / arch, mouth corner
   curvature, opening, width, roundness, lip thickness, asymmetry, upper-lip
   raise, plus nose wrinkles, frown lines and nasolabial folds. A per-image
   *intensity* interpolates between the neutral face and the prototype (subtle
   expressions look neutral), and identity-level and expression-level jitter is
   added. Confusable pairs are built in: fear ~ surprise (both open eyes and
   mouth; fear has raised *and* drawn-together brows and a wide, less tall
   mouth), disgust ~ anger (both lowered brows; disgust has a wrinkled nose,
   raised upper lip and a one-sided mouth, anger strong V brows and pressed
   lips), sadness ~ neutral (sadness raises the inner brows and turns the mouth
   corners slightly down). Happiness (a clear smile) is the easy class.
3. **Nuisance** (independent of the class): face shape, skin tone, hair style
   and colour, eye spacing and size, head roll / yaw / pitch, scale,
   translation, background colour, gradient and clutter, clothing, glasses,
   sunglasses, random occluders, directional lighting, colour cast, blur,
   grayscale and pixel noise. The expression signal lives only in the
   geometry of brows, eyes and mouth and is symmetric in distribution under
   horizontal flips (one-sided features pick a random side).
4. **Label noise.** A fraction ``label_noise`` of *training* labels is replaced by
   another class, drawn in proportion to the class prior (so rare classes are not
   swamped); test labels stay clean. The clean training labels are kept in the
   cache (:func:`load_arrays` returns them).

Everything is a deterministic function of the options (``data_seed`` included);
the test split depends only on ``n_test``, ``image_size`` and ``data_seed``.
Results are cached like a decoded data set (``cache_dir()/decoded/synthfer-<size>px-<hash>/``:
one memory-mapped ``images.npy``, train rows then test rows, and ``meta.json``), rendered
chunk by chunk straight into that file, so neither generating nor training ever holds the
whole data set in memory (synthfer_faces at 224 px is 3 GB).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SSLZooError
from .base import DataBundle, ImageSet
from .cache import CacheEntry, allocate, check_free_space, decoded_root, get_or_build, make_key
from .labels import FER7

GENERATOR_VERSION = 2   # bump on any change to the images or labels (invalidates caches)

# RAF-DB basic-expression image counts, in FER7 order.
RAF_TRAIN_COUNTS = (1290, 281, 717, 4772, 1982, 705, 2524)
RAF_TEST_COUNTS = (329, 74, 160, 1185, 478, 162, 680)

SURPRISE, FEAR, DISGUST, HAPPINESS, SADNESS, ANGER, NEUTRAL = range(7)
MIN_SIZE, MAX_SIZE = 16, 512


@dataclass(frozen=True)
class SynthFEROptions:
    """The options that fully determine a SynthFER data set."""

    n_train: int = 4000
    n_test: int = 1200
    image_size: int = 32
    label_noise: float = 0.03
    data_seed: int = 0

    def validate(self) -> None:
        check_image_size("synthfer", self.image_size)
        if self.n_train < 7 or self.n_test < 7:
            raise SSLZooError(f"synthfer needs n_train >= 7 and n_test >= 7 (one image per "
                              f"class); got n_train={self.n_train}, n_test={self.n_test}.")
        if not 0.0 <= self.label_noise <= 0.5:
            raise SSLZooError(f"synthfer label_noise must be in [0, 0.5]; got {self.label_noise}.")

    def cache_key(self) -> str:
        return options_key(self)


def check_image_size(dataset: str, size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise SSLZooError(f"{dataset} image_size must be in {MIN_SIZE}..{MAX_SIZE}; got {size}.")


def options_key(opts: Any) -> str:
    """A short hash of a generator's options dataclass and the generator version (the cache file name)."""
    text = json.dumps({**asdict(opts), "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- labels

def class_counts(n: int, reference: tuple[int, ...]) -> np.ndarray:
    """Split ``n`` into per-class counts proportional to ``reference`` (largest remainder, >= 1 each)."""
    ref = np.asarray(reference, dtype=np.float64)
    exact = ref / ref.sum() * n
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    while counts.sum() < n:
        counts[np.argmax(exact - counts)] += 1
    while counts.sum() > n:
        counts[np.argmax(np.where(counts > 1, counts - exact, -np.inf))] -= 1
    return counts


def draw_labels(n: int, reference: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    counts = class_counts(n, reference)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)


def add_label_noise(labels: np.ndarray, rate: float, rng: np.random.Generator,
                    prior: tuple[int, ...] = RAF_TRAIN_COUNTS) -> np.ndarray:
    """Replace exactly ``round(rate * n)`` labels with *another* class drawn in proportion to ``prior``.

    Proportional (not uniform) so that noise does not swamp the rare classes: with
    uniform noise a few % of flips would make ~15 % of the 'fear' labels wrong.
    """
    noisy = labels.copy()
    flip = rng.permutation(len(labels))[: int(round(rate * len(labels)))]
    weights = np.asarray(prior, dtype=np.float64)
    for c in range(len(weights)):
        idx = flip[labels[flip] == c]
        others = np.where(np.arange(len(weights)) == c, 0.0, weights)
        noisy[idx] = rng.choice(len(weights), size=len(idx), p=others / others.sum())
    return noisy


# ----------------------------------------------------------------------------- parameters

# Expression prototypes (face units: face half-width ~ 1, v points down), FER7 order:
#            surprise  fear   disgust happy   sad    anger  neutral
_PROTO = {
    "eye_open":    (1.15,  1.05,  0.42,  0.38,  0.55,  0.48,  0.65),
    "brow_raise":  (0.15,  0.11, -0.07,  0.02,  0.00, -0.08,  0.00),
    "brow_inner":  (0.00,  0.09, -0.05,  0.00,  0.11, -0.15,  0.00),
    "brow_gap":    (0.18,  0.10,  0.13,  0.18,  0.16,  0.09,  0.18),
    "brow_arch":   (0.07,  0.01,  0.02,  0.03,  0.02,  0.00,  0.03),
    "mouth_curve": (0.00, -0.04, -0.06,  0.26, -0.10, -0.02,  0.00),
    "mouth_open":  (0.20,  0.10,  0.05,  0.08,  0.00,  0.00,  0.00),
    "mouth_width": (0.32,  0.54,  0.40,  0.53,  0.37,  0.34,  0.42),
    "mouth_round": (1.00,  0.20,  0.00,  0.00,  0.00,  0.00,  0.00),
    "lip_thick":   (0.055, 0.050, 0.060, 0.055, 0.060, 0.026, 0.060),
    "asym":        (0.00,  0.00,  0.08,  0.00,  0.00,  0.00,  0.00),
    "upper_raise": (0.00,  0.00,  1.00,  0.00,  0.00,  0.00,  0.00),
    "wrinkle":     (0.00,  0.00,  1.00,  0.00,  0.00,  0.25,  0.00),
    "frown":       (0.00,  0.30,  0.30,  0.00,  0.30,  1.00,  0.00),
    "fold":        (0.00,  0.20,  0.60,  0.80,  0.00,  0.00,  0.00),
}
# Expression-level jitter (std) per parameter, independent of the class.
_JITTER = {"eye_open": 0.09, "brow_raise": 0.025, "brow_inner": 0.025, "brow_gap": 0.018,
           "brow_arch": 0.016, "mouth_curve": 0.025, "mouth_open": 0.025, "mouth_width": 0.03,
           "mouth_round": 0.15, "lip_thick": 0.008, "asym": 0.02, "upper_raise": 0.2,
           "wrinkle": 0.2, "frown": 0.2, "fold": 0.2}
# Intensity range per class (how far from neutral towards the prototype).
_INTENSITY = ((0.6, 1.0), (0.55, 1.0), (0.5, 1.0), (0.7, 1.0), (0.45, 1.0), (0.5, 1.0), (0.0, 0.0))


def expression_params(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image expression geometry: neutral + intensity * (prototype - neutral) + jitter."""
    n = len(labels)
    lo, hi = np.asarray(_INTENSITY).T
    t = lo[labels] + (hi - lo)[labels] * rng.random(n)
    out: dict[str, np.ndarray] = {}
    for name, proto in _PROTO.items():
        proto_arr = np.asarray(proto)
        value = proto_arr[NEUTRAL] + t * (proto_arr[labels] - proto_arr[NEUTRAL])
        out[name] = value + _JITTER[name] * rng.standard_normal(n)
    out["asym"] *= rng.choice([-1.0, 1.0], size=n)        # one-sided: random side
    out["teeth"] = (rng.random(n) < 0.75).astype(np.float64)
    return out


def _palette(rng: np.random.Generator, n: int, colours: np.ndarray, jitter: float) -> np.ndarray:
    pick = colours[rng.integers(0, len(colours), size=n)]
    return np.clip(pick + jitter * rng.standard_normal((n, 3)), 0.0, 1.0)


def _muted(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scene colours: a grey level plus a moderate tint."""
    grey = rng.uniform(0.15, 0.85, size=(n, 1))
    return np.clip(grey + 0.12 * rng.standard_normal((n, 3)), 0.0, 1.0)


_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15],
                  [0.80, 0.65, 0.35], [0.55, 0.22, 0.08], [0.60, 0.60, 0.60]])
_IRIS = np.array([[0.20, 0.12, 0.06], [0.10, 0.08, 0.06], [0.25, 0.35, 0.50], [0.25, 0.35, 0.20]])


def nuisance_params(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image identity, pose, scene and camera parameters (independent of the class)."""
    u = lambda a, b: rng.uniform(a, b, size=n)  # noqa: E731 - local shorthand
    tone = rng.random(n)[:, None]
    skin = (1 - tone) * np.array([0.96, 0.80, 0.69]) + tone * np.array([0.36, 0.22, 0.15])
    skin = np.clip(skin + 0.03 * rng.standard_normal((n, 3)), 0, 1)
    p = {
        "skin": skin, "hair": _palette(rng, n, _HAIR, 0.05), "iris": _palette(rng, n, _IRIS, 0.03),
        "bg": _muted(rng, n), "bg2": _muted(rng, n), "shirt": _muted(rng, n),
        "occ_colour": _muted(rng, n), "clutter": _muted(rng, n),
        "cast": np.clip(1 + 0.04 * rng.standard_normal((n, 3)), 0.85, 1.15),
        # face shape and identity geometry
        "face_a": u(0.88, 1.05), "face_b": u(1.15, 1.38), "jaw": u(0.0, 0.28),
        "eye_x": u(0.38, 0.47), "eye_y": u(-0.18, -0.06), "eye_w": u(0.20, 0.26),
        "eye_id": u(0.8, 1.2), "brow_h": u(0.14, 0.22), "brow_len": u(0.28, 0.40),
        "brow_t": u(0.045, 0.070), "gaze_x": u(-0.06, 0.06), "gaze_y": u(-0.02, 0.02),
        "nose_y": u(0.20, 0.32), "mouth_y": u(0.50, 0.64), "lip_red": u(0.0, 1.0),
        "hair_w": u(1.05, 1.30), "hair_cut": u(-0.3, 1.1), "hairline": u(-1.0, -0.62),
        "hair_slant": u(-0.2, 0.2), "bald": (rng.random(n) < 0.1).astype(np.float64),
        # pose and framing
        "roll": np.clip(rng.normal(0, 0.10, n), -0.3, 0.3), "yaw": u(-1, 1), "pitch": u(-1, 1),
        "scale": u(0.72, 0.86), "tx": u(-0.1, 0.1), "ty": u(-0.1, 0.1),
        # scene and camera
        "bg_gx": u(-0.4, 0.4), "bg_gy": u(-0.4, 0.4), "clutter_on": (rng.random(n) < 0.35) * 1.0,
        "clutter_x": u(-1, 1), "clutter_y": u(-1, 1), "clutter_r": u(0.2, 0.7),
        "glasses": (rng.random(n) < 0.08) * 1.0, "sunglasses": (rng.random(n) < 0.02) * 1.0,
        "occ_on": (rng.random(n) < 0.10) * 1.0, "occ_rect": (rng.random(n) < 0.5) * 1.0,
        "occ_u": u(-0.8, 0.8), "occ_v": u(-0.6, 1.0), "occ_ru": u(0.12, 0.4), "occ_rv": u(0.12, 0.4),
        "bright": u(0.7, 1.2), "light_gx": u(-0.3, 0.3), "light_gy": u(-0.2, 0.2),
        "soft": u(0.7, 1.4), "gray": (rng.random(n) < 0.1) * 1.0, "noise": u(0.0, 0.035),
    }
    return p


# ----------------------------------------------------------------------------- rendering

def _cov(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Soft coverage of a signed distance (negative inside), anti-aliased over ``w``."""
    return np.clip(0.5 - d / w, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: Any, cv: Any, ru: Any, rv: Any) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse."""
    k = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return (k - 1.0) * np.minimum(ru, rv)


def _stroke(u: np.ndarray, v: np.ndarray, x0: Any, x1: Any, f0: Any, f1: Any, arch: Any,
            half_t: Any) -> np.ndarray:
    """Signed distance to a thick curve from (x0, f0) to (x1, f1) with a parabolic arch."""
    xm, h = (x0 + x1) / 2, (x1 - x0) / 2
    uc = np.clip(u, x0, x1)
    q = (uc - xm) / h
    f = f0 + (f1 - f0) * (uc - x0) / (x1 - x0) - arch * (1 - q * q)
    slope = (f1 - f0) / (x1 - x0) + 2 * arch * q / h
    dy = (v - f) / np.sqrt(1 + slope * slope)
    return np.sqrt((u - uc) ** 2 + dy * dy) - half_t


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend a per-image colour [B, 3] into a channel-first canvas [3, B, H, W]."""
    alpha = np.broadcast_to(alpha, canvas.shape[1:])
    buf = np.empty(canvas.shape[1:], dtype=np.float32)
    for c in range(3):
        np.subtract(colour[:, c, None, None], canvas[c], out=buf)
        buf *= alpha
        canvas[c] += buf


def _col(p: dict[str, np.ndarray], key: str) -> np.ndarray:
    return p[key].astype(np.float32)


def _render_chunk(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one batch; every entry of ``p`` has the batch as its first axis."""
    s = {k: v[:, None, None].astype(np.float32) for k, v in p.items() if v.ndim == 1}
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    X, Y = grid[None, None, :], grid[None, :, None]
    w = s["soft"] * (2.0 / size) / s["scale"]                      # one pixel, in face units

    canvas = np.empty((3, len(p["skin"]), size, size), dtype=np.float32)
    canvas[:] = _col(p, "bg").T[:, :, None, None]
    _paint(canvas, np.clip(0.5 + s["bg_gx"] * X + s["bg_gy"] * Y, 0, 1), _col(p, "bg2"))
    clutter = _ellipse(X, Y, s["clutter_x"], s["clutter_y"], s["clutter_r"], s["clutter_r"] * 0.7)
    _paint(canvas, _cov(clutter, 2.0 / size) * s["clutter_on"], _col(p, "clutter"))

    cos, sin = np.cos(s["roll"]), np.sin(s["roll"])
    dx, dy = X - s["tx"], Y - s["ty"]
    u = (cos * dx + sin * dy) / s["scale"]
    v = (-sin * dx + cos * dy) / s["scale"]
    _draw_head(canvas, s, p, u, v, w)
    _draw_features(canvas, s, p, u, v, w)
    rare = np.flatnonzero(p["glasses"] + p["sunglasses"] + p["occ_on"])   # only these need drawing
    if len(rare):
        sub = canvas[:, rare]
        _draw_occluders(sub, _take(s, rare), _take(p, rare), u[rare], v[rare], w[rare])
        canvas[:, rare] = sub
    return _camera(canvas, s, p, X, Y, rng)


def _take(d: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {key: val[index] for key, val in d.items()}


def _draw_head(canvas: np.ndarray, s: dict, p: dict, u: np.ndarray, v: np.ndarray,
               w: np.ndarray) -> None:
    a, b = s["face_a"], s["face_b"]
    skin, hair = _col(p, "skin"), _col(p, "hair")
    hair_shape = _ellipse(u, v, 0.0, -0.08, a * s["hair_w"], b * 1.1)
    back = np.maximum(hair_shape, v - s["hair_cut"] * b)
    _paint(canvas, _cov(back, w) * (1 - s["bald"]), hair)
    _paint(canvas, _cov(_ellipse(u, v, 0.0, b + 1.05, 1.9, 0.95), w), _col(p, "shirt"))
    neck = np.maximum(np.abs(u) - 0.42 * a, 0.3 * b - v)
    _paint(canvas, _cov(neck, w), skin * 0.85)
    _paint(canvas, _cov(_ellipse(np.abs(u), v, a * 0.97, -0.05, 0.13, 0.22), w), skin * 0.92)
    taper = 1 - s["jaw"] * np.clip(v / b, 0, 1)
    face = (np.sqrt((u / (a * taper)) ** 2 + (v / b) ** 2) - 1) * a * taper
    _paint(canvas, _cov(face, w), skin)
    hairline = s["hairline"] * b + s["hair_slant"] * u + 0.3 * u * u
    fringe = np.maximum(hair_shape, v - hairline)
    _paint(canvas, _cov(fringe, w) * (1 - s["bald"]), hair)


def _draw_features(canvas: np.ndarray, s: dict, p: dict, u: np.ndarray, v: np.ndarray,
                   w: np.ndarray) -> None:
    uf = u - 0.15 * s["yaw"]                      # yaw / pitch move the inner face
    vf = v - 0.07 * s["pitch"]
    m = np.abs(uf)                                # mirrored coordinate for paired features
    skin = _col(p, "skin")
    _draw_eyes_brows(canvas, s, p, uf, vf, m, w)
    # nose: bridge, base, disgust wrinkles, nasolabial folds
    un = u - 0.25 * s["yaw"]
    ey, ny = s["eye_y"], s["nose_y"]
    bridge = np.maximum(np.abs(un) - 0.018, np.maximum(ey + 0.05 - vf, vf - ny))
    _paint(canvas, _cov(bridge, w) * 0.35, skin * 0.7)
    base = _stroke(un, vf, -0.11, 0.11, ny, ny, -0.03, 0.022)
    _paint(canvas, _cov(base, w) * 0.8, skin * 0.55)
    wr = np.clip(s["wrinkle"], 0, 1)
    for dv in (0.05, 0.11):
        wrinkle = _stroke(np.abs(un), vf, 0.03, 0.13, ey + dv, ey + dv + 0.02, 0.015, 0.012)
        _paint(canvas, _cov(wrinkle, w) * wr * 0.8, skin * 0.55)
    mw, my = s["mouth_width"], s["mouth_y"]
    fold = _stroke(m, vf, 0.14, np.maximum(mw, 0.2) + 0.05, ny - 0.02, my - 0.02, -0.02, 0.014)
    _paint(canvas, _cov(fold, w) * np.clip(s["fold"], 0, 1) * 0.7, skin * 0.65)
    _draw_mouth(canvas, s, p, uf, vf, w)


def _draw_eyes_brows(canvas: np.ndarray, s: dict, p: dict, uf: np.ndarray, vf: np.ndarray,
                     m: np.ndarray, w: np.ndarray) -> None:
    ex, ey, ew = s["eye_x"], s["eye_y"], s["eye_w"]
    eh = np.maximum(ew * 0.5 * s["eye_open"] * s["eye_id"], 0.015)
    eye = _ellipse(m, vf, ex, ey, ew, eh)
    _paint(canvas, _cov(eye, w), np.full_like(_col(p, "skin"), 0.93))
    side = np.sign(uf)
    iris = _ellipse(uf, vf, side * ex + s["gaze_x"], ey + s["gaze_y"], 0.45 * ew, 0.45 * ew)
    _paint(canvas, _cov(iris, w) * _cov(eye, w), _col(p, "iris"))
    lid = np.maximum(np.abs(eye) - 0.012, vf - ey)
    _paint(canvas, _cov(lid, w), _col(p, "hair") * 0.2 + 0.03)
    # brows: inner end at brow_gap from the midline, outer end brow_len further out
    x_in = np.maximum(s["brow_gap"], 0.03)
    x_out = x_in + s["brow_len"]
    y_out = ey - s["brow_h"] - s["brow_raise"]
    y_in = y_out - s["brow_inner"]
    brow = _stroke(m, vf, x_in, x_out, y_in, y_out, s["brow_arch"], s["brow_t"])
    _paint(canvas, _cov(brow, w), _col(p, "hair") * 0.35 + 0.05)
    frown = np.maximum(np.abs(m - 0.05) - 0.012, np.abs(vf - (y_in + 0.1)) - 0.07)
    _paint(canvas, _cov(frown, w) * np.clip(s["frown"], 0, 1) * 0.6, _col(p, "skin") * 0.6)


def _draw_mouth(canvas: np.ndarray, s: dict, p: dict, uf: np.ndarray, vf: np.ndarray,
                w: np.ndarray) -> None:
    mw = np.maximum(s["mouth_width"], 0.12)
    xn = np.clip(uf / mw, -1, 1)
    centre = s["mouth_y"] - s["mouth_curve"] * xn * xn + s["asym"] * xn
    slope = (-2 * s["mouth_curve"] * xn + s["asym"]) / mw
    rel = (vf - centre) / np.sqrt(1 + slope * slope)
    across = np.sqrt(np.maximum(1 - xn * xn, 0))
    rnd = np.clip(s["mouth_round"], 0, 1)
    prof = (1 - rnd) * (1 - xn * xn) + rnd * across
    opening = np.maximum(s["mouth_open"], 0) * prof
    up = opening * (1 + np.clip(s["upper_raise"], 0, 1.5)) + 0.012 * np.clip(s["upper_raise"], 0, 1) * across
    lo = opening
    lt = np.maximum(s["lip_thick"], 0.012) * (0.4 + 0.6 * across)
    ends = np.abs(uf) - mw
    lips = np.maximum(np.maximum(-(up + lt) - rel, rel - (lo + 1.3 * lt)), ends)
    skin = _col(p, "skin")
    lip_col = skin * np.array([0.8, 0.45, 0.45], dtype=np.float32)
    lip_col = lip_col + (skin - lip_col) * (1 - _col(p, "lip_red")[:, None]) * 0.5
    _paint(canvas, _cov(lips, w), lip_col)
    inside = np.maximum(np.maximum(-up - rel, rel - lo), ends + 0.02)
    _paint(canvas, _cov(inside, w), np.tile(np.array([[0.12, 0.02, 0.03]], np.float32), (len(skin), 1)))
    teeth = np.maximum(np.maximum(-up - rel, rel - (-up + 0.45 * (up + lo))), np.abs(uf) - 0.8 * mw)
    _paint(canvas, _cov(teeth, w) * s["teeth"], np.full_like(skin, 0.92))


def _draw_occluders(canvas: np.ndarray, s: dict, p: dict, u: np.ndarray, v: np.ndarray,
                    w: np.ndarray) -> None:
    uf = u - 0.15 * s["yaw"]
    vf = v - 0.07 * s["pitch"]
    m = np.abs(uf)
    ex, ey = s["eye_x"], s["eye_y"]
    ring = np.sqrt((m - ex) ** 2 + (vf - ey) ** 2) - 0.24
    bridge = np.maximum(np.abs(vf - ey + 0.04) - 0.015, m - ex + 0.22)
    frame = np.minimum(np.abs(ring) - 0.025, bridge)
    dark = np.zeros_like(_col(p, "skin")) + 0.08
    _paint(canvas, _cov(frame, w) * np.maximum(s["glasses"], s["sunglasses"]), dark)
    _paint(canvas, _cov(ring, w) * s["sunglasses"], dark)
    du, dv = (u - s["occ_u"]) / s["occ_ru"], (v - s["occ_v"]) / s["occ_rv"]
    r = np.minimum(s["occ_ru"], s["occ_rv"])
    shape = np.where(s["occ_rect"] > 0, np.maximum(np.abs(du), np.abs(dv)), np.sqrt(du * du + dv * dv))
    _paint(canvas, _cov((shape - 1) * r, w) * s["occ_on"], _col(p, "occ_colour"))


def _camera(canvas: np.ndarray, s: dict, p: dict, X: np.ndarray, Y: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    light = s["bright"] * (1 + s["light_gx"] * X + s["light_gy"] * Y)
    canvas *= light[None] * _col(p, "cast").T[:, :, None, None]
    gray = 0.299 * canvas[0] + 0.587 * canvas[1] + 0.114 * canvas[2]
    canvas += s["gray"][None] * (gray[None] - canvas)
    noise = rng.random(canvas.shape, dtype=np.float32)        # uniform, std-matched to s["noise"]
    noise -= 0.5
    canvas += noise * (3.4641 * s["noise"][None])
    np.clip(canvas, 0, 1, out=canvas)
    return (canvas.transpose(1, 2, 3, 0) * 255 + 0.5).astype(np.uint8)


def render(params: dict[str, np.ndarray], size: int, seed: np.random.SeedSequence,
           out: np.ndarray | None = None) -> np.ndarray:
    """Render all images in cache-friendly batches into ``out`` (uint8 [N, size, size, 3]; a new
    array if None, else e.g. a memory map being filled on disk)."""
    n = len(params["skin"])
    batch = max(1, (1 << 17) // (size * size))
    out = np.empty((n, size, size, 3), dtype=np.uint8) if out is None else out
    starts = range(0, n, batch)
    for start, child in zip(starts, seed.spawn(len(starts))):
        part = {key: val[start:start + batch] for key, val in params.items()}
        out[start:start + batch] = _render_chunk(part, size, np.random.default_rng(child))
    return out


# ----------------------------------------------------------------------------- generation + cache

def _split(n: int, reference: tuple[int, ...], size: int, seed: np.random.SeedSequence,
           out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    label_seq, expr_seq, nuis_seq, render_seq = seed.spawn(4)
    labels = draw_labels(n, reference, np.random.default_rng(label_seq))
    params = {**expression_params(labels, np.random.default_rng(expr_seq)),
              **nuisance_params(n, np.random.default_rng(nuis_seq))}
    return render(params, size, render_seq, out), labels


def generate(opts: SynthFEROptions, out: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Generate both splits (no cache); ``out``: where to render (train rows, then test rows)."""
    opts.validate()
    out = np.empty((opts.n_train + opts.n_test, opts.image_size, opts.image_size, 3), np.uint8) if out is None else out
    train_img, train_clean = _split(opts.n_train, RAF_TRAIN_COUNTS, opts.image_size,
                                    np.random.SeedSequence([opts.data_seed, 1]), out[:opts.n_train])
    test_img, test_labels = _split(opts.n_test, RAF_TEST_COUNTS, opts.image_size,
                                   np.random.SeedSequence([opts.data_seed, 2]), out[opts.n_train:])
    noise_rng = np.random.default_rng(np.random.SeedSequence([opts.data_seed, 3]))
    train_labels = add_label_noise(train_clean, opts.label_noise, noise_rng)
    return {"train_images": train_img, "train_labels": train_labels,
            "train_clean_labels": train_clean, "test_images": test_img, "test_labels": test_labels}


def cache_key(loader: str, opts: Any) -> str:
    return make_key(loader, opts.image_size, opts.cache_key())


def cache_path(opts: SynthFEROptions) -> Path:
    """The cache entry folder of these options (whether built or not)."""
    return decoded_root() / cache_key("synthfer", opts)


def generated_entry(loader: str, opts: Any, make: Callable[[Any, np.ndarray], dict[str, np.ndarray]],
                    num_classes: int, extra_labels: tuple[str, ...] = ()) -> CacheEntry:
    """The memory-mapped cache entry of a generated data set, generating it (into the file) if needed.

    ``make(opts, out)`` renders train then test rows into ``out`` and returns the label arrays
    (``train_labels``, ``test_labels`` and any of ``extra_labels``). Built once per key under
    the decode cache's lock and renamed into place whole; an entry whose labels do not fit
    the options (a damaged file) is rebuilt.
    """
    n = opts.n_train + opts.n_test
    key = cache_key(loader, opts)

    def build(tmp: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
        shape = (n, opts.image_size, opts.image_size, 3)
        if tmp is not None:
            check_free_space(tmp, int(np.prod(shape)), f"the {n} {loader} images")
        images = allocate(tmp, "images.npy", shape)
        arrays = make(opts, images)
        meta = {"loader": loader, "generated": True, "root": None, "image_size": opts.image_size,
                "options": asdict(opts), "key_options": {"loader": loader, "options": asdict(opts)},
                "labels": np.concatenate([arrays["train_labels"], arrays["test_labels"]]).tolist(),
                "ids": [f"{loader}/{split}/{i:06d}" for split, m in (("train", opts.n_train), ("test", opts.n_test))
                        for i in range(m)],
                "ranges": {"train": [0, opts.n_train], "test": [opts.n_train, n]},
                **{k: np.asarray(arrays[k]).tolist() for k in extra_labels}}
        return images, meta

    for attempt in range(2):
        entry = get_or_build(key, build)
        labels = np.asarray(entry.meta["labels"])
        fits = (entry.images.shape == (n, opts.image_size, opts.image_size, 3)
                and ((labels >= 0) & (labels < num_classes)).all()
                and all(len(entry.meta.get(k, ())) == opts.n_train for k in extra_labels))
        if fits:
            return entry
        if entry.path is not None:
            shutil.rmtree(entry.path, ignore_errors=True)
    raise SSLZooError(f"The cached {loader} data at {decoded_root() / key} could not be rebuilt; "
                      f"check the disk, or set SSLZOO_CACHE to another folder.")


def load_arrays(opts: SynthFEROptions) -> tuple[dict[str, np.ndarray], bool]:
    """The data set's arrays (images memory-mapped) and whether they came from the cache."""
    opts.validate()
    entry = generated_entry("synthfer", opts, lambda o, out: generate(o, out), 7, ("train_clean_labels",))
    labels = np.asarray(entry.meta["labels"], dtype=np.int64)
    return {"train_images": entry.images[:opts.n_train], "test_images": entry.images[opts.n_train:],
            "train_labels": labels[:opts.n_train], "test_labels": labels[opts.n_train:],
            "train_clean_labels": np.asarray(entry.meta["train_clean_labels"], dtype=np.int64)}, entry.hit


def load_bundle(opts: SynthFEROptions) -> DataBundle:
    """SynthFER as a :class:`DataBundle` (cached, memory-mapped)."""
    arrays, from_cache = load_arrays(opts)
    width = max(6, len(str(max(opts.n_train, opts.n_test))))
    train = ImageSet(arrays["train_images"], arrays["train_labels"],
                     [f"synthfer/train/{i:0{width}d}" for i in range(opts.n_train)])
    test = ImageSet(arrays["test_images"], arrays["test_labels"],
                    [f"synthfer/test/{i:0{width}d}" for i in range(opts.n_test)])
    flipped = int((arrays["train_labels"] != arrays["train_clean_labels"]).sum())
    info = {
        "generator": f"synthfer v{GENERATOR_VERSION}", "options": asdict(opts),
        "cache_file": str(cache_path(opts)), "from_cache": from_cache,
        "train_class_counts": np.bincount(arrays["train_labels"], minlength=7).tolist(),
        "train_clean_class_counts": np.bincount(arrays["train_clean_labels"], minlength=7).tolist(),
        "test_class_counts": np.bincount(arrays["test_labels"], minlength=7).tolist(),
        "noisy_train_labels": flipped,
    }
    return DataBundle(name="synthfer", classes=FER7, train=train, test=test, info=info)


# ----------------------------------------------------------------------------- preview

def preview_grid(bundle: DataBundle, path: str | Path, per_class: int = 8, *, split: str = "test",
                 zoom: int = 3) -> Path:
    """Save a PNG grid of ``per_class`` images per class (rows = classes, labelled)."""
    from PIL import Image, ImageDraw

    images = getattr(bundle, split)
    size = bundle.image_size * zoom
    label_w = 80
    grid = Image.new("RGB", (label_w + per_class * (size + 2), len(bundle.classes) * (size + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(bundle.classes):
        y = c * (size + 2)
        draw.text((4, y + size // 2 - 5), name, fill="black")
        for j, i in enumerate(np.flatnonzero(images.labels == c)[:per_class]):
            tile = Image.fromarray(images.images[i]).resize((size, size), Image.NEAREST)
            grid.paste(tile, (label_w + j * (size + 2), y))
    path = Path(path)
    grid.save(path)
    return path
