"""Augmentation speed at the paper's shape: sslzoo's batched views against the per-image ways.

What is timed, for one training step of Ada-CM at 224 px (B = 16 labeled weak views, mu = 1,
three views per unlabeled image: weak, weak, strong; the official RandAugment(3, .) + Cutout),
from uint8 images in memory to normalized float tensors, in one process with ONE thread
(images/s per CPU core):

* ``batched``: sslzoo's path (:mod:`sslzoo.data.augment`): parameters drawn per step, each
  operation applied to every image that drew it at once, then ``normalize_batch``;
* ``per_image_torchvision``: sslzoo's strong view until late 2026: the batched crop/flip and
  Cutout around torchvision's fixed-magnitude ``RandAugment`` called per image;
* ``pil``: the way FixMatch (kekmodel), USB and the official Ada-CM code build views: per image,
  PIL ``RandomCrop`` (reflect padding) + ``RandomHorizontalFlip``, the RandAugment operations on
  the PIL image (the same 14 operations and ranges), Cutout with ``ImageDraw``, ``ToTensor`` and
  ``Normalize``. Written here as those code bases write it (it is the peer's method).

The three are timed in interleaved rounds after untimed warm-up rounds (the steady state a
loader worker runs in). ``--device cuda`` also times the batched path on the GPU (views built
where they are trained on). ``python -m benchmarks.augment_speed --per-op`` times each
RandAugment operation alone on one image, sslzoo's CPU route against PIL.
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from sslzoo.data.augment import RANDAUGMENT_OPS
from sslzoo.data.views import MEAN, STD, AugmentConfig, Views, channels_first, normalize_batch


@dataclass
class AugmentBenchOptions:
    image_size: int = 224
    batch_size: int = 16
    mu: int = 1
    unlabeled_views: tuple[str, ...] = ("weak", "weak", "strong")   # Ada-CM
    randaugment_n: int = 3                                           # the official Ada-CM RandAugment(3, 5)
    crop_padding: float = 0.125
    repeats: int = 21                                                # timed rounds (medians; ratios paired per round)
    warmup: int = 3                                                  # untimed rounds first (steady state)


def pil_ops() -> dict[str, Callable]:
    """Each RandAugment operation as USB's randaugment.py calls PIL (the peer's method; also the
    pixel reference of tests/test_augment.py)."""
    from PIL import Image, ImageEnhance, ImageOps
    return {
        "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
        "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
        "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
        "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
        "Equalize": lambda img, v: ImageOps.equalize(img),
        "Identity": lambda img, v: img,
        "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
        "Rotate": lambda img, v: img.rotate(v),
        "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
        "ShearX": lambda img, v: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "ShearY": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "Solarize": lambda img, v: ImageOps.solarize(img, v),
        "TranslateX": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
        "TranslateY": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
    }


def pil_pipeline(opts: AugmentBenchOptions) -> Callable[[np.ndarray, str], torch.Tensor]:
    """One image (uint8 HWC) -> one normalized view, per image with PIL, as USB builds it."""
    from PIL import Image, ImageDraw
    from torchvision import transforms
    size = opts.image_size
    pad = int(round(opts.crop_padding * size))
    ops = pil_ops()
    pool = [(ops[name], lo, hi) for name, lo, hi in RANDAUGMENT_OPS]
    crop_flip = transforms.Compose([transforms.RandomCrop(size, padding=pad, padding_mode="reflect"),
                                    transforms.RandomHorizontalFlip()])
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def randaugment(img):
        for op, lo, hi in random.choices(pool, k=opts.randaugment_n):
            img = op(img, lo + (hi - lo) * random.random())
        v = random.random() * 0.5 * img.size[0]
        if v > 0:
            x0, y0 = np.random.uniform(img.size[0]), np.random.uniform(img.size[1])
            x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
            img = img.copy()
            ImageDraw.Draw(img).rectangle((x0, y0, min(img.size[0], x0 + v), min(img.size[1], y0 + v)),
                                          (125, 123, 114))
        return img

    def view(arr: np.ndarray, name: str) -> torch.Tensor:
        img = crop_flip(Image.fromarray(arr))
        return to_tensor(randaugment(img) if name == "strong" else img)
    return view


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Face-like test images: smooth random colour fields (not white noise, which no photo is)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2).float(), size=(size, size),
                                          mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _median_seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def _interleaved_seconds(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each function per round (each function once per round) after ``warmup``
    untimed rounds: machine noise hits all of them alike, and each is timed in the steady state
    a loader worker runs in (the first steps of a process are slower, by up to 1.5x here: the
    allocator is still growing its heap and page-faulting fresh memory)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    return times


def _interleaved_median_seconds(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in _interleaved_seconds(fns, repeats, warmup).items()}


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow / fast, each round's two timings taken back to back: a slow
    spell of the machine then scales both, where a ratio of two medians would let it land in one."""
    return statistics.median(a / b for a, b in zip(slow, fast))


