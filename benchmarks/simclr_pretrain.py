"""Self-supervised (SimCLR-style) pretraining of the small CNN on synthfer_faces images.

``python -m benchmarks.simclr_pretrain --out pretrained/simclr_faces.pt``, then fine-tune with
``--set backbone.weights=pretrained/simclr_faces.pt`` (docs/pretraining.md has the numbers).

Why: identity pretraining on synthfer_faces (the MS-Celeb analog) discards expression
information; contrastive pretraining on the same images, labels unused, keeps it. This is
an experiment, not yet a zoo component: it has its own short loop (NT-Xent between two
augmented views, Chen et al. 2020) instead of going through the trainer. Deterministic for a
given seed and thread count (``--threads``, default 2).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch import Tensor, nn

from sslzoo.data.prepare import load_bundle
from sslzoo.data.views import MEAN, STD
from sslzoo.errors import SSLZooError
from sslzoo.io import atomic_write
from sslzoo.models.smallcnn import SmallCNN


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's loss: each view's positive is the other view of its image, the 2N - 2 others are negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, positives)


def simclr_augment(image_size: int) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(image_size, scale=(0.4, 1.0), antialias=True), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2)])


def pretrain(images: np.ndarray, *, width: int, epochs: int, batch_size: int, lr: float, temperature: float,
             seed: int, log=print) -> SmallCNN:
    """A SmallCNN whose ``features`` were trained with NT-Xent on ``images`` (uint8 [N, H, W, 3])."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    if len(x) < batch_size:
        raise SSLZooError(f"simclr_pretrain needs at least --batch-size={batch_size} images; got {len(x)}.")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    augment = simclr_augment(x.shape[-1])
    model = SmallCNN(1, width, dropout=0.0, normalize_feature=False)
    dim = model.feature_dim
    projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim // 2))
    optimizer = torch.optim.Adam([*model.features.parameters(), *projection.parameters()], lr)
    per_epoch = len(x) // batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * per_epoch)

    def view(batch: Tensor) -> Tensor:
        return (torch.stack([augment(img) for img in batch]).float() / 255 - mean) / std

    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for k in range(per_epoch):
            batch = x[order[k * batch_size:(k + 1) * batch_size]]
            pooled = torch.flatten(F.adaptive_avg_pool2d(model.features(torch.cat([view(batch), view(batch)])), 1), 1)
            z = projection(pooled)
            loss = nt_xent(z[:len(batch)], z[len(batch):], temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"epoch {epoch + 1}/{epochs}: NT-Xent {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where to write the weights (a state dict of features.*)")
    p.add_argument("--dataset", default="synthfer_faces", help="whose training images to use (labels unused)")
    p.add_argument("--width", type=int, default=16, help="smallcnn width (synthfer's config uses 16)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        bundle = load_bundle(args.dataset, None, None, {})
        model = pretrain(bundle.train.images, width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, temperature=args.temperature, seed=args.seed)
    except SSLZooError as exc:
        print(f"simclr_pretrain: error: {exc}", file=sys.stderr)
        return 2
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    atomic_write(args.out, lambda f: torch.save({"state_dict": state, "recipe": vars(args)}, f), mode="wb")
    print(f"weights: {args.out} (use with --set backbone.weights={args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
