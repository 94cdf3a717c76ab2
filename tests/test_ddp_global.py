"""N processes train exactly as one process with the N x batch, where a loss uses batch statistics.

DDP averages gradients over ranks. A loss normalised by a per-rank count (``unsup_norm=subset``,
MarginMix's margin pairs), or built from per-rank statistics (FreeMatch's fairness histogram,
Ada-CM's InfoNCE negatives), would make that average differ from the 1-process gradient.
The hand-checkable cases run two simulated ranks (threads whose collectives exchange real
tensors, tests/thread_ranks.py); the last test is a real 2-process gloo run with DDP
(tests/ddp_global_worker.py). Under DDP a parameter's gradient is the mean over ranks, so the
gradient with respect to rank r's rows is rank r's gradient / N: compared with the rows of the
1-process gradient.
"""
from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch import Tensor

from sslzoo.algorithm import masked_ce
from sslzoo.algorithms.adacm import info_nce
from sslzoo.algorithms.freematch import fairness_loss
from sslzoo.algorithms.marginmix import centroid_margin_loss
from sslzoo.distributed import DistContext
from tests.ddp_global_worker import ALGOS, WORLD, rank_rows, two_process_results
from tests.thread_ranks import run_ranks

# float32 sums in another order (DDP's average of two rank gradients vs one pass over the batch)
FLOAT32 = {"rtol": 1e-6, "atol": 2e-6}


def two_ranks_and_one(loss: Callable[..., Tensor], tensors: list[Tensor], with_grad: tuple[int, ...] = (0,)):
    """(each rank's loss, the DDP gradient of the inputs in ``with_grad``, the 1-process loss and gradients).

    Every tensor's rows are split over 2 ranks; ``loss(dist, *tensors)``.
    """
    def rank(dist: DistContext):
        local = [rank_rows(t, dist).clone().requires_grad_(i in with_grad) for i, t in enumerate(tensors)]
        value = loss(dist, *local)
        value.backward()
        return value.detach(), [local[i].grad for i in with_grad]

    results = run_ranks(rank, WORLD)
    ddp_grads = [torch.cat([grads[k] for _, grads in results]) / WORLD for k in range(len(with_grad))]
    whole = [t.clone().requires_grad_(i in with_grad) for i, t in enumerate(tensors)]
    value = loss(DistContext(), *whole)
    value.backward()
    return [v for v, _ in results], ddp_grads, value.detach(), [whole[i].grad for i in with_grad]


def test_global_ratio_by_hand():
    """Rank 0: 1 / 1, rank 1: 6 / 2. Per rank, DDP would average 1 and 3 (= 2); the global ratio is 7/3,
    and d(7/3)/d(numerator_r) = 1/3, which each rank's N x 1/3 averaged over N ranks gives."""
    values, grads, single, single_grads = two_ranks_and_one(
        lambda d, num, den: d.global_ratio(num.sum(), den.sum(), 1e-8),
        [torch.tensor([1.0, 6.0]), torch.tensor([1.0, 2.0])])
    assert [v.item() for v in values] == pytest.approx([7 / 3, 7 / 3], rel=1e-7)
    assert single.item() == pytest.approx(7 / 3, rel=1e-7)
    assert grads[0].tolist() == pytest.approx([1 / 3, 1 / 3], rel=1e-7) == single_grads[0].tolist()


def test_masked_ce_subset_divides_by_the_global_trusted_weight():
    """CE values ln 2, ~0 (untrusted), ln 4, ln 2 with weights 1, 0, 1, 1: the global subset mean is
    (ln 2 + ln 4 + ln 2) / 3 = 4/3 ln 2. Per rank it was ln 2 and 3/2 ln 2 (DDP mean 5/4 ln 2)."""
    logits = torch.tensor([[0.0, 0.0], [9.0, 0.0], [0.0, math.log(3.0)], [0.0, 0.0]])
    targets, weights = torch.tensor([0, 0, 0, 1]), torch.tensor([1.0, 0.0, 1.0, 1.0])
    values, grads, single, single_grads = two_ranks_and_one(
        lambda d, x, y, w: masked_ce(x, y, w, "subset", d), [logits, targets, weights])
    assert [v.item() for v in values] == pytest.approx([4 / 3 * math.log(2)] * 2, rel=1e-6)
    assert single.item() == pytest.approx(4 / 3 * math.log(2), rel=1e-6)
    torch.testing.assert_close(grads[0], single_grads[0], **FLOAT32)
    # "batch" needs no collective: equal per-rank batches, so the mean over ranks is the global mean
    per_rank = [masked_ce(logits[r * 2:(r + 1) * 2], targets[r * 2:(r + 1) * 2], weights[r * 2:(r + 1) * 2])
                for r in range(WORLD)]
    assert (sum(per_rank) / WORLD).item() == pytest.approx(masked_ce(logits, targets, weights).item(), rel=1e-6)


