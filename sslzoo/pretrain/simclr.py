"""SimCLR (Chen et al. 2020): contrastive pretraining of a backbone on unlabeled images.

Two augmented views of every image go through the backbone and a 2-layer projection
head; NT-Xent pulls each view towards the other view of its image and away from the
2N - 2 other views of the batch. Labels are never read. Only the backbone is kept;
the projection head is discarded, as in the paper.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.views import MEAN, STD
from ..errors import SSLZooError
from .augment import SimCLRAugment


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent: ``-log exp(sim(i, j)/t) / sum_{k != i} exp(sim(i, k)/t)`` averaged over all 2N views.

    ``z1[n]`` and ``z2[n]`` are the two views of image ``n``; sim is the cosine similarity.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def projection_head(dim: int) -> nn.Sequential:
    """SimCLR's MLP g(.): dim -> dim -> dim / 2 (the loss is computed on its output)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, max(dim // 2, 1)))


def simclr(model: nn.Module, images: Tensor, *, epochs: int, batch_size: int, lr: float, temperature: float,
           seed: int, device: torch.device, log: Callable[[str], None] = print, **augment: Any) -> None:
    """Train ``model`` (a backbone returning ``(logits, pooled feature)``) in place on uint8 ``images`` [N, 3, H, W].

    Adam with cosine decay over all steps; each epoch visits ``N // batch_size`` batches
    of a fresh permutation. Every random number comes from one generator seeded with ``seed``.
    """
    if len(images) < batch_size:
        raise SSLZooError(f"SimCLR pretraining needs at least batch_size={batch_size} images; got {len(images)}.")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                                # the projection head's initialization
    dim = int(getattr(model, "feature_dim", 0)) or _feature_dim(model, images)
    projection = projection_head(dim).to(device)
    model.to(device).train()
    params = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    optimizer = torch.optim.Adam([*params, *projection.parameters()], lr)
    per_epoch = len(images) // batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * per_epoch)
    transform = SimCLRAugment(**augment)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for k in range(per_epoch):
            batch = images[order[k * batch_size:(k + 1) * batch_size]].to(device, non_blocking=True)
            views = torch.cat([transform(batch, generator), transform(batch, generator)])
            _, pooled = model((views - mean) / std)
            z = projection(pooled)
            loss = nt_xent(z[:len(batch)], z[len(batch):], temperature)
            if not torch.isfinite(loss):
                raise SSLZooError(f"SimCLR pretraining diverged: NT-Xent is {loss.item()} at epoch {epoch + 1}, "
                                  f"step {k + 1}. Lower the recipe's lr (now {lr}).")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        log(f"pretraining epoch {epoch + 1}/{epochs}: NT-Xent {total / per_epoch:.3f} "
            f"({time.perf_counter() - start:.0f} s)")


def _feature_dim(model: nn.Module, images: Tensor) -> int:
    """The pooled feature's width, for a backbone that does not declare ``feature_dim``."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        _, feature = model(images[:2].float() / 255)
        model.train(was_training)
    return int(feature.shape[1])
