"""What a threshold policy sees and does: the step/epoch contexts, its input, its base class.

A policy answers "which unlabeled samples are trusted, with what weight?". It sits
below the algorithms (an algorithm = a policy + an unlabeled loss) and knows nothing
of losses, models or files; ``sslzoo.algorithm`` builds on it and re-exports these names.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .distributed import DistContext


@dataclass
class StepContext:
    """Where training is, plus the capabilities an algorithm may ask for.

    ``labeled_loss()``: per-sample cross-entropy [N_l] of the TRAINING model, in eval mode, over
    the whole labeled training set in the view the algorithm trains on; on the device, the
    same on every rank (each computes a shard; gathered). It is an evaluation pass over the
    labeled set with host-side work, so a policy calls it from ``ThresholdPolicy.before_step``
    (outside the sync-free step), and rarely: Dash once, after its warm-up, for rho_hat.
    None outside the trainer.
    """

    epoch: int                       # 0-based epoch index
    iteration: int                   # 0-based iteration within the epoch
    step: int                        # 0-based global step
    total_steps: int
    iters_per_epoch: int
    num_classes: int
    dist: DistContext = field(default_factory=DistContext)
    model: nn.Module | None = None   # the trained model (maybe DDP-wrapped), for algorithms with own forwards
    ema_model: nn.Module | None = None  # the EMA teacher (MeanTeacher), evaluation model
    forward_mode: str = "concat"     # "concat": one pass over all inputs; "separate": one pass per input
    labeled_loss: Callable[[], Tensor] | None = None   # see above (Dash's rho_hat)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1] (ramp-ups, TSA schedules)."""
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class EpochContext:
    """Handed to policies at epoch boundaries."""

    epoch: int                       # 0-based index of the epoch about to start
    epochs: int
    num_classes: int
    dist: DistContext
    # Predictions of the evaluation model over the WHOLE labeled set (all ranks), computed lazily:
    # labeled_predictions(view) -> (probs [N, C], targets [N]); view is "weak" or "plain".
    labeled_predictions: Callable[[str], tuple[Tensor, Tensor]] | None = None
    # Labels of the whole labeled set [N_l] (every rank), for class priors without a prediction pass.
    labeled_targets: Tensor | None = None


@dataclass
class PolicyInput:
    """What a threshold policy sees at each step (all detached).

    ``labeled_probs`` is the softmax of the labeled batch's (weak-view) logits, for policies
    that scale their threshold by the model's confidence on labeled data (AdaMatch's relative
    threshold, policy "relative"). It is optional: algorithms that do not pass it leave it
    None, and a policy that needs it says so when it meets None.
    """

    probs: Tensor                     # [B_u, C] pseudo-label distribution
    index: Tensor | None = None       # [B_u] unlabeled pool positions
    labeled_loss: Tensor | None = None  # [B_l] per-sample supervised cross-entropy of this labeled batch
    labeled_probs: Tensor | None = None  # [B_l, C] softmax of the labeled (weak) logits (AdaMatch)


class ThresholdPolicy:
    """Which unlabeled samples are trusted, with what weight in [0, 1].

    Subclasses implement ``weights``; stateful ones also ``update`` (per step),
    ``on_epoch_start`` (per epoch) and keep every counter/EMA in tensors listed by
    ``state_dict`` so that resuming restores them exactly.
    """

    name: ClassVar[str] = "policy"
    spec_arg: ClassVar[str | None] = None   # parameter filled by "name:value" specs, e.g. fixed:0.95
    # True: the step's own batch enters the statistics before it is weighted (FreeMatch's and
    # SoftMatch's EMAs include batch t); False: weigh with the state so far, then update (FlexMatch).
    update_first: ClassVar[bool] = False

    def setup(self, num_classes: int, num_unlabeled: int) -> None:
        """Called once before training with the label space and unlabeled pool size."""
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled

    def weights(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        raise NotImplementedError

    def before_step(self, ctx: StepContext) -> None:
        """Called by the trainer before each training step, outside the sync-free step: the place for
        rare host-side work such as an evaluation pass (``ctx.labeled_loss()``, Dash's rho_hat)."""

    def update(self, inp: PolicyInput, ctx: StepContext) -> None:
        """Per-step state update, after ``weights`` (or before it when ``update_first``)."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Per-epoch update (Ada-CM re-estimates its margin here)."""

    def thresholds(self) -> Tensor | None:
        """Per-class thresholds currently in force, for logging (None if not per class)."""
        return None

    def extra_stats(self) -> dict[str, float]:
        """Scalars worth following per epoch (FreeMatch's tau, Dash's rho): metrics.json's
        ``policy_stats`` and TensorBoard's ``policy/<name>``. Prefix names with the policy's."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key, None)
            if isinstance(current, Tensor) and isinstance(value, Tensor):
                value = value.to(current.device, current.dtype)
            setattr(self, key, value)

    def to(self, device: torch.device) -> "ThresholdPolicy":
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device))
        return self

    def __call__(self, inp: PolicyInput, ctx: StepContext) -> Tensor:
        """Weights for this batch and the policy's own state update, in the order it declares."""
        if self.update_first:
            self.update(inp, ctx)
            return self.weights(inp, ctx)
        w = self.weights(inp, ctx)
        self.update(inp, ctx)
        return w


def _kwargs_with_defaults(cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items()
            if n != "self" and n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not inspect.Parameter.empty}


def policy_hyperparameters(cls: type) -> dict[str, Any]:
    return _kwargs_with_defaults(cls)


def histogram(index: Tensor, bins: int, weights: Tensor | None = None) -> Tensor:
    """Float counts (or summed ``weights``) of ``index`` in ``bins`` bins, without a host sync.

    Why not ``torch.bincount``: on a GPU it reads ``index.max()`` back to the host to size its
    output, even when ``minlength`` is given; an ``index_add_`` into a fixed-size zero vector does not.
    """
    w = torch.ones_like(index, dtype=torch.float32) if weights is None else weights.float()
    return torch.zeros(bins, dtype=torch.float32, device=index.device).index_add_(0, index.long(), w)