def test_info_nce_negatives_come_from_every_rank():
    """One subset-II sample per rank: alone on its rank it has no negative (the loss is 0), but the global
    subset has two. a0 = b0 = (1, 0), a1 = b1 = (0, 1), tau = 1: every anchor's positive has similarity 1
    and its denominator exp(0) + exp(1) + exp(0), so the loss is log(2 + e) - 1."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    subset = torch.tensor([1.0, 1.0])
    values, _, single, _ = two_ranks_and_one(lambda d, fa, fb, s: info_nce(fa, fb, s > 0, 1.0, "both", d),
                                             [a, a.clone(), subset])
    assert [v.item() for v in values] == pytest.approx([math.log(2 + math.e) - 1] * 2, rel=1e-6)
    assert single.item() == pytest.approx(math.log(2 + math.e) - 1, rel=1e-6)


@pytest.mark.parametrize("anchors", ["both", "a"])
def test_info_nce_gradient_equals_the_one_process_gradient(anchors):
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    subset = torch.tensor([1.0, 1, 0, 1, 0, 1, 1, 0])   # rank 0: 3 of its 4 rows, rank 1: 2
    values, grads, single, single_grads = two_ranks_and_one(
        lambda d, x, y, s: info_nce(x, y, s > 0, 0.5, anchors, d), [fa, fb, subset], with_grad=(0, 1))
    for v in values:
        torch.testing.assert_close(v, single, rtol=1e-6, atol=0.0)
    for got, want in zip(grads, single_grads):
        torch.testing.assert_close(got, want, **FLOAT32)
        assert got[[2, 4, 7]].abs().sum() == 0   # subset I rows get no contrastive gradient


def test_fairness_loss_uses_the_global_histogram_and_mean():
    """Rank 0's selected rows all predict class 0 and rank 1's class 2: each rank alone sees a one-class
    histogram, the global batch sees two classes."""
    logits = torch.tensor([[3.0, 0.0, 0.5, 0.0], [2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0],
                           [0.0, 0.5, 2.5, 0.0], [0.0, 0.0, 1.5, 1.0], [1.0, 1.0, 1.0, 0.0]])
    selected = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    class_mean, label_hist = torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0.5, 0.25, 0.125, 0.125])
    values, grads, single, single_grads = two_ranks_and_one(
        lambda d, x, s: fairness_loss(x, s > 0, class_mean, label_hist, d), [logits, selected])
    per_rank = [fairness_loss(logits[r * 3:(r + 1) * 3], selected[r * 3:(r + 1) * 3] > 0, class_mean, label_hist)
                for r in range(WORLD)]
    assert abs((sum(per_rank) / WORLD - single).item()) > 1.0   # what averaging per-rank terms gave
    for v in values:
        torch.testing.assert_close(v, single, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grads[0], single_grads[0], **FLOAT32)


def test_margin_loss_mean_is_over_the_global_pairs():
    """Class 2 has no centroid: rank 0's rows (labels 0, 2) make 1 valid pair, rank 1's (1, 1) make 2."""
    g = torch.Generator().manual_seed(1)
    emb, centroids = torch.randn(4, 3, generator=g), torch.randn(3, 3, generator=g)
    labels, available = torch.tensor([0, 2, 1, 1]), torch.tensor([True, True, False])
    values, grads, single, single_grads = two_ranks_and_one(
        lambda d, e, y: centroid_margin_loss(e, y, centroids, available, 5.0, d), [emb, labels])
    assert single.item() > 0
    for v in values:
        torch.testing.assert_close(v, single, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grads[0], single_grads[0], **FLOAT32)


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_two_process_gloo_steps_equal_one_process_with_the_doubled_batch(name):
    """Real DDP (gloo, 2 processes) of a small MLP: losses, averaged gradients and parameters after
    4 SGD steps match the 1-process run on the whole batches, and the ranks agree bit for bit."""
    ranks, single = two_process_results()
    ref = single["algorithms"][name]
    got = [r["algorithms"][name] for r in ranks]
    for term in ref["losses"][0]:   # every term takes part (is nonzero at some step)
        assert any(losses[term] != 0 for losses in ref["losses"]), term
    for step in range(len(ref["losses"])):
        for k, v in ref["losses"][step].items():
            torch.testing.assert_close(got[0]["losses"][step][k], v, **FLOAT32)
        for k, v in ref["grads"][step].items():
            torch.testing.assert_close(got[0]["grads"][step][k], v, **FLOAT32)
    for k, v in ref["params"].items():
        torch.testing.assert_close(got[0]["params"][k], v, **FLOAT32)
        assert torch.equal(got[0]["params"][k], got[1]["params"][k])


def test_the_ddp_paths_read_nothing_on_the_host(monkeypatch):
    """The collectives above run inside the training step: no host read there either (tests/test_sync_free.py)."""
    from tests.test_sync_free import HostReadCounter
    g = torch.Generator().manual_seed(2)
    logits, feats, emb = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    weights, labels = (torch.arange(8) % 3 == 0).float(), torch.arange(8) % 4
    centroids, available = torch.randn(4, 3, generator=g), torch.tensor([True, True, True, False])

    def step(d: DistContext) -> None:
        x, f, e = (rank_rows(t, d).clone().requires_grad_() for t in (logits, feats, emb))
        w, y = rank_rows(weights, d), rank_rows(labels, d)
        total = (masked_ce(x, y, w, "subset", d) + info_nce(f, f * 2, w == 0, 0.5, "both", d)
                 + fairness_loss(x, w > 0, torch.full((4,), 0.25), torch.full((4,), 0.25), d)
                 + centroid_margin_loss(e, y, centroids, available, 1.0, d))
        total.backward()

    counter = HostReadCounter(monkeypatch)
    counter.active = True
    run_ranks(step, WORLD)
    counter.active = False
    assert counter.calls == []
