"""MixMatch (Berthelot et al., NeurIPS 2019): guessed labels + sharpening + MixUp.

    q_b = Sharpen( 1/K sum_k softmax(f(weak_k(u_b))), T )        Eq. 6-7, K = 2, T = 0.5 (no gradient)
    X^ = (x_b, onehot(y_b)),  U^ = (weak_k(u_b), q_b) for every k
    W  = Shuffle(Concat(X^, U^))
    X' = MixUp(X^_i, W_i),  U' = MixUp(U^_i, W_{i+|X^|})         lambda' = max(lambda, 1-lambda),
                                                                 lambda ~ Beta(0.75, 0.75)
    L_X = 1/|X'| sum CE(p, f(x'))                                soft-target cross-entropy
    L_U = 1/(C |U'|) sum ||q' - softmax(f(u'))||^2               Eq. 4, MSE of probabilities
    L = L_X + lambda_u * r(t) * L_U,  lambda_u = 100, r linear

Shuffling the concatenation and mixing element-wise is the same as mixing the
concatenation with a random permutation of itself, which is what the code does.
Choices, and what they follow:
  * lambda' per mixed pair (``mixup_per_sample=True``): the paper's per-pair MixUp and
    its official code; USB draws one lambda per batch (``mixup_per_sample=false``).
  * alpha = 0.75 and lambda_u = 100, the paper's suggested starting point. The official code's
    defaults and USB's classic_cv configs use alpha 0.5 with lambda_u 100 (CIFAR-10, SVHN,
    STL-10) or 150 (CIFAR-100): ``--set mixmatch.mixup_alpha=0.5``.
  * Ramp: linear, as in the paper, over a fraction of training rather than a step count:
    the paper's 16,000 of 1,048,576 steps is ``unsup_warmup = 1/64`` (USB's default
    argument); ``configs/algorithms/mixmatch.yaml`` uses USB's classic_cv 0.4 for short
    CPU-scale runs.
  * The guess passes (all K views at once) use the training-mode model without gradient
    and without updating batch-norm running statistics (USB's ``freeze_bn``).
  * Batch norm over mixed batches: ``forward_mode="concat"`` (default) runs ONE pass over
    all mixed inputs, so statistics cover the labeled and unlabeled parts together — what
    interleaving approximates; ``"separate"`` is the official code's scheme (interleave,
    one pass per batch-sized chunk, running statistics updated by the first pass only).
    USB HEAD runs the same chunked passes without interleaving (its ``interleave`` calls
    are commented out), so its first pass sees the labeled chunk alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import Batch, SSLAlgorithm, StepContext, StepOutput, pseudo_label_stats
from sslzoo.mixup import frozen_bn_stats, mixed_forward, mixup, sharpen
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm


def soft_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of -sum_c t_c log softmax(logits)_c."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def probs_mse(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows and classes of (softmax(logits) - t)^2 (MixMatch's L_U)."""
    return F.mse_loss(torch.softmax(logits.float(), dim=-1), targets.float(), reduction="none").mean(dim=1).mean()


@torch.no_grad()
def guess_labels(model: nn.Module, views: list[Tensor], temperature: float) -> tuple[Tensor, Tensor]:
    """Average of softmax over the K views (one pass, BN statistics frozen), then sharpened.

    Returns (sharpened targets q [B_u, C], averaged prediction [B_u, C]).
    """
    with frozen_bn_stats(model):
        logits = model(torch.cat(views))[0]
    probs = torch.softmax(logits.float(), dim=-1).view(len(views), views[0].shape[0], -1).mean(dim=0)
    return sharpen(probs, temperature), probs


@register_algorithm("mixmatch")
class MixMatch(SSLAlgorithm):
    """MixMatch: sharpened averaged guesses on K weak views, MixUp of everything, L2 unlabeled loss."""

    name = "mixmatch"
    unlabeled_views = ("weak", "weak")   # K weak views; an instance with K != 2 declares its own
    default_policy = None
    uses_policy = False

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 100.0, T: float = 0.5,
                 K: int = 2, mixup_alpha: float = 0.75, unsup_warmup: float = 1 / 64, rampup: str = "linear",
                 mixup_per_sample: bool = True):
        super().__init__(num_classes, policy)
        if K < 1:
            raise ValueError(f"K (weak views per unlabeled image) must be >= 1; got {K}")
        if T <= 0:
            raise ValueError(f"T (sharpening temperature) must be > 0; got {T}")
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        self.lambda_u, self.T, self.K, self.mixup_alpha = lambda_u, T, K, mixup_alpha
        self.unsup_warmup, self.mixup_per_sample = unsup_warmup, mixup_per_sample
        self.rampup = check_ramp(rampup)
        self.unlabeled_views = ("weak",) * K

    def unsup_weight(self, ctx: StepContext) -> float:
        return self.lambda_u * warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        views = list(batch.u_views)
        q, avg = self.guess(model, views)
        n_l = batch.num_labeled
        inputs = torch.cat([batch.x_l, *views])
        targets = torch.cat([F.one_hot(batch.y_l, self.num_classes).float(), q.repeat(len(views), 1)])
        mixed_x, mixed_y, _, _ = mixup(inputs, targets, self.mixup_alpha, self.mixup_per_sample)
        logits, _, extra_out = mixed_forward(model, mixed_x, n_l, ctx.forward_mode, self.extra_inputs(batch))
        sup = soft_ce(logits[:n_l], mixed_y[:n_l])
        unsup = probs_mse(logits[n_l:], mixed_y[n_l:])
        losses = {"sup": sup, "unsup": self.unsup_weight(ctx) * unsup}
        pseudo = avg.argmax(dim=-1)
        stats = pseudo_label_stats(torch.ones_like(pseudo, dtype=torch.float32), pseudo, batch.u_true)
        self.extra_terms(batch, extra_out, losses, stats, ctx)
        return StepOutput(losses, stats)

    # -- hooks for methods built on MixMatch (MarginMix); MixMatch itself adds nothing ----------
    def guess(self, model: nn.Module, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(sharpened targets q, averaged prediction) for the unlabeled views (Eq. 6-7)."""
        return guess_labels(model, views, self.T)

    def extra_inputs(self, batch: Batch) -> list[Tensor]:
        """Unmixed inputs to run in the same gradient pass as the mixed batch."""
        return []

    def extra_terms(self, batch: Batch, extra_out: list[tuple[Tensor, Tensor]], losses: dict[str, Tensor],
                    stats: dict[str, Tensor], ctx: StepContext) -> None:
        """Add loss terms and statistics from the extra inputs' (logits, features), in place."""
