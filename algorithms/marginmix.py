"""MarginMix (Florea, Badea, Florea, Racoviteanu, Vertan, ECCV 2020), RECONSTRUCTED: MixMatch + class
centroids in the embedding space + a large-margin term.

What is known of the paper, and what is not. Its full text (and any code) could not be reached
from here; what could: the abstract (ECVA/Springer, doi:10.1007/978-3-030-58592-1_1), the
Springer page's footnote that the code was developed from the MixMatch-pytorch implementation
(YU1ut/MixMatch-pytorch), a page of its supplementary material (WideResNet; a network "trained in
purely supervised manner with the large margin loss" on FER+ and CIFAR), and the Ada-CM paper's
summary: Margin-Mix extends MixMatch, "determined artificial labels of unlabeled samples by the
embeddings for class centers, not by the confidence margin", and "the center updating is costly
and time-consuming". The abstract: the network gives each image an embedding and a prediction;
unlabeled and labeled data are combined (MixUp) into synthetic data; "the network is asked to
provide a large margin between clusters, while new data is self-labeled by the distance to class
centroids, in the embedding space". Everything below beyond those sentences is this module's
choice: it is a reconstruction, not the paper's method, and no number of the paper (nor the
Ada-CM paper's MarginMix row) is claimed for it. Sources: https://mlanthology.org/eccv/2020/florea2020eccv-marginmix
(abstract), https://doi.org/10.1007/978-3-030-58592-1_1 (Springer page, notes), the supplementary material
as mirrored at vdocuments.mx ("margin-mix-semisupervised-learning-for-face-expression-expression-recognition"),
and the Ada-CM paper (Li et al., CVPR 2022), Sections 2 and 4.3.

Equations (z = the backbone's feature, e(z) = z / ||z|| with ``normalize_embedding``, else z):

    mu_c   = mean of e(z(x)) over the labeled images x of class c seen in the last completed
             epoch (before one has completed: over those seen so far in this epoch)      [centroids]
    d_c(u) = ||e(z(u)) - mu_c||^2                                                         squared distance
    p_cent(c | u) = softmax_c(-d_c(u) / tau),  tau = ``centroid_temperature`` = 0.1       self-label
    p_model(c | u) = softmax(f(u))_c                                     (MixMatch's prediction)
    q_b    = Sharpen( 1/K sum_k [ (1 - w) p_model(weak_k(u_b)) + w p_cent(weak_k(u_b)) ], T )
             w = ``centroid_weight`` = 1; until every class has a centroid, w acts as 0
    MixUp, L_X, L_U exactly as MixMatch (algorithms/mixmatch.py) with q_b as the guessed label
    L_M    = 1/|P| sum_{(i, j) in P} max(0, m + d_{y_i}(x_i) - d_j(x_i))                  large margin
             P = {(i, j): labeled i, class j != y_i, both y_i and j have a centroid}, m = ``margin`` = 0.5,
             x_i the UNMIXED labeled image, its embedding with gradient, centroids without
    L      = L_X + lambda_u r(t) L_U + lambda_margin L_M,   lambda_margin = 1

Differences from MixMatch: the guessed label of an unlabeled image comes (by default entirely)
from its distance to the labeled class centroids instead of the classifier's prediction, and the
labeled images also go, unmixed, through the gradient pass, whose embeddings feed L_M and the
centroids. With ``centroid_weight=0`` and ``lambda_margin=0`` none of that runs: the step draws
the same random numbers, runs the same passes and returns the same losses and gradients as
``mixmatch`` with the same hyperparameters, bit for bit (tests/test_algo_marginmix.py).

Choices, and what they follow:
  * Centroids = per-class means of the labeled embeddings (the abstract's "class centroids";
    Ada-CM's "embeddings for class centers"), recomputed once per epoch (Ada-CM calls the
    updating costly, i.e. periodic over the data rather than a learned parameter). They are
    not computed by an extra pass over the labeled set: the sums are accumulated from the
    labeled images' embeddings in the training passes of the epoch, and at the next epoch start
    become that epoch's centroids (a class unseen during an epoch keeps its previous centroid).
    In the first epoch, the running means so far are used. Under DDP the per-class sums and
    counts are summed over ranks (``ctx.dist.all_reduce``), so the centroids are those of the
    global batches and identical on every rank. One snapshot per step serves the guess and L_M;
    the step's own embeddings enter the sums after it.
  * Soft self-labels (softmax of negative squared distances, temperature tau), averaged over the
    K views like MixMatch's predictions and then sharpened: the abstract says only "by the
    distance"; the soft form keeps MixMatch's sharpening and MixUp of targets meaningful
    (tau -> 0 gives the hard nearest-centroid label). ``centroid_weight`` in (0, 1) blends it
    with MixMatch's prediction; 1 (default) follows "self-labeled by the distance to class
    centroids"; 0 is MixMatch's guess.
  * Embeddings L2-normalized (``normalize_embedding``) so tau and m mean the same for every
    backbone (squared distances lie in [0, 4]); centroids are the plain means of those unit
    vectors (not renormalized).
  * The large-margin term: a hinge on squared distances to the centroids (a centroid-based
    triplet loss: own centroid closer than every other by m), on the labeled images only
    (self-labels are noisy; the unlabeled data already receive L_U), normalized by the number
    of (sample, other class) pairs (of the global batch under DDP), no ramp (it is supervised).
    Which large-margin loss the paper uses is not known here; this one is chosen because it acts
    directly on the clusters that the self-labels read.
  * The labeled images join the gradient pass unmixed as ``extra`` inputs of ``mixed_forward``:
    with ``forward_mode="concat"`` (default) one pass, so batch-norm statistics also cover them;
    ``"separate"`` gives them their own pass with frozen statistics. MixMatch itself never sees
    clean labeled images; MarginMix needs their embeddings for the centroids and L_M.
  * The embeddings are those of the training-mode passes (the guess pass for the unlabeled
    views, the gradient pass for the labeled images), so a backbone's dropout before its
    feature (PaperHead) is active in them, as it is in MixMatch's guessed predictions.
  * Logged: ``centroid_coverage`` (share of classes with a centroid) and ``centroid_label_acc``
    (accuracy, %, of the nearest-centroid label where the truth is known; NaN until every class
    has a centroid); ``pseudo_label_acc`` is that of the blended guess.
  * Everything else (K = 2, T = 0.5, alpha = 0.75, lambda_u = 100, linear ramp over
    ``unsup_warmup``, per-pair lambda, frozen-BN guess pass) is MixMatch's, as implemented in
    algorithms/mixmatch.py; ``configs/algorithms/marginmix.yaml`` uses the same CPU-scale ramp
    (0.4) as ``mixmatch.yaml`` so the two stay comparable.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import Batch, EpochContext, StepContext, pseudo_label_stats
from sslzoo.distributed import DistContext
from sslzoo.mixup import frozen_bn_stats, sharpen
from sslzoo.registry import register_algorithm

from .mixmatch import MixMatch

UNAVAILABLE_LOGIT = -1e9   # a class without a centroid: probability exactly 0 after the softmax


def squared_distances(emb: Tensor, centroids: Tensor) -> Tensor:
    """[N, C] squared Euclidean distances between rows of ``emb`` [N, D] and ``centroids`` [C, D]."""
    return (emb.float()[:, None, :] - centroids.float()[None, :, :]).pow(2).sum(dim=-1)


def centroid_probs(emb: Tensor, centroids: Tensor, available: Tensor, temperature: float) -> Tensor:
    """softmax_c(-||emb - mu_c||^2 / temperature) over the classes that have a centroid (others get 0)."""
    logits = -squared_distances(emb, centroids) / temperature
    logits = torch.where(available[None, :], logits, torch.full_like(logits, UNAVAILABLE_LOGIT))
    return torch.softmax(logits, dim=-1)


def centroid_margin_loss(emb: Tensor, labels: Tensor, centroids: Tensor, available: Tensor,
                         margin: float, dist: DistContext | None = None) -> Tensor:
    """Mean over valid (sample i, class j != y_i) pairs of max(0, m + d_{y_i} - d_j); 0 if no pair is valid.

    A pair is valid when both y_i and j have a centroid. Gradients reach ``emb`` only. Under
    DDP (``dist``; None: the running process group) the mean is over the global batch's pairs.
    """
    d = squared_distances(emb, centroids.detach())
    d_own = d.gather(1, labels[:, None])
    classes = torch.arange(centroids.shape[0], device=labels.device)
    valid = available[None, :] & available[labels][:, None] & (classes[None, :] != labels[:, None])
    hinge = F.relu(margin + d_own - d) * valid
    return (dist if dist is not None else DistContext.from_process_group()).global_ratio(hinge.sum(), valid.sum(), 1)


class ClassCentroids:
    """Per-class mean labeled embeddings: the last completed epoch's, plus this epoch's running sums.

    All state is tensors (``state_dict``), so a resumed run continues with the same centroids.
    Sized on ``allocate`` (from the backbone's feature width, or the first embeddings seen).
    """

    KEYS = ("centroids", "ready", "sums", "counts")

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.centroids: Tensor | None = None   # [C, D] means of the last completed epoch (valid where ready)
        self.ready: Tensor | None = None       # [C] bool: class c has such a mean
        self.sums: Tensor | None = None        # [C, D] this epoch's sums of embeddings
        self.counts: Tensor | None = None      # [C] this epoch's counts
        self.device: torch.device | None = None   # the training device, once known (``to``)

    @property
    def allocated(self) -> bool:
        return self.centroids is not None

    def allocate(self, dim: int, device: torch.device | str = "cpu") -> None:
        c = self.num_classes
        self.centroids = torch.zeros(c, dim, device=device)
        self.ready = torch.zeros(c, dtype=torch.bool, device=device)
        self.sums = torch.zeros(c, dim, device=device)
        self.counts = torch.zeros(c, device=device)

    def to(self, device: torch.device) -> "ClassCentroids":
        self.device = torch.device(device)
        if self.allocated:
            for key in self.KEYS:
                setattr(self, key, getattr(self, key).to(device))
        return self

    def current(self) -> tuple[Tensor, Tensor]:
        """(centroids [C, D], available [C]): last epoch's means, else this epoch's running means."""
        running = self.sums / self.counts.clamp_min(1.0)[:, None]
        return torch.where(self.ready[:, None], self.centroids, running), self.ready | (self.counts > 0)

    @torch.no_grad()
    def accumulate(self, emb: Tensor, labels: Tensor, dist: Any = None) -> None:
        """Add a batch of labeled embeddings (summed over ranks when ``dist`` is given)."""
        sums = torch.zeros_like(self.sums).index_add_(0, labels, emb.detach().to(self.sums.dtype))
        counts = torch.zeros_like(self.counts).index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))
        if dist is not None:
            sums, counts = dist.all_reduce(sums, op="sum"), dist.all_reduce(counts, op="sum")
        self.sums += sums
        self.counts += counts

    @torch.no_grad()
    def end_epoch(self) -> None:
        """The epoch's means become the centroids (classes seen in it); the running sums restart."""
        seen = self.counts > 0
        means = self.sums / self.counts.clamp_min(1.0)[:, None]
        self.centroids = torch.where(seen[:, None], means, self.centroids)
        self.ready = self.ready | seen
        self.sums = torch.zeros_like(self.sums)
        self.counts = torch.zeros_like(self.counts)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.KEYS} if self.allocated else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        device = self.centroids.device if self.allocated else (self.device or state["centroids"].device)
        for key in self.KEYS:
            setattr(self, key, state[key].to(device).clone())


