"""SimCLR (Chen et al. 2020): contrastive pretraining of a backbone on unlabeled images.

Two augmented views of every image go through the backbone and a 2-layer projection
head; NT-Xent pulls each view towards the other view of its image and away from the
2N - 2 other views of the batch. Labels are never read. Only the backbone is kept;
the projection head is discarded, as in the paper.

Progress: an epoch of the built-in recipe takes about a minute on 2 CPU cores, so there is
progress inside it too (:class:`StepProgress`).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

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


class StepProgress:
    """Progress inside the epochs: a tqdm bar per epoch when stderr is a terminal; otherwise (a
    bench's log file, where a bar's carriage returns are noise) a line through ``log`` every 10 %
    of all steps or every 30 s, whichever comes first. The per-epoch summary lines go through
    ``log`` either way."""

    EVERY_FRACTION, EVERY_S = 0.1, 30.0

    def __init__(self, epochs: int, per_epoch: int, log: Callable[[str], None], stream: TextIO | None = None):
        self.epochs, self.per_epoch, self.log = epochs, per_epoch, log
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.start = self.last_time = time.perf_counter()
        self.last_step, self.bar = 0, None
        self.every = max(1, math.ceil(self.EVERY_FRACTION * epochs * per_epoch))

    def start_epoch(self, epoch: int) -> None:
        if self.terminal:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.per_epoch, desc=f"pretraining epoch {epoch + 1}/{self.epochs}", unit="step",
                            leave=False, dynamic_ncols=True, mininterval=0.5, file=self.stream)

    def step(self, epoch: int, k: int, mean_loss: float) -> None:
        """After step ``k`` (0-based) of ``epoch``, with the epoch's mean NT-Xent so far."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"NT-Xent {mean_loss:.3f}", refresh=False)
            self.bar.update(1)
            return
        done, total, now = epoch * self.per_epoch + k + 1, self.epochs * self.per_epoch, time.perf_counter()
        if k + 1 < self.per_epoch and (done - self.last_step >= self.every or now - self.last_time >= self.EVERY_S):
            self.log(f"  pretraining step {done}/{total} ({100 * done / total:.0f} %): epoch {epoch + 1}/"
                     f"{self.epochs}, NT-Xent {mean_loss:.3f} so far ({now - self.start:.0f} s)")
            self.last_step, self.last_time = done, now

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        self.close()
        self.log(f"pretraining epoch {epoch + 1}/{self.epochs}: NT-Xent {mean_loss:.3f} "
                 f"({time.perf_counter() - self.start:.0f} s)")
        self.last_time = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def simclr(model: nn.Module, images: Tensor, *, epochs: int, batch_size: int, lr: float, temperature: float,
           seed: int, device: torch.device, log: Callable[[str], None] = print, **augment: Any) -> None:
    """Train ``model`` (a backbone returning ``(logits, pooled feature)``) in place on uint8 ``images`` [N, 3, H, W].

    Adam with cosine decay over all steps; each epoch visits ``N // batch_size`` batches
    of a fresh permutation. Every random number comes from one generator seeded with ``seed``.
    Progress goes to ``log`` (and a bar on a terminal's stderr: :class:`StepProgress`).
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
    progress = StepProgress(epochs, per_epoch, log)
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            progress.start_epoch(epoch)
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
                progress.step(epoch, k, total / (k + 1))
            progress.end_epoch(epoch, total / per_epoch)
    finally:
        progress.close()


def _feature_dim(model: nn.Module, images: Tensor) -> int:
    """The pooled feature's width, for a backbone that does not declare ``feature_dim``."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        _, feature = model(images[:2].float() / 255)
        model.train(was_training)
    return int(feature.shape[1])
