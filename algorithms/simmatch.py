"""SimMatch (Zheng et al., CVPR 2022): semantic and instance similarity, propagated through a labeled bank.

Notation: z = l2-normalised projection g(h) of the backbone feature h (a 2-layer MLP head owned by
the algorithm); bank k_1..k_K = one slot per LABELED image (K = size of the labeled set) with its
label y(k_j); t = temperature; B = unlabeled batch.

    p    = DA(softmax(f(weak(u))))                       semantic pseudo-label (no gradient)
    q    = softmax_j(z_w . k_j / t)                      instance similarity of the weak view to the bank
    unfolding:   q^_j = q_j p[y(k_j)] / sum_i q_i p[y(k_i)]     the instance pseudo-label, scaled by p
    aggregation: q_agg[c] = sum_j 1[y(k_j) = c] q_j
                 p^ = a p + (1 - a) q_agg        ("smooth", official code and USB, a = 0.9)
                 p^ = p q_agg / sum_c p q_agg    ("product", the paper's scaled semantic label)
    w    = policy(p^)                                    fixed: 1[max p^ >= 0.95]
    L_u  = 1/B sum_b w_b H(p^_b, softmax(f(strong(u_b))))       soft targets
    L_in = 1/B sum_b H(q^_b, softmax_j(z_s . k_j / t))          z_s: strong view, with gradient
    L    = L_s + lambda_u L_u + lambda_in L_in
    bank update (labeled batch, after the losses):
          k_i <- normalize(m k_i + (1 - m) z_l,i),  y(k_i) <- y_i   for i in the batch's labeled indices

Choices, and what they follow:
  * Bank features: ``bank_source="train"`` (default) writes the projection of the TRAINING model's
    labeled features from the step's own forward pass (detached) with a bank EMA of m = 0.7
    (``bank_momentum``): USB's path for CIFAR/STL/SVHN-sized data (``use_ema_teacher=False``,
    ``ema_bank=0.7``), the size of the FER data sets here. ``bank_source="ema"`` writes features of
    the trainer's EMA model instead (training mode, batch-norm statistics frozen; USB's
    ImageNet path swaps the EMA weights into the training model, also in training mode), and
    ``bank_momentum=0`` replaces slots instead of averaging them (USB's ImageNet path and the
    official code). Only the backbone has an EMA in sslzoo: in "ema" mode its features go through
    the TRAINING projection head (USB and the official code also average the head).
  * The official code also takes the weak view's prediction and embedding from the EMA teacher;
    USB, and sslzoo, take them from the training model's forward pass (no gradient).
  * Bank initialisation: random unit vectors drawn from torch's global generator at ``setup`` (on
    the CPU, so CPU and GPU runs start from the same bank; the trainer seeds it), as USB and the
    official code do. Slot labels are read from the labeled set at the first epoch start (USB
    starts with label 0 everywhere and relies on the warm-up epoch to write every slot); the
    bank update writes them again.
  * Warm-up: during the first ``warmup_epochs`` (1) epochs L_in is 0 and p^ = p, while the bank
    fills (USB and the official code: epoch 0). An sslzoo epoch is ``iters_per_epoch`` steps.
  * Temperatures: one t = 0.1 for the weak (teacher) and strong (student) similarities (the
    paper, the official scripts' ``--tt 0.1 --st 0.1`` and USB's configs; USB's argument default 0.5).
  * Projection: Linear(d, d) - ReLU - Linear(d, 128), l2-normalised (USB and the official code).
  * Distribution alignment: to the uniform distribution, p <- normalize(p (1/C + eps) / (p~ + eps)),
    p~ = mean of the batch-mean predictions over the last ``da_window`` = 32 steps including this
    one (USB's CV configs ``da_len: 32``; the official ImageNet code: 256); under DDP the batch
    means are averaged over ranks (USB gathers the predictions: the same mean). ``da_window=0``
    turns DA off. USB's queue starts with zero rows that enter its mean; here the mean is over
    the filled rows (differs only through eps).
  * Weights: lambda_u = lambda_in = 1 (USB's configs; the official ImageNet scripts use
    lambda_in = 5, lambda_u = 10). L_u is normalised by the whole unlabeled batch (USB, official).
  * Threshold: through the policy interface (default ``fixed:0.95``, USB's CV configs; the
    official ImageNet code 0.7), on p^ as USB and the official code do.
  * Under DDP the bank update gathers the labeled projections, labels and indices of every rank
    (``concat_all_gather`` in USB / the official code), so every rank holds the same bank; rank
    0's initial bank is broadcast at the first step. An index present twice in a gathered batch
    is written once, from its last occurrence (deterministic where ``index_copy_`` is not).
  * The in-loss uses log-softmax (USB: log of the softmax; the same value, finite where the
    softmax underflows). Both similarities are computed in float32 (autocast off).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import (Batch, EpochContext, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext,
                              StepOutput, masked_ce, pseudo_label_stats, supervised_ce)
from sslzoo.errors import SSLZooError
from sslzoo.mixup import frozen_bn_stats, train_mode
from sslzoo.registry import register_algorithm

from .remixmatch import optional_alignment


# -- shared with CoMatch ----------------------------------------------------------------
def projection_head(feature_dim: int, proj_dim: int) -> nn.Sequential:
    """Linear(d, d) - ReLU - Linear(d, proj_dim): the projection MLP of USB's SimMatch/CoMatch nets."""
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, proj_dim))