@register_algorithm("marginmix")
class MarginMix(MixMatch):
    """MarginMix (reconstructed): MixMatch with centroid-distance self-labels and a large-margin term.

    The guessed label of an unlabeled image comes from its distances to the labeled class centroids
    in the embedding space; a hinge separates each labeled embedding from the other centroids."""

    name = "marginmix"
    unlabeled_views = ("weak", "weak")
    default_policy = None
    uses_policy = False

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 100.0, T: float = 0.5,
                 K: int = 2, mixup_alpha: float = 0.75, unsup_warmup: float = 1 / 64, rampup: str = "linear",
                 mixup_per_sample: bool = True, centroid_weight: float = 1.0, centroid_temperature: float = 0.1,
                 lambda_margin: float = 1.0, margin: float = 0.5, normalize_embedding: bool = True):
        super().__init__(num_classes, policy, lambda_u=lambda_u, T=T, K=K, mixup_alpha=mixup_alpha,
                         unsup_warmup=unsup_warmup, rampup=rampup, mixup_per_sample=mixup_per_sample)
        if not 0.0 <= centroid_weight <= 1.0:
            raise ValueError(f"centroid_weight (share of the centroid self-label in the guess) must be in "
                             f"[0, 1]; got {centroid_weight}")
        if centroid_temperature <= 0:
            raise ValueError(f"centroid_temperature (of the softmax over -squared distances) must be > 0; "
                             f"got {centroid_temperature}")
        if lambda_margin < 0:
            raise ValueError(f"lambda_margin (weight of the large-margin term) must be >= 0; got {lambda_margin}")
        if margin < 0:
            raise ValueError(f"margin (between squared distances to own and other centroids) must be >= 0; "
                             f"got {margin}")
        self.centroid_weight, self.centroid_temperature = float(centroid_weight), float(centroid_temperature)
        self.lambda_margin, self.margin = float(lambda_margin), float(margin)
        self.normalize_embedding = normalize_embedding
        self.centroids = ClassCentroids(num_classes)
        self._guess: dict[str, Tensor] | None = None   # this step's centroid guess, for its statistics

    @property
    def uses_centroids(self) -> bool:
        """False when both MarginMix terms are off: the step is then MixMatch's."""
        return self.centroid_weight > 0 or self.lambda_margin > 0

    # -- hooks ------------------------------------------------------------------------
    def bind_backbone(self, feature_dim: int | None) -> None:
        """Centroids of the backbone's feature width (a backbone that does not say: sized at the first step)."""
        if feature_dim is not None and self.uses_centroids:
            self.centroids.allocate(feature_dim)

    def setup(self, num_unlabeled: int, device: torch.device, num_labeled: int = 0) -> None:
        super().setup(num_unlabeled, device, num_labeled)
        self.centroids.to(device)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """The labeled embeddings accumulated during the epoch that ended become the centroids."""
        super().on_epoch_start(ctx)
        if self.centroids.allocated:
            self.centroids.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "centroids": self.centroids.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.centroids.load_state_dict(state.get("centroids", {}))

    # -- pieces -------------------------------------------------------------------------
    def embed(self, feats: Tensor) -> Tensor:
        feats = feats.float()
        return F.normalize(feats, dim=-1) if self.normalize_embedding else feats

    def _centroids_for(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        if not self.centroids.allocated:
            self.centroids.allocate(feats.shape[-1], feats.device)
        return self.centroids.current()

    @torch.no_grad()
    def centroid_guess(self, model: nn.Module, views: list[Tensor]) -> dict[str, Tensor]:
        """The K-view guess with the centroid self-label blended in (one pass, BN statistics frozen).

        Returns q (sharpened targets), p (the blended distribution before sharpening), p_model,
        p_cent and ready (every class has a centroid; until then p = p_model).
        """
        with frozen_bn_stats(model):
            logits, feats = model(torch.cat(views))
        k, b = len(views), views[0].shape[0]
        p_model = torch.softmax(logits.float(), dim=-1).view(k, b, -1).mean(dim=0)
        centroids, available = self._centroids_for(feats)
        p_cent = centroid_probs(self.embed(feats), centroids, available, self.centroid_temperature)
        p_cent = p_cent.view(k, b, -1).mean(dim=0)
        w = self.centroid_weight
        blended = p_cent if w == 1.0 else (1.0 - w) * p_model + w * p_cent
        ready = available.all()
        p = torch.where(ready, blended, p_model)
        return {"q": sharpen(p, self.T), "p": p, "p_model": p_model, "p_cent": p_cent, "ready": ready}

    # -- the step -----------------------------------------------------------------------
    # -- MixMatch's step, through its hooks: the centroid guess, the unmixed labeled pass, the margin --
    def guess(self, model: nn.Module, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        self._guess = self.centroid_guess(model, views) if self.centroid_weight > 0 else None
        if self._guess is None:   # MixMatch's guess, the same call
            return super().guess(model, views)
        return self._guess["q"], self._guess["p"]

    def extra_inputs(self, batch: Batch) -> list[Tensor]:
        return [batch.x_l] if self.uses_centroids else []

    def extra_terms(self, batch: Batch, extra_out: list[tuple[Tensor, Tensor]], losses: dict[str, Tensor],
                    stats: dict[str, Tensor], ctx: StepContext) -> None:
        if not self.uses_centroids:
            return
        emb_l = self.embed(extra_out[0][1])
        centroids, available = self._centroids_for(emb_l)   # the step's snapshot (the guess used the same)
        if self.lambda_margin > 0:
            losses["margin"] = self.lambda_margin * centroid_margin_loss(emb_l, batch.y_l, centroids, available,
                                                                         self.margin, ctx.dist)
        self.centroids.accumulate(emb_l, batch.y_l, ctx.dist)
        stats["centroid_coverage"] = available.float().mean()
        if self._guess is not None:
            nearest = self._guess["p_cent"].argmax(dim=-1)
            stats["centroid_label_acc"] = pseudo_label_stats(self._guess["ready"].float().expand(nearest.shape[0]),
                                                             nearest, batch.u_true)["pseudo_label_acc"]

