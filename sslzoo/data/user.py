"""A Python user's own images as the image sets a run trains on (``sslzoo.fit(labeled=..., ...)``).

Accepted: a uint8 ``[N, H, W, 3]`` (or ``[N, H, W]`` grey) numpy array or tensor, a pair
``(images, labels)``, or a ``torch.utils.data.Dataset`` whose items are ``(image, label)`` (or
just ``image`` for unlabeled data), an image being a PIL image, an HWC uint8 array or a CHW
tensor (uint8, or float in [0, 1]). Arrays are used as they are (no copy); a Dataset is read
once into a uint8 ``.npy`` file in ``folder`` and memory-mapped, so a large one never has
to fit in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SSLZooError
from .base import DataBundle, ImageSet
from .prepare import RunData
from .splits import Split


def to_hwc_uint8(img: Any, where: str) -> np.ndarray:
    """One image as uint8 [H, W, 3]."""
    if hasattr(img, "convert") and hasattr(img, "size"):            # a PIL image
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if hasattr(img, "detach"):                                       # a tensor: CHW (or HW)
        t = img.detach().cpu()
        if t.dtype.is_floating_point:
            t = (t.clamp(0, 1) * 255).round()
        arr = t.numpy().astype(np.uint8)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise SSLZooError(f"{where}: images must be uint8 (0-255); got {arr.dtype}. Convert them, e.g. "
                              f"(x * 255).round().astype(np.uint8) for floats in [0, 1].")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise SSLZooError(f"{where}: an image must be HxW, HxWx1 or HxWx3 (or a CHW tensor); got shape {arr.shape}.")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def _array_images(x: Any, where: str) -> np.ndarray:
    """A whole batch of images ([N, H, W, 3] uint8), given as an array or tensor."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.dtype != np.uint8:
        raise SSLZooError(f"{where}: images must be a uint8 array [N, H, W, 3] (NHWC, 0-255); got dtype "
                          f"{arr.dtype}. A torch Dataset of (image, label) also works.")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise SSLZooError(f"{where}: images must be [N, H, W, 3] (NHWC, channels last); got shape {arr.shape}. "
                          f"For CHW tensors use x.permute(0, 2, 3, 1).")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def _labels(y: Any, n: int, where: str) -> np.ndarray:
    labels = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).astype(np.int64).reshape(-1)
    if len(labels) != n:
        raise SSLZooError(f"{where}: {n} images but {len(labels)} labels.")
    if len(labels) and labels.min() < 0:
        raise SSLZooError(f"{where}: labels must be class indices >= 0; found {int(labels.min())}.")
    return labels


def _from_dataset(ds: Any, where: str, labeled: bool, folder: Path | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(ds)
    if n == 0:
        raise SSLZooError(f"{where}: the Dataset is empty.")
    images: np.ndarray | None = None
    labels = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        item = ds[i]
        if labeled and not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise SSLZooError(f"{where}: a labeled Dataset must yield (image, label); item {i} is {type(item).__name__}.")
        img = item[0] if isinstance(item, (tuple, list)) else item
        arr = to_hwc_uint8(img, f"{where}[{i}]")
        if images is None:
            shape = (n, *arr.shape)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                images = np.lib.format.open_memmap(folder / f"{where}.npy", mode="w+", dtype=np.uint8, shape=shape)
            else:
                images = np.empty(shape, dtype=np.uint8)
        if arr.shape != images.shape[1:]:
            raise SSLZooError(f"{where}[{i}]: every image must have the same size; got {arr.shape[:2]} after "
                              f"{images.shape[1:3]}. Resize them first (e.g. a torchvision Resize in the Dataset).")
        images[i] = arr
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            labels[i] = int(item[1])
    if isinstance(images, np.memmap):
        images.flush()
        images = np.load(folder / f"{where}.npy", mmap_mode="r")
    return images, labels


def image_set(data: Any, where: str, *, labeled: bool, folder: Path | None = None) -> ImageSet:
    """``data`` (see the module docstring) as an :class:`ImageSet`; ``where`` names it in errors."""
    if data is None:
        raise SSLZooError(f"{where}: no images given.")
    if isinstance(data, tuple) and len(data) == 2:
        images = _array_images(data[0], where)
        labels = _labels(data[1], len(images), where)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "shape"):
        images, labels = _from_dataset(data, where, labeled, folder)
    elif labeled:
        raise SSLZooError(f"{where}: labeled data must be (images, labels) or a Dataset of (image, label).")
    else:
        images = _array_images(data, where)
        labels = np.full(len(images), -1, dtype=np.int64)
    if labeled and len(labels) and labels.min() < 0:
        raise SSLZooError(f"{where}: every labeled image needs a label >= 0.")
    return ImageSet(images, labels, [f"{where}/{i}" for i in range(len(labels))])


def user_run_data(labeled: Any, unlabeled: Any, test: Any, *, val: Any = None,
                  classes: tuple[str, ...] | list[str] | None = None, folder: Path | None = None) -> RunData:
    """The :class:`RunData` of a run on the user's own images (no split is drawn: it is given)."""
    lab = image_set(labeled, "labeled", labeled=True, folder=folder)
    unl = image_set(unlabeled, "unlabeled", labeled=False, folder=folder) if unlabeled is not None \
        else ImageSet(np.zeros((0, *lab.images.shape[1:]), dtype=np.uint8), np.zeros(0, dtype=np.int64), [])
    tst = image_set(test, "test", labeled=True, folder=folder)
    vl = image_set(val, "val", labeled=True, folder=folder) if val is not None else None
    sizes = {name: s.images.shape[1:] for name, s in (("labeled", lab), ("unlabeled", unl), ("test", tst), ("val", vl))
             if s is not None and len(s)}
    if len(set(sizes.values())) > 1:
        raise SSLZooError(f"labeled, unlabeled, test and val images must share one size; got {sizes}.")
    side = lab.images.shape[1]
    if side != lab.images.shape[2]:
        raise SSLZooError(f"images must be square (the augmentations assume it); got {lab.images.shape[1:3]}.")
    if not 8 <= side <= 1024:
        raise SSLZooError(f"images are {side}x{side} px; sslzoo trains on square images of 8 to 1024 px. "
                          f"Resize them first.")
    n_classes = int(max(lab.labels.max(initial=-1), tst.labels.max(initial=-1)) + 1)
    if classes is None:
        classes = tuple(str(c) for c in range(n_classes))
    classes = tuple(str(c) for c in classes)
    if n_classes > len(classes):
        raise SSLZooError(f"labels go up to {n_classes - 1} but only {len(classes)} class names were given.")
    train = ImageSet.concat([lab, unl])
    n_l, n_u = len(lab), len(unl)
    split = Split(labeled=np.arange(n_l), unlabeled=np.arange(n_l, n_l + n_u), val=np.zeros(0, dtype=np.int64))
    bundle = DataBundle(name="user", classes=classes, train=train, test=tst, info={"source": "sslzoo.fit"})
    return RunData(bundle, split, lab, unl, vl, tst, "user", classes)
