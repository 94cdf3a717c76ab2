"""The built-in, offline data sets: ``synthfer`` (generated) and ``digits`` (bundled with scikit-learn).

Why built in: a fresh install can run ``sslzoo train`` / the bench without
downloading anything. ``synthfer`` is FER-like (7 expression classes, RAF-DB
imbalance, label noise, nuisance variation); ``digits`` is a small real-image
sanity check. See :mod:`sslzoo.data.synthfer` for the generative model.
"""
from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any, Callable

import numpy as np

from ..errors import SSLZooError
from ..registry import register_dataset
from .base import DataBundle, ImageSet
from .synthfaces import SynthFacesOptions
from .synthfaces import load_bundle as load_faces
from .synthfer import SynthFEROptions, load_bundle

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0      # fixed: the test split never depends on a run's seed


def check_options(dataset: str, options: dict[str, Any], accepted: dict[str, Any]) -> None:
    """Raise an :class:`SSLZooError` naming any unknown option key, the accepted ones and a close match."""
    for key in options:
        if key in accepted:
            continue
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listed = ", ".join(f"{k} (default {v!r})" for k, v in accepted.items()) or "none"
        raise SSLZooError(f"Unknown option '{key}' for data set '{dataset}'.{hint} "
                          f"Accepted options: {listed}.")


def _coerce(dataset: str, key: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    """Convert an option (possibly a CLI string) to its type, with a readable error."""
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise SSLZooError(f"Option '{key}' of data set '{dataset}' must be "
                          f"{'an integer' if kind is int else 'a number'}; got {value!r}.") from None


def _generator_options(dataset: str, options_class: type, image_size: Any, options: dict[str, Any]) -> Any:
    """A generator's options dataclass from loader options (CLI strings coerced, unknown keys named)."""
    defaults = {f.name: f.default for f in fields(options_class) if f.name != "image_size"}
    check_options(dataset, options, defaults)
    values = {key: _coerce(dataset, key, options.get(key, default), type(default))
              for key, default in defaults.items()}
    return options_class(image_size=_coerce(dataset, "image_size", image_size, int), **values)


@register_dataset("synthfer")
def synthfer(*, root: str | None = None, image_size: int = 32, **options: Any) -> DataBundle:
    """Procedurally generated 7-class FER-like faces (built-in default; works offline)."""
    return load_bundle(_generator_options("synthfer", SynthFEROptions, image_size, options))


@register_dataset("synthfer_faces")
def synthfer_faces(*, root: str | None = None, image_size: int = 32, **options: Any) -> DataBundle:
    """synthfer's faces labeled by identity (200 people): an offline MS-Celeb-1M analog for pretraining."""
    return load_faces(_generator_options("synthfer_faces", SynthFacesOptions, image_size, options))


@register_dataset("digits")
def digits(*, root: str | None = None, image_size: int = 32, **options: Any) -> DataBundle:
    """scikit-learn's bundled real handwritten digits (1,797 images, 10 classes): a real-data sanity check."""
    check_options("digits", options, {})
    size = _coerce("digits", "image_size", image_size, int)
    if not 8 <= size <= 512:
        raise SSLZooError(f"digits image_size must be in 8..512; got {size}.")
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = _resize_digits(raw.images, size)
    labels = raw.target.astype(np.int64)
    index = np.arange(len(labels))
    test_idx = _stratified_test_index(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    train_idx = np.setdiff1d(index, test_idx)
    ids = [f"digits/{i:04d}" for i in index]
    train = ImageSet(images[train_idx], labels[train_idx], [ids[i] for i in train_idx])
    test = ImageSet(images[test_idx], labels[test_idx], [ids[i] for i in test_idx])
    info = {"source": "sklearn.datasets.load_digits (8x8, 0-16, upsampled bilinearly)",
            "test_fraction": DIGITS_TEST_FRACTION, "split_seed": DIGITS_SPLIT_SEED,
            "train_class_counts": np.bincount(train.labels, minlength=10).tolist(),
            "test_class_counts": np.bincount(test.labels, minlength=10).tolist()}
    return DataBundle(name="digits", classes=DIGITS_CLASSES, train=train, test=test, info=info)


def _stratified_test_index(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A fixed, stratified test subset: ``round(fraction * n_c)`` random images of each class."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[: int(round(fraction * np.sum(labels == c)))]
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _resize_digits(images: np.ndarray, size: int) -> np.ndarray:
    """8x8 float images in 0..16 -> uint8 [N, size, size, 3] (bilinear, via PIL)."""
    from PIL import Image

    scaled = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.empty((len(scaled), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(scaled):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))[..., None]
    return out
