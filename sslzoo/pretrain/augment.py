"""SimCLR's augmentation (Chen et al. 2020, Appendix A) for a whole batch in a few tensor ops.

Why batched and not torchvision's per-image transforms: contrastive pretraining draws two
views of every image every step; per image in Python that was a third of the step time on
2 CPU cores, and it cannot run on a GPU. Here each transform is one op over the batch with
per-image parameters, drawn from one ``torch.Generator`` in a fixed order, so a view is a
pure function of the generator's state (reproducible, on CPU and GPU alike).

Differences from torchvision's ``ColorJitter``, kept on purpose: the four jitters are
applied in a fixed order (brightness, contrast, saturation, hue) instead of a random one,
and hue is a rotation of the chroma plane in YIQ space rather than a shift in HSV; both
give the same family of colour changes, which is what the contrastive task needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY = (0.299, 0.587, 0.114)                       # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass(frozen=True)
class SimCLRAugment:
    """Random resized crop + flip, colour jitter (with probability ``jitter_p``), grayscale."""

    crop_scale: tuple[float, float] = (0.4, 1.0)     # area kept, as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1                                  # fraction of a full turn, as torchvision
    grayscale_p: float = 0.2

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 or [0, 1] float images [B, 3, H, W] -> augmented float images in [0, 1]."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = self.crop_and_flip(x, generator)
        x = self.jitter(x, generator)
        gray = _uniform(len(x), 0, 1, generator, x.device) < self.grayscale_p
        return torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def crop_and_flip(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One ``grid_sample`` resamples every image's own crop (bilinear) back to full size."""
        n, device = len(x), x.device
        area = _uniform(n, *self.crop_scale, generator, device)
        log_ratio = _uniform(n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), generator, device)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)     # crop width and height, as fractions of the side
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (2 * _uniform(n, 0, 1, generator, device) - 1) * (1 - w)   # crop centre in [-1, 1] coordinates
        cy = (2 * _uniform(n, 0, 1, generator, device) - 1) * (1 - h)
        flip = torch.where(_uniform(n, 0, 1, generator, device) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def jitter(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, device = len(x), x.device
        apply = (_uniform(n, 0, 1, generator, device) < self.jitter_p).view(-1, 1, 1, 1)
        b = _uniform(n, 1 - self.brightness, 1 + self.brightness, generator, device).view(-1, 1, 1, 1)
        c = _uniform(n, 1 - self.contrast, 1 + self.contrast, generator, device).view(-1, 1, 1, 1)
        s = _uniform(n, 1 - self.saturation, 1 + self.saturation, generator, device).view(-1, 1, 1, 1)
        hue = _uniform(n, -self.hue, self.hue, generator, device)
        y = (x * b).clamp(0, 1)
        y = blend(y, grayscale(y).mean(dim=(2, 3), keepdim=True), c)
        y = blend(y, grayscale(y), s)
        y = rotate_hue(y, hue)
        return torch.where(apply, y, x)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device) * (high - low) + low


def grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    weights = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def blend(x: Tensor, towards: Tensor, factor: Tensor) -> Tensor:
    """torchvision's contrast / saturation adjustment: ``factor * x + (1 - factor) * towards``, clamped."""
    return (factor * x + (1 - factor) * towards).clamp(0, 1)


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate every image's colours about the gray axis by ``turns`` (per image) of a full circle."""
    to_yiq = torch.tensor(_RGB_TO_YIQ, device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = (2 * math.pi * turns).view(-1, 1, 1)
    cos, sin = angle.cos(), angle.sin()
    i, q = yiq[:, 1], yiq[:, 2]
    rotated = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), rotated).clamp(0, 1)