def measure_augment(opts: AugmentBenchOptions | None = None, device: str = "cpu") -> dict[str, Any]:
    """Views per second per CPU core for the three ways (one thread), and on ``device`` if a GPU."""
    opts = opts or AugmentBenchOptions()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n_l, n_u = opts.batch_size, opts.batch_size * opts.mu
        labeled, unlabeled = _images(n_l, opts.image_size, 1), _images(n_u, opts.image_size, 2)
        views_per_step = n_l + n_u * len(opts.unlabeled_views)
        cfg = dict(crop_padding=opts.crop_padding, randaugment_n=opts.randaugment_n)
        batched = Views(opts.image_size, AugmentConfig(**cfg))
        legacy = Views(opts.image_size, AugmentConfig(**cfg, randaugment="torchvision", randaugment_m=10))
        cpu = torch.device("cpu")
        step = [0]

        def tensor_step(views: Views, dev: torch.device) -> None:
            gen = torch.Generator().manual_seed(step[0])
            step[0] += 1
            xl = channels_first(labeled).to(dev)     # the loader's own layout step (gather_images)
            xu = channels_first(unlabeled).to(dev)
            normalize_batch(views.batch("weak", xl, gen), dev)
            for name in opts.unlabeled_views:
                normalize_batch(views.batch(name, xu, gen), dev)

        view = pil_pipeline(opts)
        random.seed(0)
        np.random.seed(0)

        def pil_step() -> None:
            torch.stack([view(img, "weak") for img in labeled])
            for name in opts.unlabeled_views:
                torch.stack([view(img, name) for img in unlabeled])

        result: dict[str, Any] = {**asdict(opts), "unlabeled_views": list(opts.unlabeled_views),
                                  "views_per_step": views_per_step, "threads": 1}
        times = _interleaved_seconds({"batched": lambda: tensor_step(batched, cpu),
                                      "per_image_torchvision": lambda: tensor_step(legacy, cpu),
                                      "pil": pil_step}, opts.repeats, opts.warmup)
        for name, t in times.items():
            result[f"{name}_img_s_per_core"] = views_per_step / statistics.median(t)
        result["batched_over_pil"] = paired_ratio(times["pil"], times["batched"])
        result["batched_over_per_image_torchvision"] = paired_ratio(times["per_image_torchvision"], times["batched"])
        if device != "cpu" and torch.cuda.is_available():
            dev = torch.device(device)
            s = _median_seconds(lambda: tensor_step(batched, dev), opts.repeats, lambda: torch.cuda.synchronize(dev))
            result["batched_cuda_img_s"] = views_per_step / s
            result["gpu"] = torch.cuda.get_device_name(dev)
        return result
    finally:
        torch.set_num_threads(threads)


def format_augment(r: dict[str, Any]) -> str:
    lines = [f"augmentation at {r['image_size']} px, B={r['batch_size']} mu={r['mu']}, views "
             f"weak + {'/'.join(r['unlabeled_views'])} ({r['views_per_step']} per step), RandAugment N="
             f"{r['randaugment_n']}, one thread:",
             f"  batched (sslzoo)            {r['batched_img_s_per_core']:8.1f} views/s per core",
             f"  per-image torchvision       {r['per_image_torchvision_img_s_per_core']:8.1f} views/s per core",
             f"  per-image PIL (USB-style)   {r['pil_img_s_per_core']:8.1f} views/s per core",
             f"  batched / PIL = {r['batched_over_pil']:.2f}x (target >= 3), batched / per-image torchvision = "
             f"{r['batched_over_per_image_torchvision']:.2f}x"]
    if "batched_cuda_img_s" in r:
        lines.append(f"  batched on {r['gpu']}: {r['batched_cuda_img_s']:.0f} views/s")
    return "\n".join(lines)


def _call_repeatedly(fn: Callable[[Any, float], Any], image: Any, v: float, calls: int) -> None:
    for _ in range(calls):
        fn(image, v)


def measure_operations(image_size: int = 224, repeats: int = 7, calls: int = 100) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each RandAugment operation on one face-like image, sslzoo's CPU
    route against PIL, one thread, magnitude at 37 % of the range; median of ``repeats`` loops."""
    from PIL import Image

    from sslzoo.data import augment_cpu
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        arr = _images(1, image_size, 5)[0]
        x, img, ops = channels_first(arr[None])[0], Image.fromarray(arr), pil_ops()
        result = {}
        for name, low, high in RANDAUGMENT_OPS:
            v = low + 0.37 * (high - low)
            fns = {"sslzoo_ms": partial(_call_repeatedly, augment_cpu.OPS[name], x, v, calls),
                   "pil_ms": partial(_call_repeatedly, ops[name], img, v, calls)}
            result[name] = {k: 1e3 * t / calls for k, t in _interleaved_median_seconds(fns, repeats, 1).items()}
        return result
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    import sys
    if "--per-op" in sys.argv:
        ops_ms = measure_operations()
        for name, r in ops_ms.items():
            print(f"{name:13s} sslzoo (CPU route) {r['sslzoo_ms']:.3f} ms   PIL {r['pil_ms']:.3f} ms")
        print(f"{'mean':13s} sslzoo (CPU route) {statistics.mean(r['sslzoo_ms'] for r in ops_ms.values()):.3f} ms   "
              f"PIL {statistics.mean(r['pil_ms'] for r in ops_ms.values()):.3f} ms")
    else:
        print(format_augment(measure_augment()))
