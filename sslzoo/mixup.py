"""MixUp, sharpening and the forward-pass helpers of algorithms that run their own passes.

Shared by MixMatch, ReMixMatch and Mean Teacher:

    Sharpen(p, T)_c = p_c^(1/T) / sum_j p_j^(1/T)                      (MixMatch Eq. 7)
    lambda ~ Beta(alpha, alpha),  lambda' = max(lambda, 1 - lambda)     (MixMatch Eq. 8-9)
    x' = lambda' x + (1 - lambda') x[perm],  y' = lambda' y + (1 - lambda') y[perm]

lambda' >= 0.5 keeps every mixed sample closer to its own input, so the first rows of
a mixed batch stay "the labeled part". ``per_sample=True`` draws one lambda per row
(the MixMatch/ReMixMatch official code); ``False`` one per batch (USB).

Batch norm: ``frozen_bn_stats`` runs a forward pass that normalizes with the batch's
own statistics but leaves the running statistics untouched (USB's ``bn_controller``);
it is how label-guessing passes and extra passes avoid biasing the evaluation statistics.
Random draws (lambda, the permutation) come from the generator of the batch's own device
(seeded by the trainer and saved in checkpoints), so runs are reproducible and resumable,
and a CUDA step never waits for a host-side draw to be copied in.

Distributed (a documented exception to "N processes = one process with the N x batch",
docs/reliability.md): each process mixes within its own batch, as USB does (its
``mixup_one_target`` permutes the GPU's batch; the official MixMatch code runs on one GPU).
Mixing across processes would gather every process's images each step. Every process also
draws the same lambdas and permutation (the training generator is seeded alike on every rank,
as in USB), so rank r's row i is mixed with the same weight and partner position as rank 0's.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """p^(1/T) renormalized per row (computed in log space: no underflow for small T)."""
    if temperature <= 0:
        raise ValueError(f"sharpening temperature must be > 0; got {temperature}")
    logp = torch.log(p.float().clamp_min(torch.finfo(torch.float32).tiny))
    return torch.softmax(logp / temperature, dim=-1)


def sample_lambda(n: int, alpha: float, per_sample: bool = True, device: torch.device | None = None) -> Tensor:
    """lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha): [n] values (all equal if not per sample).

    alpha <= 0 disables mixing (lambda' = 1). Drawn on ``device`` (default: the CPU).
    """
    if alpha <= 0:
        return torch.ones(n, device=device)
    a = torch.full((), float(alpha), device=device)   # a fill: torch.tensor(x, device=cuda) would sync
    beta = torch.distributions.Beta(a, a, validate_args=False)   # validation reads the tensors on the host
    lam = beta.sample((n,) if per_sample else (1,))
    lam = torch.maximum(lam, 1.0 - lam)
    return lam if per_sample else lam.expand(n).clone()


def mix(x: Tensor, y: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """x' = lam x + (1 - lam) x[perm] and the same for the (soft) targets y; lam has one value per row."""
    lam = lam.to(x.device)
    lx = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    ly = lam.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
    perm = perm.to(x.device)
    return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


def mixup(x: Tensor, y: Tensor, alpha: float, per_sample: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MixUp of a batch with a shuffled copy of itself; returns (x', y', lambda' [N], perm [N])."""
    n = x.shape[0]
    lam = sample_lambda(n, alpha, per_sample, x.device)
    perm = torch.randperm(n, device=x.device)
    mixed_x, mixed_y = mix(x, y, lam, perm)
    return mixed_x, mixed_y, lam, perm


def _interleave_offsets(batch: int, groups: int) -> list[int]:
    sizes = [batch // groups] * groups
    for i in range(batch - sum(sizes)):
        sizes[-i - 1] += 1
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    return offsets


def interleave(chunks: Sequence[Tensor], batch: int) -> list[Tensor]:
    """Swap slices between equal-sized chunks so that each holds a share of the first (labeled) chunk.

    MixMatch's trick for when only the first of several passes updates batch-norm
    statistics: after interleaving, that pass sees labeled and unlabeled rows in
    proportion. Applying it twice restores the original order.
    """
    n = len(chunks)
    offsets = _interleave_offsets(batch, n)
    parts = [[c[offsets[p]:offsets[p + 1]] for p in range(n)] for c in chunks]
    for i in range(1, n):
        parts[0][i], parts[i][i] = parts[i][i], parts[0][i]
    return [torch.cat(p, dim=0) for p in parts]


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave batch-norm running statistics (and counters) as they were."""
    saved = [(m, m.running_mean.clone() if m.running_mean is not None else None,
              m.running_var.clone() if m.running_var is not None else None,
              m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in _bn_modules(model)]
    try:
        yield
    finally:
        # Through ``.data``: the buffers keep their autograd version counters. Batch norm saves
        # them for backward, so an in-place restore that bumped the version would make the
        # gradient pass of an earlier forward fail (their values are not used by that backward).
        for m, mean, var, count in saved:
            if mean is not None:
                m.running_mean.data.copy_(mean)
            if var is not None:
                m.running_var.data.copy_(var)
            if count is not None:
                m.num_batches_tracked.data.copy_(count)


@contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in training mode (batch statistics, dropout), then restore its mode."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def mixed_forward(model: nn.Module, mixed: Tensor, batch_size: int, mode: str = "concat",
                  extra: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """Logits and features of a mixed batch (labeled part first) and of ``extra`` inputs.

    "concat": one pass over [mixed, *extra] (batch-norm statistics over all of it: a
    single-pass equivalent of interleaving, and one gradient pass, which DDP needs).
    "separate": MixMatch's official scheme: the mixed batch is split into chunks of
    ``batch_size`` and interleaved, only the first chunk's pass updates batch-norm
    running statistics, and each ``extra`` input gets its own pass with frozen
    statistics. (USB HEAD splits and freezes the same way but does not interleave.)
    """
    if mode == "concat":
        logits, feats = model(torch.cat([mixed, *extra]))
        sizes = [mixed.shape[0]] + [e.shape[0] for e in extra]
        lp, fp = logits.split(sizes), feats.split(sizes)
        return lp[0], fp[0], list(zip(lp[1:], fp[1:]))
    if mode != "separate":
        raise ValueError(f"forward_mode must be 'concat' or 'separate', got {mode!r}")
    chunks = list(mixed.split(batch_size))
    even = all(c.shape[0] == batch_size for c in chunks)
    if even:
        chunks = interleave(chunks, batch_size)
    outs = [model(chunks[0])]
    with frozen_bn_stats(model):
        outs += [model(c) for c in chunks[1:]]
        extra_outs = [model(e) for e in extra]
    logits, feats = [o[0] for o in outs], [o[1] for o in outs]
    if even:
        logits, feats = interleave(logits, batch_size), interleave(feats, batch_size)
    return torch.cat(logits), torch.cat(feats), [(o[0], o[1]) for o in extra_outs]
