"""CoMatch (Li, Xiong & Hoi, ICCV 2021): memory-smoothed pseudo-labels and graph-contrastive learning.

Notation: z = l2-normalised projection g(h) of the backbone feature (a 2-layer MLP head owned by
the algorithm); a memory queue holds (z_k, p_k) for the weak views of the last ``queue_batch``
steps' unlabeled AND labeled images (labeled: p_k = onehot(y)); t = temperature; B = unlabeled batch.

    p    = DA(softmax(f(weak(u))))                                (no gradient)
    a_bk = exp(z_w,b . z_k / t) / sum_k' exp(z_w,b . z_k' / t)   similarity to the queue
    q_b  = alpha p_b + (1 - alpha) sum_k a_bk p_k                  memory-smoothed pseudo-label
    w    = policy(q)                                               fixed: 1[max q_b >= 0.95]
    L_u  = 1/B sum_b w_b H(q_b, softmax(f(strong_0(u_b))))        soft targets
    pseudo-label graph:  W_bj = 1 if b = j (self-loop), else q_b . q_j if q_b . q_j >= T, else 0
                         W^_bj = W_bj / sum_j W_bj
    embedding graph:     S^_bj = exp(z_0,b . z_1,j / t) / sum_j' exp(z_0,b . z_1,j' / t)
                         z_0, z_1: the two strong views, with gradient
    L_c  = 1/B sum_b H(W^_b, S^_b)                                 graph-contrastive loss
    L    = L_s + lambda_u L_u + lambda_c L_c
    queue update (after smoothing): push (z_w, p) of the unlabeled and (z_l, onehot(y)) of the
    labeled images, ring buffer of queue_batch x (B_l + B_u) x world_size entries.

Choices, and what they follow:
  * Features: the weak views' predictions and embeddings come from the training model's own
    forward pass, without gradient (official code and USB; no EMA teacher). The projection is
    Linear(d, d) - ReLU - Linear(d, 64), l2-normalised (official ``low_dim=64``, USB).
  * Defaults are the official CIFAR code's and USB's CIFAR configs: t = 0.2 (one temperature for
    the smoothing and the contrastive loss), alpha = 0.9, T = 0.8, lambda_c = 1 (USB uses 5 on
    STL-10: ``--set comatch.lambda_c=5``), threshold 0.95 through the policy interface
    (``policy=...`` swaps it), queue of ``queue_batch`` = 5 steps (USB's ViT configs: 32).
  * Queue length: counted in steps (the official code's 2,560 entries on CIFAR are 5 steps of
    64 labeled + 7 x 64 unlabeled images); the number of entries is fixed at the first step from
    the batch shapes: queue_batch x (B_l + B_u) x world size. With sslzoo's FER batches (16 + 16)
    that is 160 entries, a fraction of the smallest built-in training pool (SFEW, 958 images), so
    the official length needs no shortening for small data sets (``comatch.queue_batch`` changes
    it). The queue is a ring buffer (pointer arithmetic on the device); USB's copy drops what
    overflows the end of its queue, the same when the size is a multiple of the per-step entries,
    as it is here.
  * Memory smoothing starts once the queue is full (zero-initialised slots never take part): the
    official code's condition (``epoch > 0 or it > queue_batch``, one step later); USB waits until
    the second epoch as well (``epoch > 0 and it > queue_batch``).
  * Distribution alignment: to the uniform distribution over the mean batch prediction of the last
    ``da_window`` = 32 steps including this one (official code: a 32-batch list; USB: ``da_len: 32``);
    p <- normalize(p (1/C + eps) / (p~ + eps)) with eps = 1e-6 (USB; the official code has no eps).
    Under DDP the batch means are averaged over ranks (USB gathers the predictions: the same mean).
    ``da_window=0`` turns DA off. The queue stores the aligned, unsmoothed p (official, USB).
  * Under DDP the queue entries of every rank are gathered (USB's ``concat_all_gather``) so every
    rank holds the same queue; the two graphs are built per rank over its own batch (USB).
  * L_c uses log-softmax (official/USB: log(softmax + 1e-7); equal up to that 1e-7). L_u is
    normalised by the whole unlabeled batch (official, USB). The smoothing and L_c's similarities
    are computed in float32 (autocast off).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sslzoo.algorithm import (Batch, ForwardOutput, PolicyInput, SSLAlgorithm, StepContext, StepOutput,
                              masked_ce, pseudo_label_stats, supervised_ce)
from sslzoo.registry import register_algorithm

from .remixmatch import optional_alignment
from .simmatch import ProjectionHeadMixin, full_precision, project


class MemoryQueue:
    """Ring buffer of (embedding, class distribution) pairs; pointer and fill state are device tensors."""

    def __init__(self, size: int, dim: int, num_classes: int, device: torch.device | str = "cpu"):
        if size < 1:
            raise ValueError(f"queue size must be >= 1; got {size}")
        self.size = int(size)
        self.feats = torch.zeros(size, dim, device=device)
        self.probs = torch.zeros(size, num_classes, device=device)
        self.ptr = torch.zeros((), dtype=torch.long, device=device)     # next slot to write
        self.full = torch.zeros((), dtype=torch.bool, device=device)    # every slot written at least once?

    @torch.no_grad()
    def push(self, feats: Tensor, probs: Tensor) -> None:
        """Write ``n`` entries at ptr, ptr+1, ... (mod size); the last ``size`` win if n > size."""
        n = feats.shape[0]
        if n > self.size:   # only the newest ``size`` entries can stay
            feats, probs, skipped = feats[n - self.size:], probs[n - self.size:], n - self.size
        else:
            skipped = 0
        slots = (self.ptr + skipped + torch.arange(feats.shape[0], device=self.ptr.device)) % self.size
        self.feats.index_copy_(0, slots, feats.to(self.feats))
        self.probs.index_copy_(0, slots, probs.to(self.probs))
        self.full |= (self.ptr + n) >= self.size
        self.ptr.copy_((self.ptr + n) % self.size)

    def state_dict(self) -> dict[str, Tensor]:
        return {"feats": self.feats, "probs": self.probs, "ptr": self.ptr, "full": self.full}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], device: torch.device) -> "MemoryQueue":
        queue = cls(state["feats"].shape[0], state["feats"].shape[1], state["probs"].shape[1], device)
        for key in ("feats", "probs", "ptr", "full"):
            setattr(queue, key, state[key].to(device).clone())
        return queue


# -- CoMatch's equations ------------------------------------------------------------------
def memory_smoothed(p: Tensor, z: Tensor, queue_feats: Tensor, queue_probs: Tensor, alpha: float,
                    temperature: float) -> Tensor:
    """q = alpha p + (1 - alpha) softmax(z . z_k / t) @ p_k over the queue ([B, C])."""
    a = torch.softmax(z @ queue_feats.t() / temperature, dim=1)
    return alpha * p + (1.0 - alpha) * a @ queue_probs


def pseudo_label_graph(q: Tensor, threshold: float) -> Tensor:
    """Row-normalised W: self-loops of weight 1, edges q_b . q_j kept where >= threshold ([B, B])."""
    w = q @ q.t()
    w.fill_diagonal_(1.0)
    w = w * (w >= threshold).to(w.dtype)
    return w / w.sum(dim=1, keepdim=True)   # the self-loop keeps every row sum >= 1 (threshold <= 1)


def graph_contrastive_loss(z0: Tensor, z1: Tensor, graph: Tensor, temperature: float) -> Tensor:
    """Mean over b of the cross-entropy between W^_b and softmax_j(z0_b . z1_j / t)."""
    log_s = torch.log_softmax(z0 @ z1.t() / temperature, dim=1)
    return -(graph * log_s).sum(dim=1).mean()


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Float one-hot by scatter (F.one_hot validates its input on the host)."""
    out = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    return out.scatter_(1, labels.long()[:, None], 1.0)


