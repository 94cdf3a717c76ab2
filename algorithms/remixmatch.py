"""ReMixMatch (Berthelot et al., ICLR 2020): distribution alignment + augmentation anchoring.

    p     = softmax(f(weak(u)))                                  (no gradient)
    p~    = mean of the batch-mean p over the last ``da_window`` steps   (running p_model)
    p_DA  = Normalize(p * (p(y) + eps) / (p~ + eps))             distribution alignment, p(y) =
                                                                 the labeled class distribution
    q     = Sharpen(p_DA, T),  T = 0.5                           (the anchor's guessed label)
    U^    = (strong_k(u), q) for k = 1..K, plus (weak(u), q);  X^ = (x, onehot(y))
    (X', U') = MixUp of Concat(X^, U^) with a shuffled copy,  lambda' = max(lambda, 1-lambda),
               lambda ~ Beta(0.75, 0.75)
    L_X   = CE(mixed targets, f(X'))                            soft-target cross-entropy
    L_U   = CE(mixed targets, f(U'))
    L_U1  = CE(q, f(strong_1(u)))                               the first strong view, not mixed
    L_rot = CE(r, g(h(rot_r(strong_1(u))))),  r ~ U{0, 90, 180, 270}   rotation head g on features h
    L = L_X + r(t) (1.5 L_U + 0.5 L_U1) + 0.5 L_rot,  r(t) linear ramp over ``unsup_warmup``

Choices, and what they follow:
  * K = 2 strong views (the paper uses 8) to keep CPU cost down; ``--set remixmatch.K=8``.
  * The weak view joins the MixUp pool, as in the official code (``y_in[:, 0]`` is mixed
    with the K strong views) and USB.
  * Distribution alignment: the paper's and official code's moving average over the last
    128 batches (``da_window``; ``configs/algorithms/remixmatch.yaml`` uses 32 for short
    runs). ``da_buffer="running"`` (default): the mean of the rows filled so far, the
    current batch included before aligning (so step 0 is aligned by its own mean).
    ``da_buffer="official"``: the official code's buffer (``PMovingAverage``): W rows that
    start filled with 1/C, all W averaged, read BEFORE the current batch is pushed; the
    two differ in the first W steps only. USB HEAD uses neither: an EMA (momentum 0.999)
    started from the first batch's mean, current batch included. Under DDP the batch
    means are averaged over ranks. p(y) is the labeled set's class distribution (USB's
    ``p_target_type='gt'``), read once from the labeled set at the first epoch start;
    ``da_target="uniform"`` uses 1/C.
  * Ramp: linear on L_U and L_U1 only (official code and USB), over 1/64 of training
    (the official ``warmup_kimg=1024`` of 65,536 kimg; USB's default).
  * Rotation: a random rotation per sample of the first strong view (USB); the head is a
    Linear(feature_dim, 4) on the backbone's (logits, FEATURES) output, built at its size by
    ``bind_backbone`` before training (and broadcast from rank 0 under DDP, like the
    backbone). Only a backbone that declares no ``feature_dim`` gets a lazy head, sized at
    the first step, whose weights every rank then takes from rank 0.
  * MixUp lambda per pair (``mixup_per_sample``), like MixMatch here; USB: one per batch.
  * Passes: one label-guess pass (no gradient, batch-norm statistics frozen), then, in
    ``forward_mode="concat"``, ONE gradient pass over the mixed batch, the unmixed first
    strong view and the rotated view; ``"separate"`` interleaves batch-sized chunks as the
    official code does (USB HEAD has its interleave calls commented out), updates
    batch-norm statistics from the first chunk's pass only (USB; the official TF code
    keeps the last chunk's updates) and runs the extra inputs with frozen statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import Batch, EpochContext, SSLAlgorithm, StepContext, StepOutput, pseudo_label_stats
from sslzoo.mixup import frozen_bn_stats, mixed_forward, mixup, sharpen
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm

from .mixmatch import soft_ce

DA_EPS = 1e-6


class DistributionAlignment:
    """Running p_model (mean over the last ``window`` steps of the batch-mean prediction) and p_target.

    ``official=False``: the mean of the rows filled so far, this batch pushed before aligning.
    ``official=True`` (ReMixMatch's official ``PMovingAverage``): ``window`` rows filled with
    1/C at the start, all averaged (and renormalized), read before this batch is pushed.
    All state lives in tensors so a checkpoint restores it exactly.
    """

    def __init__(self, num_classes: int, window: int, official: bool = False):
        self.num_classes, self.window, self.official = num_classes, window, official
        fill = 1.0 / num_classes if official else 0.0
        self.history = torch.full((window, num_classes), fill)   # ring buffer of batch means
        self.count = torch.zeros((), dtype=torch.long)           # batches pushed so far
        self.p_target = torch.full((num_classes,), 1.0 / num_classes)
        self.target_set = torch.zeros((), dtype=torch.bool)      # p_target read from the labeled set?

    def to(self, device: torch.device) -> "DistributionAlignment":
        for key in ("history", "count", "p_target", "target_set"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    def set_target(self, labels: Tensor) -> None:
        counts = torch.bincount(labels.long().cpu(), minlength=self.num_classes).float()
        self.p_target = (counts / counts.sum().clamp_min(1.0)).to(self.p_target.device)
        self.target_set = torch.ones((), dtype=torch.bool, device=self.p_target.device)

    @torch.no_grad()
    def push(self, batch_mean: Tensor) -> None:
        slot = (self.count % self.window).view(1)          # a device index: no host read
        self.history.index_copy_(0, slot, batch_mean.to(self.history)[None])
        self.count += 1

    def p_model(self) -> Tensor:
        """Mean of the filled rows of the ring buffer, 1/C before the first push (official: of all rows)."""
        if self.official:
            mean = self.history.mean(dim=0)
            return mean / mean.sum()
        filled = self.count.clamp(max=self.window)
        rows = (torch.arange(self.window, device=self.history.device) < filled).to(self.history)
        mean = (self.history * rows[:, None]).sum(dim=0) / filled.clamp_min(1).to(self.history)
        return torch.where(filled > 0, mean, torch.full_like(mean, 1.0 / self.num_classes))

    @torch.no_grad()
    def __call__(self, probs: Tensor, batch_mean: Tensor | None = None) -> Tensor:
        """Push this batch's mean (``batch_mean`` if given, e.g. averaged over ranks) and align ``probs``:
        push first, or (official) align with the buffer as it was, then push."""
        mean = probs.float().mean(dim=0) if batch_mean is None else batch_mean
        if self.official:
            aligned = self.align(probs)
            self.push(mean)
            return aligned
        self.push(mean)
        return self.align(probs)

    def align(self, probs: Tensor) -> Tensor:
        ratio = (self.p_target.to(probs) + DA_EPS) / (self.p_model().to(probs) + DA_EPS)
        aligned = probs * ratio
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def state_dict(self) -> dict[str, Tensor]:
        return {"history": self.history, "count": self.count, "p_target": self.p_target,
                "target_set": self.target_set}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            setattr(self, key, value.to(current.device, current.dtype).clone())


def rotate_batch(x: Tensor, quarter_turns: Tensor) -> Tensor:
    """Rotate each [C, H, W] image by quarter_turns[i] * 90 degrees (square images).

    Four whole-batch rotations selected per image (no indexing by a device mask: no host sync).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation self-supervision needs square images; got {tuple(x.shape[-2:])}")
    turns = quarter_turns.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    out = x
    for k in range(1, 4):   # four angles, not a loop over samples
        out = torch.where(turns == k, torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def optional_alignment(num_classes: int, da_window: int) -> DistributionAlignment | None:
    """The uniform-target alignment over the last ``da_window`` steps of SimMatch/CoMatch, or None
    for ``da_window=0`` (off)."""
    if int(da_window) < 0:
        raise ValueError(f"da_window (steps in the distribution-alignment mean; 0 = off) must be >= 0; "
                         f"got {da_window}")
    return DistributionAlignment(num_classes, int(da_window)) if int(da_window) > 0 else None


@register_algorithm("remixmatch")
class ReMixMatch(SSLAlgorithm):
    """ReMixMatch: aligned, sharpened weak guesses anchor K strong views; MixUp; rotation head."""

    name = "remixmatch"
    unlabeled_views = ("weak", "strong", "strong")   # weak anchor + K strong views (K=2 by default)
    default_policy = None
    uses_policy = False
    state_parts = ("da",)

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.5, lambda_u1: float = 0.5,
                 lambda_rot: float = 0.5, T: float = 0.5, K: int = 2, mixup_alpha: float = 0.75,
                 unsup_warmup: float = 1 / 64, da_window: int = 128, da_target: str = "labeled",
                 mixup_per_sample: bool = True, da_buffer: str = "running"):
        super().__init__(num_classes, policy)
        if K < 1:
            raise ValueError(f"K (strong views per unlabeled image) must be >= 1; got {K}")
        if T <= 0:
            raise ValueError(f"T (sharpening temperature) must be > 0; got {T}")
        if da_window < 1:
            raise ValueError(f"da_window (steps in the running p_model) must be >= 1; got {da_window}")
        if da_target not in ("labeled", "uniform"):
            raise ValueError(f"da_target must be 'labeled' or 'uniform'; got {da_target!r}")
        if da_buffer not in ("running", "official"):
            raise ValueError(f"da_buffer must be 'running' (mean of the batches so far, this one included) or "
                             f"'official' (the official code's buffer: 1/C rows, read before this batch); "
                             f"got {da_buffer!r}")
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        self.lambda_u, self.lambda_u1, self.lambda_rot = lambda_u, lambda_u1, lambda_rot
        self.T, self.K, self.mixup_alpha, self.unsup_warmup = T, K, mixup_alpha, unsup_warmup
        self.da_target, self.mixup_per_sample = da_target, mixup_per_sample
        self.rampup = check_ramp("linear")
        self.unlabeled_views = ("weak",) + ("strong",) * K
        self.da = DistributionAlignment(num_classes, da_window, official=da_buffer == "official")
        heads = {"rot": nn.LazyLinear(4)} if lambda_rot > 0 else {}
        self._modules_dict = nn.ModuleDict(heads)

    # -- hooks ------------------------------------------------------------------------
    def bind_backbone(self, feature_dim: int | None) -> None:
        """A rotation head of the backbone's width; it stays lazy for a backbone with no ``feature_dim``."""
        if "rot" in self._modules_dict and feature_dim is not None:
            self._modules_dict["rot"] = nn.Linear(feature_dim, 4)

    def extra_modules(self) -> nn.ModuleDict:
        return self._modules_dict

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Read p(y) from the labeled set once (USB's 'gt' target); it is then part of the state."""
        if self.da_target == "labeled" and not bool(self.da.target_set) and ctx.labeled_targets is not None:
            self.da.set_target(ctx.labeled_targets)

    # -- the step -----------------------------------------------------------------------
    def unsup_ramp(self, ctx: StepContext) -> float:
        return warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    @torch.no_grad()
    def guess(self, model: nn.Module, weak: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(q = Sharpen(DA(p)), p) for the weak view; one pass with frozen BN statistics."""
        with frozen_bn_stats(model):
            logits = model(weak)[0]
        p = torch.softmax(logits.float(), dim=-1)
        batch_mean = ctx.dist.all_reduce(p.mean(dim=0), op="mean")
        return sharpen(self.da(p, batch_mean), self.T), p

    def _rotation_head(self, feats: Tensor, ctx: StepContext) -> Tensor:
        """The rotation logits. A lazy head (backbone without ``feature_dim``) takes its width from
        ``feats`` at the first call and, under DDP, every rank then takes rank 0's initial weights
        (as DDP does for the backbone; a head built by ``bind_backbone`` is broadcast at setup)."""
        head = self._modules_dict["rot"]
        if isinstance(head, nn.modules.lazy.LazyModuleMixin) and head.has_uninitialized_params():
            with torch.no_grad():
                head(feats[:1])
            ctx.dist.broadcast_(list(head.parameters()))
        return head(feats)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        weak, *strong = batch.u_views
        q, p = self.guess(model, weak, ctx)
        n_l, n_u = batch.num_labeled, weak.shape[0]
        inputs = torch.cat([batch.x_l, *strong, weak])
        targets = torch.cat([F.one_hot(batch.y_l, self.num_classes).float(), q.repeat(len(strong) + 1, 1)])
        mixed_x, mixed_y, _, _ = mixup(inputs, targets, self.mixup_alpha, self.mixup_per_sample)
        extra = [strong[0]]
        use_rot = self.lambda_rot > 0
        if use_rot:
            turns = torch.randint(0, 4, (n_u,), device=weak.device)
            extra.append(rotate_batch(strong[0], turns))
        logits, _, extra_out = mixed_forward(model, mixed_x, n_l, ctx.forward_mode, extra)
        ramp = self.unsup_ramp(ctx)
        losses = {
            "sup": soft_ce(logits[:n_l], mixed_y[:n_l]),
            "unsup": self.lambda_u * ramp * soft_ce(logits[n_l:], mixed_y[n_l:]),
            "anchor": self.lambda_u1 * ramp * soft_ce(extra_out[0][0], q),
        }
        if use_rot:
            rot_logits = self._rotation_head(extra_out[1][1].float(), ctx)
            losses["rot"] = self.lambda_rot * F.cross_entropy(rot_logits, turns.to(rot_logits.device))
        pseudo = p.argmax(dim=-1)
        stats = pseudo_label_stats(torch.ones_like(pseudo, dtype=torch.float32), pseudo, batch.u_true)
        return StepOutput(losses, stats)
