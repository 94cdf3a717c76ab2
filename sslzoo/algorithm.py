"""The contract between the trainer and an SSL algorithm.

An algorithm = a threshold policy (which unlabeled samples are trusted, and how
much) + an unlabeled loss. The trainer builds batches with the views an
algorithm declares, runs the forward pass, sums the named loss terms the
algorithm returns and logs its statistics. It never knows an algorithm by name;
an algorithm never touches devices, files or logging.

Sync-free by contract: inside ``step``/``losses`` nothing reads a device tensor on
the host (no ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.cpu()``, boolean-mask
indexing or ``nonzero``): losses and statistics stay on the device and the trainer reads
them once per logging interval. A statistic that is undefined at a step (no trusted
sample for ``pseudo_label_acc``) is NaN and is left out of its mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import DistContext
from .policy import (EpochContext, PolicyInput, StepContext, ThresholdPolicy,  # noqa: F401 - re-exported
                     _kwargs_with_defaults, policy_hyperparameters)


@dataclass
class Batch:
    """One training step's images, already normalized and on the training device."""

    x_l: Tensor                     # [B, 3, H, W] labeled images (the algorithm's labeled view)
    y_l: Tensor                     # [B] labels
    u_views: list[Tensor]           # one [B_u, 3, H, W] tensor per declared unlabeled view
    u_index: Tensor                 # [B_u] positions in the unlabeled pool (per-sample policy memories)
    u_true: Tensor                  # [B_u] ground truth where known, else -1: statistics only, never a loss
    l_index: Tensor | None = None   # [B] positions in the labeled set (labeled memory banks)
    l_views: list[Tensor] = field(default_factory=list)   # one [B, 3, H, W] per ``extra_labeled_views``

    @property
    def num_labeled(self) -> int:
        return int(self.x_l.shape[0])

    @property
    def num_images(self) -> int:
        """Images in the step: the labeled batch, its extra views and every unlabeled view."""
        return self.num_labeled * (1 + len(self.l_views)) + sum(int(v.shape[0]) for v in self.u_views)


@dataclass
class ForwardOutput:
    """Logits and features of the labeled batch and of every unlabeled view."""

    logits_l: Tensor
    feats_l: Tensor
    u_logits: list[Tensor]
    u_feats: list[Tensor]


@dataclass
class StepOutput:
    """Named, already-weighted loss terms (summed by the trainer) and statistics to log."""

    losses: dict[str, Tensor]
    stats: dict[str, float | Tensor] = field(default_factory=dict)


class SSLAlgorithm:
    """Base class: declare views, pick a default policy, compute named losses.

    Subclasses usually implement only ``losses``; ones that need their own forward
    passes (MixMatch's mixup, MeanTeacher's teacher) override ``step``.
    """

    name: ClassVar[str] = "algorithm"
    labeled_view: ClassVar[str] = "weak"
    extra_labeled_views: ClassVar[tuple[str, ...]] = ()   # more views of the same labeled images (DeFixMatch)
    unlabeled_views: ClassVar[tuple[str, ...]] = ()
    default_policy: ClassVar[str | None] = None   # None: the algorithm takes no policy
    uses_policy: ClassVar[bool] = False
    # attributes holding state of their own (``to`` / ``state_dict`` / ``load_state_dict``, e.g. a
    # distribution alignment): moved to the device in ``setup`` and saved under their name; None is skipped
    state_parts: ClassVar[tuple[str, ...]] = ()

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

    def setup(self, num_unlabeled: int, device: torch.device, num_labeled: int = 0) -> None:
        """Called once before training with the pool sizes (memory banks are sized here)."""
        if self.policy is not None:
            self.policy.setup(self.num_classes, num_unlabeled)
            self.policy.to(device)
        for part in self._state_parts().values():
            part.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict() if self.policy is not None else {},
                "modules": self.extra_modules().state_dict(),
                **{name: part.state_dict() for name, part in self._state_parts().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.policy is not None:
            self.policy.load_state_dict(state.get("policy", {}))
        self.extra_modules().load_state_dict(state.get("modules", {}))
        for name, part in self._state_parts().items():
            if name in state:
                part.load_state_dict(state[name])

    def _state_parts(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.state_parts if getattr(self, name, None) is not None}

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Constructor keyword arguments and their defaults: the config section's schema."""
        return _kwargs_with_defaults(cls, skip=("num_classes", "policy"))


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


def labeled_probs(out: ForwardOutput) -> Tensor:
    """Softmax of the labeled batch's logits, detached: what relative thresholds (AdaMatch) compare to."""
    return torch.softmax(out.logits_l.detach().float(), dim=-1)


def supervised_ce(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. (1): mean cross-entropy on labeled data, plus the detached per-sample values."""
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    return per_sample.mean(), per_sample.detach()


def masked_ce(logits: Tensor, targets: Tensor, weights: Tensor, normalize: str = "batch",
              dist: DistContext | None = None) -> Tensor:
    """Weighted cross-entropy against hard or soft targets.

    normalize="batch" divides by the whole unlabeled batch (FixMatch's paper);
    "subset" divides by the total weight of the trusted subset (Ada-CM's Eq. 7, 1/N_h). Under
    DDP that is the subset of the GLOBAL batch (``dist``; None: the running process group), so
    N processes train exactly as one with the N x batch; "batch" needs nothing (equal batches).
    """
    if targets.dim() == 1:
        per_sample = F.cross_entropy(logits, targets, reduction="none")
    else:
        per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    total = (per_sample * weights).sum()
    if normalize == "batch":
        return total / max(1, logits.shape[0])
    if normalize == "subset":  # an empty subset gives total == 0, hence a zero loss
        return (dist if dist is not None else DistContext.from_process_group()).global_ratio(
            total, weights.sum(), 1e-8)
    raise ValueError(f"normalize must be 'batch' or 'subset', got {normalize!r}")


def pseudo_label_stats(weights: Tensor, pseudo: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Mask ratio and the accuracy (%) of trusted pseudo-labels where ground truth is known.

    The accuracy is NaN at a step with no trusted sample of known truth (left out of the
    epoch's mean), computed without a host read.
    """
    trusted = ((weights > 0) & (truth >= 0)).float()
    correct = (pseudo == truth).float() * trusted
    return {"mask_ratio": weights.float().mean(), "pseudo_label_acc": correct.sum() / trusted.sum() * 100.0}