def project(head: nn.Module, feats: Tensor) -> Tensor:
    """l2-normalised projection, returned in float32.

    The features are cast to the head's dtype first: under autocast the linear layers recast them
    anyway, and with autocast off (no-gradient similarity code) bf16/fp16 features meet fp32 weights.
    """
    weight = next(head.parameters())
    return F.normalize(head(feats.to(weight.dtype)).float(), dim=1)


class ProjectionHeadMixin:
    """The hooks of an algorithm with one trainable projection MLP (SimMatch, CoMatch): it is sized by
    the backbone's feature width (``bind_backbone``) and saved and trained with the model
    (``extra_modules``). ``init_projection`` is called from the algorithm's ``__init__``."""

    proj_dim: int
    _modules_dict: nn.ModuleDict

    def init_projection(self, proj_dim: int) -> None:
        """Record the head's output width (checked) and an empty module dict until ``bind_backbone``."""
        if int(proj_dim) < 1:
            raise ValueError(f"proj_dim (projection width) must be >= 1; got {proj_dim}")
        self.proj_dim, self._modules_dict = int(proj_dim), nn.ModuleDict()

    def _head(self) -> nn.Module:
        if "proj" not in self._modules_dict:
            raise SSLZooError(f"{type(self).__name__}'s projection head is built by bind_backbone(feature_dim), "
                              "which the trainer calls before training; call it before step()/losses().")
        return self._modules_dict["proj"]

    def bind_backbone(self, feature_dim: int | None) -> None:
        if feature_dim is None:
            raise SSLZooError(f"{type(self).__name__}'s projection head is sized by the backbone's feature width, "
                              "but this backbone has no 'feature_dim' attribute; give it one (every built-in "
                              "backbone has).")
        self._modules_dict["proj"] = projection_head(int(feature_dim), self.proj_dim)

    def extra_modules(self) -> nn.ModuleDict:
        return self._modules_dict


