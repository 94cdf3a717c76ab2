"""The contract between the trainer and an SSL algorithm.

An algorithm = a threshold policy (which unlabeled samples are trusted, and how
much) + an unlabeled loss. The trainer builds batches with the views an
algorithm declares, runs the forward pass, sums the named loss terms the
algorithm returns and logs its statistics. It never knows an algorithm by name;
an algorithm never touches devices, files or logging.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import DistContext


@dataclass
class Batch:
    """One training step's images, already normalized and on the training device."""

    x_l: Tensor                     # [B, 3, H, W] labeled images (the algorithm's labeled view)
    y_l: Tensor                     # [B] labels
    u_views: list[Tensor]           # one [B_u, 3, H, W] tensor per declared unlabeled view
    u_index: Tensor                 # [B_u] positions in the unlabeled pool (per-sample policy memories)
    u_true: Tensor                  # [B_u] ground truth where known, else -1: statistics only, never a loss

    @property
    def num_labeled(self) -> int:
        return int(self.x_l.shape[0])


@dataclass
class ForwardOutput:
    """Logits and features of the labeled batch and of every unlabeled view."""

    logits_l: Tensor
    feats_l: Tensor
    u_logits: list[Tensor]
    u_feats: list[Tensor]


@dataclass
class StepContext:
    """Where training is, plus the capabilities an algorithm may ask for."""

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
    """What a threshold policy sees at each step (all detached)."""

    probs: Tensor                     # [B_u, C] pseudo-label distribution
    index: Tensor | None = None       # [B_u] unlabeled pool positions
    labeled_loss: Tensor | None = None  # [B_l] per-sample supervised cross-entropy (Dash's rho_hat)


@dataclass
class StepOutput:
    """Named, already-weighted loss terms (summed by the trainer) and statistics to log."""

    losses: dict[str, Tensor]
    stats: dict[str, float | Tensor] = field(default_factory=dict)


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


class SSLAlgorithm:
    """Base class: declare views, pick a default policy, compute named losses.

    Subclasses usually implement only ``losses``; ones that need their own forward
    passes (MixMatch's mixup, MeanTeacher's teacher) override ``step``.
    """

    name: ClassVar[str] = "algorithm"
    labeled_view: ClassVar[str] = "weak"
    unlabeled_views: ClassVar[tuple[str, ...]] = ()
    default_policy: ClassVar[str | None] = None   # None: the algorithm takes no policy
    uses_policy: ClassVar[bool] = False

    def __init__(self, num_classes: int, policy: ThresholdPolicy | None = None):
        self.num_classes = num_classes
        self.policy = policy

    # -- hooks the trainer calls -------------------------------------------------
    def bind_backbone(self, feature_dim: int | None) -> None:
        """Told the backbone's feature width (None if it does not say) before ``extra_modules``,
        so heads on the feature (ReMixMatch's rotation head) are built at their size up front."""

    def extra_modules(self) -> nn.ModuleDict:
        """Trainable modules the algorithm owns (e.g. ReMixMatch's rotation head)."""
        return nn.ModuleDict()

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.losses(forward(model, batch, ctx.forward_mode), batch, ctx)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if self.policy is not None:
            self.policy.on_epoch_start(ctx)

    def setup(self, num_unlabeled: int, device: torch.device) -> None:
        if self.policy is not None:
            self.policy.setup(self.num_classes, num_unlabeled)
            self.policy.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict() if self.policy is not None else {},
                "modules": self.extra_modules().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.policy is not None:
            self.policy.load_state_dict(state.get("policy", {}))
        self.extra_modules().load_state_dict(state.get("modules", {}))

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Constructor keyword arguments and their defaults: the config section's schema."""
        return _kwargs_with_defaults(cls, skip=("num_classes", "policy"))


def _kwargs_with_defaults(cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items()
            if n != "self" and n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not inspect.Parameter.empty}


def policy_hyperparameters(cls: type) -> dict[str, Any]:
    return _kwargs_with_defaults(cls)


# -- helpers shared by algorithms ------------------------------------------------
def forward(model: nn.Module, batch: Batch, mode: str = "concat") -> ForwardOutput:
    """Run the model on the labeled batch and every unlabeled view.

    "concat" is one pass over the concatenation (FixMatch-style; batch-norm
    statistics are then computed over labeled and unlabeled images together);
    "separate" is one pass per input, as the official Ada-CM code does.
    """
    inputs = [batch.x_l, *batch.u_views]
    if mode == "concat":
        logits, feats = model(torch.cat(inputs))
        sizes = [x.shape[0] for x in inputs]
        logits_parts, feat_parts = logits.split(sizes), feats.split(sizes)
    elif mode == "separate":
        outs = [model(x) for x in inputs]
        logits_parts, feat_parts = [o[0] for o in outs], [o[1] for o in outs]
    else:
        raise ValueError(f"forward_mode must be 'concat' or 'separate', got {mode!r}")
    return ForwardOutput(logits_parts[0], feat_parts[0], list(logits_parts[1:]), list(feat_parts[1:]))


def supervised_ce(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. (1): mean cross-entropy on labeled data, plus the detached per-sample values."""
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    return per_sample.mean(), per_sample.detach()


def masked_ce(logits: Tensor, targets: Tensor, weights: Tensor, normalize: str = "batch") -> Tensor:
    """Weighted cross-entropy against hard or soft targets.

    normalize="batch" divides by the whole unlabeled batch (FixMatch's paper);
    "subset" divides by the total weight of the trusted subset (Ada-CM's Eq. 7, 1/N_h).
    """
    if targets.dim() == 1:
        per_sample = F.cross_entropy(logits, targets, reduction="none")
    else:
        per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    total = (per_sample * weights).sum()
    if normalize == "batch":
        return total / max(1, logits.shape[0])
    if normalize == "subset":  # an empty subset gives total == 0, hence a zero loss
        return total / weights.sum().clamp_min(1e-8)
    raise ValueError(f"normalize must be 'batch' or 'subset', got {normalize!r}")


def pseudo_label_stats(weights: Tensor, pseudo: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Mask ratio and the accuracy of trusted pseudo-labels where ground truth is known."""
    known = truth >= 0
    trusted = (weights > 0) & known
    stats: dict[str, Tensor] = {"mask_ratio": weights.float().mean()}
    if bool(trusted.any()):
        stats["pseudo_label_acc"] = (pseudo[trusted] == truth[trusted]).float().mean() * 100.0
    return stats