@register_algorithm("comatch")
class CoMatch(ProjectionHeadMixin, SSLAlgorithm):
    """CoMatch: pseudo-labels smoothed by a memory of embeddings; a pseudo-label graph shapes the embeddings."""

    name = "comatch"
    unlabeled_views = ("weak", "strong", "strong")
    default_policy = "fixed:0.95"
    uses_policy = True
    state_parts = ("da",)

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, lambda_c: float = 1.0,
                 temperature: float = 0.2, proj_dim: int = 64, smoothing_alpha: float = 0.9,
                 contrast_threshold: float = 0.8, queue_batch: int = 5, da_window: int = 32,
                 unsup_norm: str = "batch"):
        super().__init__(num_classes, policy)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if not 0.0 <= smoothing_alpha <= 1.0:
            raise ValueError(f"smoothing_alpha is a weight in [0, 1]; got {smoothing_alpha}")
        if not 0.0 <= contrast_threshold <= 1.0:
            raise ValueError(f"contrast_threshold (edge threshold of the pseudo-label graph) must be in "
                             f"[0, 1]; got {contrast_threshold}")
        if int(queue_batch) < 1:
            raise ValueError(f"queue_batch (steps held in the memory queue) must be >= 1; got {queue_batch}")
        if unsup_norm not in ("batch", "subset"):
            raise ValueError(f"unsup_norm must be 'batch' or 'subset'; got {unsup_norm!r}")
        self.lambda_u, self.lambda_c, self.temperature = lambda_u, lambda_c, float(temperature)
        self.init_projection(proj_dim)
        self.smoothing_alpha = float(smoothing_alpha)
        self.contrast_threshold, self.queue_batch = float(contrast_threshold), int(queue_batch)
        self.unsup_norm = unsup_norm
        self.da = optional_alignment(num_classes, da_window)
        self.device = torch.device("cpu")
        self.queue: MemoryQueue | None = None   # sized at the first step from the batch shapes

    # -- hooks --------------------------------------------------------------------------
    def setup(self, num_unlabeled: int, device: torch.device, num_labeled: int = 0) -> None:
        super().setup(num_unlabeled, device, num_labeled)
        self.device = torch.device(device)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("queue"):
            self.queue = MemoryQueue.from_state(state["queue"], self.device)

    # -- the step -----------------------------------------------------------------------
    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        head = self._head()
        sup, sup_per_sample = supervised_ce(out.logits_l, batch.y_l)
        logits_w, logits_s0, _ = out.u_logits
        feats_w, feats_s0, feats_s1 = out.u_feats
        n_u = feats_s0.shape[0]
        z_strong = project(head, torch.cat([feats_s0, feats_s1]))          # with gradient
        with torch.no_grad(), full_precision(logits_w.device):
            z_w = project(head, feats_w.detach())
            z_l = project(head, out.feats_l.detach())
            p = torch.softmax(logits_w.detach().float(), dim=-1)
            if self.da is not None:
                p = self.da(p, ctx.dist.all_reduce(p.mean(dim=0), op="mean"))
            if self.queue is None:   # entries per step are known now: (B_l + B_u) x world size
                per_step = (z_l.shape[0] + z_w.shape[0]) * ctx.dist.world_size
                self.queue = MemoryQueue(self.queue_batch * per_step, z_w.shape[1], self.num_classes, z_w.device)
            smoothed = memory_smoothed(p, z_w, self.queue.feats, self.queue.probs, self.smoothing_alpha,
                                       self.temperature)
            q = torch.where(self.queue.full, smoothed, p)
            entries = torch.cat([z_w, z_l])
            targets = torch.cat([p, one_hot(batch.y_l, self.num_classes)])
            self.queue.push(ctx.dist.gather(entries), ctx.dist.gather(targets))
            graph = pseudo_label_graph(q, self.contrast_threshold)
        pseudo = q.argmax(dim=-1)
        w = self.policy(PolicyInput(q, batch.u_index, sup_per_sample), ctx)
        terms = {"sup": sup, "unsup": self.lambda_u * masked_ce(logits_s0, q, w, self.unsup_norm)}
        if self.lambda_c:
            with full_precision(z_strong.device):
                terms["contrast"] = self.lambda_c * graph_contrastive_loss(z_strong[:n_u], z_strong[n_u:],
                                                                           graph, self.temperature)
        stats = pseudo_label_stats(w, pseudo, batch.u_true)
        stats["graph_edges"] = (graph > 0).float().sum(dim=1).mean()   # per sample, self-loop included
        return StepOutput(terms, stats)