def full_precision(device: torch.device):
    """Autocast off: similarity softmaxes with temperatures 0.1-0.2 are computed in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def last_occurrence(index: Tensor) -> Tensor:
    """For every position i, the last position j with index[j] == index[i] (on the device, no sync).

    Writing row ``last_occurrence(index)[i]`` at every i makes repeated indices write the same value.
    """
    n = index.shape[0]
    pos = torch.arange(n, device=index.device)
    same = index[:, None] == index[None, :]
    return torch.where(same, pos[None, :], torch.full_like(same, -1, dtype=pos.dtype)).amax(dim=1)


def normalize_rows(x: Tensor) -> Tensor:
    return x / x.sum(dim=1, keepdim=True).clamp_min(1e-12)


# -- SimMatch's equations -----------------------------------------------------------------
def instance_similarity(z: Tensor, bank: Tensor, temperature: float) -> Tensor:
    """q = softmax over the bank slots of z . k_j / t  ([B, K]); z and the bank rows are unit vectors."""
    return torch.softmax(z @ bank.t() / temperature, dim=1)


def unfold(q: Tensor, p: Tensor, bank_labels: Tensor) -> Tensor:
    """Unfolding: q^_j proportional to q_j p[y(k_j)] (the instance pseudo-label, [B, K])."""
    factor = p.gather(1, bank_labels[None, :].expand(p.shape[0], -1))
    return normalize_rows(q * factor)


def aggregate(q: Tensor, bank_labels: Tensor, num_classes: int) -> Tensor:
    """Aggregation: q_agg[c] = sum of q_j over the slots labeled c ([B, C])."""
    index = bank_labels[None, :].expand(q.shape[0], -1)
    return torch.zeros(q.shape[0], num_classes, dtype=q.dtype, device=q.device).scatter_add(1, index, q)


def propagate(p: Tensor, q: Tensor, bank_labels: Tensor, alpha: float = 0.9,
              mode: str = "smooth") -> tuple[Tensor, Tensor]:
    """Label propagation between the semantic (p, [B, C]) and instance (q, [B, K]) pseudo-labels.

    Returns (p^, q^): the propagated semantic pseudo-label and the unfolded instance pseudo-label.
    """
    q_hat = unfold(q, p, bank_labels)
    q_agg = aggregate(q, bank_labels, p.shape[1])
    if mode == "smooth":
        p_hat = alpha * p + (1.0 - alpha) * q_agg
    elif mode == "product":
        p_hat = normalize_rows(p * q_agg)
    else:
        raise ValueError(f"aggregation must be 'smooth' or 'product'; got {mode!r}")
    return p_hat, q_hat


def in_loss(z_s: Tensor, bank: Tensor, q_hat: Tensor, temperature: float) -> Tensor:
    """L_in = mean over the batch of H(q^, softmax(z_s . k / t)); gradient through z_s only."""
    log_q_s = torch.log_softmax(z_s @ bank.t() / temperature, dim=1)
    return -(q_hat * log_q_s).sum(dim=1).mean()


@torch.no_grad()
def update_bank(bank: Tensor, bank_labels: Tensor, z: Tensor, labels: Tensor, index: Tensor,
                momentum: float) -> tuple[Tensor, Tensor]:
    """New (bank, labels) with rows ``index`` set to normalize(m k + (1-m) z) (m = 0: replaced by z).

    Out of place (``index_copy``): the old bank may be saved for the backward of L_in.
    A repeated index is written from its last occurrence.
    """
    last = last_occurrence(index)
    z, labels = z[last].to(bank.dtype), labels[last].to(bank_labels.dtype)
    if momentum > 0:
        z = F.normalize(momentum * bank.index_select(0, index) + (1.0 - momentum) * z, dim=1)
    return bank.index_copy(0, index, z), bank_labels.index_copy(0, index, labels)


@register_algorithm("simmatch")
class SimMatch(ProjectionHeadMixin, SSLAlgorithm):
    """SimMatch: a labeled memory bank; semantic and instance pseudo-labels propagated into each other."""

    name = "simmatch"
    unlabeled_views = ("weak", "strong")
    default_policy = "fixed:0.95"
    uses_policy = True
    state_parts = ("da",)

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, lambda_in: float = 1.0,
                 temperature: float = 0.1, proj_dim: int = 128, smoothing_alpha: float = 0.9,
                 aggregation: str = "smooth", da_window: int = 32, bank_source: str = "train",
                 bank_momentum: float = 0.7, warmup_epochs: int = 1, unsup_norm: str = "batch"):
        super().__init__(num_classes, policy)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if not 0.0 <= smoothing_alpha <= 1.0:
            raise ValueError(f"smoothing_alpha is a weight in [0, 1]; got {smoothing_alpha}")
        if aggregation not in ("smooth", "product"):
            raise ValueError(f"aggregation must be 'smooth' (official code, USB) or 'product' (the paper); "
                             f"got {aggregation!r}")
        if bank_source not in ("train", "ema"):
            raise ValueError(f"bank_source must be 'train' (the training model) or 'ema' (the EMA model); "
                             f"got {bank_source!r}")
        if not 0.0 <= bank_momentum < 1.0:
            raise ValueError(f"bank_momentum must be in [0, 1) (0 replaces a slot); got {bank_momentum}")
        if int(warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0; got {warmup_epochs}")
        if unsup_norm not in ("batch", "subset"):
            raise ValueError(f"unsup_norm must be 'batch' or 'subset'; got {unsup_norm!r}")
        self.lambda_u, self.lambda_in, self.temperature = lambda_u, lambda_in, float(temperature)
        self.init_projection(proj_dim)
        self.smoothing_alpha, self.aggregation = float(smoothing_alpha), aggregation
        self.bank_source, self.bank_momentum = bank_source, float(bank_momentum)
        self.warmup_epochs, self.unsup_norm = int(warmup_epochs), unsup_norm
        self.da = optional_alignment(num_classes, da_window)
        self.device = torch.device("cpu")
        self.bank: Tensor | None = None                          # [K, proj_dim] unit rows
        self.bank_labels: Tensor | None = None                   # [K]
        self.labels_read = torch.zeros((), dtype=torch.bool)      # slot labels read from the labeled set?
        self._bank_synced = False                                # rank 0's initial bank broadcast (DDP)

    # -- hooks --------------------------------------------------------------------------
    def setup(self, num_unlabeled: int, device: torch.device, num_labeled: int = 0) -> None:
        super().setup(num_unlabeled, device, num_labeled)
        if num_labeled < 1:
            raise SSLZooError("SimMatch keeps one bank slot per labeled image and needs the labeled set's size "
                              f"(setup(num_labeled=...)); got {num_labeled}.")
        self.device = torch.device(device)
        bank = F.normalize(torch.randn(num_labeled, self.proj_dim), dim=1)   # CPU draw: same on every device
        self.bank = bank.to(self.device)
        self.bank_labels = torch.zeros(num_labeled, dtype=torch.long, device=self.device)
        self.labels_read = self.labels_read.to(self.device)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        super().on_epoch_start(ctx)
        targets = ctx.labeled_targets
        if (self.bank_labels is not None and targets is not None and not bool(self.labels_read)
                and targets.shape[0] == self.bank_labels.shape[0]):
            self.bank_labels = targets.to(self.bank_labels.device, torch.long).clone()
            self.labels_read = torch.ones((), dtype=torch.bool, device=self.bank_labels.device)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "labels_read": self.labels_read}
        if self.bank is not None:
            state.update(bank=self.bank, bank_labels=self.bank_labels)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("bank", "bank_labels", "labels_read"):
            if key in state:
                setattr(self, key, state[key].to(self.device).clone())

    # -- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def _bank_features(self, out: ForwardOutput, batch: Batch, ctx: StepContext, head: nn.Module) -> Tensor:
        if self.bank_source == "train":
            return project(head, out.feats_l.detach())
        if ctx.ema_model is None:
            raise SSLZooError("simmatch.bank_source=ema needs the trainer's EMA model (ctx.ema_model).")
        with train_mode(ctx.ema_model), frozen_bn_stats(ctx.ema_model):
            feats = ctx.ema_model(batch.x_l)[1]
        return project(head, feats)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        if self.bank is None:
            raise SSLZooError("SimMatch's bank is sized by setup(num_unlabeled, device, num_labeled), which the "
                              "trainer calls before training; call it before step()/losses().")
        if batch.l_index is None:
            raise SSLZooError("SimMatch writes each labeled image's bank slot and needs batch.l_index.")
        if ctx.dist.enabled and not self._bank_synced:   # every rank starts from rank 0's bank
            ctx.dist.broadcast_([self.bank])
        self._bank_synced = True
        head = self._head()
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        logits_w, logits_s = out.u_logits
        feats_w, feats_s = out.u_feats
        z_s = project(head, feats_s)                               # the student: with gradient
        bank, bank_labels = self.bank, self.bank_labels
        propagating = ctx.epoch >= self.warmup_epochs
        with torch.no_grad(), full_precision(logits_w.device):
            p = torch.softmax(logits_w.detach().float(), dim=-1)
            if self.da is not None:
                p = self.da(p, ctx.dist.all_reduce(p.mean(dim=0), op="mean"))
            z_w = project(head, feats_w.detach())
            if propagating:
                q = instance_similarity(z_w, bank, self.temperature)
                p_hat, q_hat = propagate(p, q, bank_labels, self.smoothing_alpha, self.aggregation)
            else:
                p_hat, q_hat = p, None
        pseudo = p_hat.argmax(dim=-1)
        w = self.policy(PolicyInput(p_hat, batch.u_index, sup_per_sample), ctx)
        terms = {"sup": sup, "unsup": self.lambda_u * masked_ce(logits_s, p_hat, w, self.unsup_norm)}
        if self.lambda_in:
            if q_hat is not None:
                with full_precision(z_s.device):
                    terms["in"] = self.lambda_in * in_loss(z_s, bank, q_hat, self.temperature)
            else:   # warm-up: logged as 0 so every epoch reports the same terms
                terms["in"] = torch.zeros((), device=z_s.device)
        # the bank update, from every rank's labeled batch (after the losses used the old bank)
        z_l = self._bank_features(out, batch, ctx, head)
        self.bank, self.bank_labels = update_bank(
            bank, bank_labels, ctx.dist.gather(z_l), ctx.dist.gather(batch.y_l.to(bank_labels.device)),
            ctx.dist.gather(batch.l_index.to(bank.device)), self.bank_momentum)
        return StepOutput(terms, pseudo_label_stats(w, pseudo, batch.u_true))
