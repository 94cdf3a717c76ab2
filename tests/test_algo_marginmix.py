"""MarginMix (reconstructed): centroid distances and self-labels, the margin loss, the centroid bank,
the reduction to MixMatch bit for bit, the step's wiring, and 1-2 epoch runs (finite, deterministic, resumable)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch, StepContext
from sslzoo.algorithms.marginmix import (
    ClassCentroids,
    MarginMix,
    centroid_margin_loss,
    centroid_probs,
    squared_distances,
)
from sslzoo.algorithms.mixmatch import MixMatch, guess_labels, probs_mse, soft_ce
from sslzoo.distributed import DistContext
from sslzoo.mixup import mix, sample_lambda, sharpen
from sslzoo.trainer import build_algorithm, train
from tests.algo_testkit import comparable, straight_and_resumed
from tests.conftest import TinyNet, tiny_config

OFF = {"centroid_weight": 0.0, "lambda_margin": 0.0}


def ctx(step=0, total=64, mode="concat", dist=None) -> StepContext:
    extra = {} if dist is None else {"dist": dist}
    return StepContext(epoch=0, iteration=step, step=step, total_steps=total, iters_per_epoch=total, num_classes=3,
                       forward_mode=mode, **extra)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_l, y_l = torch.randn(6, 3, 6, 6, generator=g), torch.tensor([0, 1, 2, 1, 0, 2])
    views = [torch.randn(6, 3, 6, 6, generator=g), torch.randn(6, 3, 6, 6, generator=g)]
    return Batch(x_l, y_l, views, torch.arange(6), torch.tensor([0, 1, -1, 2, 2, 0]))


class DoublingDist(DistContext):
    """Two ranks that saw the same batch: all_reduce(sum) doubles, as torch.distributed would."""

    def __init__(self):
        super().__init__(rank=0, world_size=2)

    def all_reduce(self, t, op="sum"):
        return t * 2 if op == "sum" else t


# -- the equations on hand-checkable tensors ---------------------------------------------------
def test_squared_distances_and_the_centroid_self_label_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d = squared_distances(emb, mu)
    assert torch.equal(d, torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 2.0]]))
    every = torch.ones(3, dtype=torch.bool)
    p = centroid_probs(emb, mu, every, temperature=1.0)
    z0 = 1 + math.exp(-2) + math.exp(-4)
    assert torch.allclose(p[0], torch.tensor([1 / z0, math.exp(-2) / z0, math.exp(-4) / z0]))
    z1 = 2 * math.exp(-2) + 1
    assert torch.allclose(p[1], torch.tensor([math.exp(-2) / z1, 1 / z1, math.exp(-2) / z1]))
    assert p.argmax(dim=1).tolist() == [0, 1]                           # the nearest centroid
    # a lower temperature sharpens towards the nearest centroid
    assert centroid_probs(emb, mu, every, temperature=0.1)[0, 0] > p[0, 0]
    # a class without a centroid gets exactly 0, the others renormalize among themselves
    no_first = torch.tensor([False, True, True])
    p2 = centroid_probs(emb, mu, no_first, temperature=1.0)
    assert p2[0, 0] == 0.0 and torch.allclose(p2[0, 1:], torch.tensor([1 / (1 + math.exp(-2)),
                                                                         math.exp(-2) / (1 + math.exp(-2))]))


def test_margin_loss_by_hand_value_gradient_and_masking():
    emb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    mu = torch.tensor([[0.8, 0.0], [0.0, 1.0], [1.0, 0.5]])
    every = torch.ones(3, dtype=torch.bool)
    loss = centroid_margin_loss(emb, torch.tensor([0]), mu, every, margin=0.5)
    # d_own = 0.04; class 1: d = 2 -> max(0, 0.5 + 0.04 - 2) = 0; class 2: d = 0.25 -> 0.29; mean of 2 pairs
    assert loss.item() == pytest.approx(0.145, abs=1e-6)
    loss.backward()
    # only class 2 is active: d/demb (d_own - d_2) / 2 = (2 (emb - mu_0) - 2 (emb - mu_2)) / 2 = mu_2 - mu_0
    assert torch.allclose(emb.grad, torch.tensor([[0.2, 0.5]]))
    # class 2 without a centroid leaves one pair (inactive): zero; no valid pair at all: zero, not NaN
    without_2 = torch.tensor([True, True, False])
    assert centroid_margin_loss(emb, torch.tensor([0]), mu, without_2, 0.5).item() == 0.0
    assert centroid_margin_loss(emb, torch.tensor([0]), mu, torch.zeros(3, dtype=torch.bool), 0.5).item() == 0.0
    # margin 0: an embedding already closer to its own centroid costs nothing
    assert centroid_margin_loss(emb, torch.tensor([0]), mu, every, 0.0).item() == 0.0


def test_centroids_running_then_per_epoch_and_state_round_trip():
    bank = ClassCentroids(3)
    bank.allocate(2)
    mu, avail = bank.current()
    assert not avail.any()
    bank.accumulate(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1]))
    mu, avail = bank.current()                       # first epoch: the running means so far
    assert avail.tolist() == [True, True, False]
    assert torch.equal(mu[:2], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    bank.end_epoch()                                 # the epoch's means become the centroids
    assert bank.ready.tolist() == [True, True, False] and bank.counts.sum() == 0
    bank.accumulate(torch.tensor([[5.0, 5.0], [0.0, -4.0]]), torch.tensor([0, 2]))
    mu, avail = bank.current()                       # the finished epoch's centroid wins over this epoch's
    assert torch.equal(mu, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, -4.0]])) and avail.all()
    state = copy.deepcopy(bank.state_dict())
    bank.end_epoch()                                 # class 1 unseen in this epoch keeps its centroid
    assert torch.equal(bank.centroids, torch.tensor([[5.0, 5.0], [0.0, 2.0], [0.0, -4.0]]))
    other = ClassCentroids(3)                        # unallocated (backbone without feature_dim) + restore
    other.load_state_dict(state)
    other.end_epoch()
    assert torch.equal(other.centroids, bank.centroids) and torch.equal(other.ready, bank.ready)
    # under DDP the batch sums and counts are summed over ranks: two equal ranks, same means, double counts
    ddp = ClassCentroids(3)
    ddp.allocate(2)
    ddp.accumulate(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0, 0]), DoublingDist())
    assert ddp.counts.tolist() == [4.0, 0.0, 0.0] and torch.equal(ddp.current()[0][0], torch.tensor([2.0, 0.0]))


def test_hyperparameters_are_validated_and_configured(tmp_path):
    for bad in ({"centroid_weight": 1.5}, {"centroid_weight": -0.1}, {"centroid_temperature": 0.0},
                {"lambda_margin": -1.0}, {"margin": -0.5}, {"T": 0.0}):
        with pytest.raises(ValueError):
            MarginMix(3, **bad)
    cfg = tiny_config(tmp_path, algo="marginmix")
    assert cfg["marginmix"]["unsup_warmup"] == 0.4 == tiny_config(tmp_path, algo="mixmatch")["mixmatch"]["unsup_warmup"]
    algo = build_algorithm(cfg, 7)
    assert isinstance(algo, MarginMix) and algo.policy is None and algo.lambda_margin == 1.0
    assert MarginMix(3, K=3).unlabeled_views == ("weak", "weak", "weak")


# -- the reduction to MixMatch -----------------------------------------------------------------
def _run(algo, model, batch, c):
    torch.manual_seed(123)
    out = algo.step(model, batch, c)
    total = sum(out.losses.values())
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out, grads, torch.rand(4)                 # the next draws show how many numbers were consumed


@pytest.mark.parametrize("mode", ["concat", "separate"])
def test_with_its_terms_off_marginmix_is_mixmatch_bit_for_bit(mode):
    torch.manual_seed(0)
    init = TinyNet().train()
    batch = make_batch()
    hp = {"lambda_u": 75.0, "T": 0.4, "mixup_alpha": 0.5, "unsup_warmup": 0.25}
    c = ctx(step=10, total=64, mode=mode)            # ramp 10/16: the unlabeled term counts
    mixmatch = MixMatch(3, **hp)
    marginmix = MarginMix(3, **hp, **OFF)
    for algo in (mixmatch, marginmix):               # the trainer's hooks first: they must not change anything
        algo.bind_backbone(4)
        algo.setup(6, torch.device("cpu"), num_labeled=6)
    m_a, m_b = copy.deepcopy(init), copy.deepcopy(init)
    out_a, grads_a, rng_a = _run(mixmatch, m_a, batch, c)
    out_b, grads_b, rng_b = _run(marginmix, m_b, batch, c)
    assert out_a.losses.keys() == out_b.losses.keys() == {"sup", "unsup"}
    assert all(torch.equal(out_a.losses[k], out_b.losses[k]) for k in out_a.losses)
    assert out_a.losses["unsup"] > 0
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    assert out_a.stats.keys() == out_b.stats.keys()
    assert all(torch.equal(out_a.stats[k], out_b.stats[k]) or (out_a.stats[k].isnan() and out_b.stats[k].isnan())
               for k in out_a.stats)
    assert all(torch.equal(a, b) for a, b in zip(m_a.state_dict().values(), m_b.state_dict().values()))   # BN
    assert torch.equal(rng_a, rng_b)
    # ... and the comparison can fail: with its terms on, MarginMix is another algorithm
    on = MarginMix(3, **hp)
    on.bind_backbone(4)
    on.centroids.accumulate(F.normalize(torch.randn(3, 4), dim=1), torch.tensor([0, 1, 2]))
    out_c, grads_c, rng_c = _run(on, copy.deepcopy(init), batch, c)
    assert "margin" in out_c.losses
    assert not torch.equal(out_c.losses["unsup"], out_a.losses["unsup"])
    assert not all(torch.equal(grads_a[k], grads_c[k]) for k in grads_a)


# -- the step with its terms on ----------------------------------------------------------------
def test_guess_blends_centroid_self_labels_and_falls_back_until_every_class_has_one():
    torch.manual_seed(0)
    model = TinyNet().train()
    views = make_batch().u_views
    algo = MarginMix(3, centroid_weight=0.5, centroid_temperature=0.2)
    algo.bind_backbone(4)
    q_mixmatch, p_model = guess_labels(copy.deepcopy(model), views, 0.5)
    # no centroid yet: MixMatch's guess
    g = algo.centroid_guess(model, views)
    assert not g["ready"] and torch.equal(g["p_model"], p_model) and torch.allclose(g["q"], q_mixmatch)
    # two of three classes: still MixMatch's guess
    algo.centroids.accumulate(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.tensor([0, 1]))
    assert torch.allclose(algo.centroid_guess(model, views)["q"], q_mixmatch)
    # all three: q = Sharpen(mean_k(0.5 p_model + 0.5 p_cent), T), p_cent from the same pass's features
    algo.centroids.accumulate(torch.tensor([[0, 0, 1.0, 0]]), torch.tensor([2]))
    g = algo.centroid_guess(model, views)
    with torch.no_grad():
        feats = copy.deepcopy(model)(torch.cat(views))[1]
    mu = torch.eye(4)[:3]
    p_cent = torch.softmax(-((F.normalize(feats, dim=1)[:, None] - mu[None]) ** 2).sum(-1) / 0.2, dim=-1)
    p_cent = (p_cent[:6] + p_cent[6:]) / 2
    assert g["ready"] and torch.allclose(g["p_cent"], p_cent, atol=1e-6)
    assert torch.allclose(g["q"], sharpen(0.5 * p_model + 0.5 * p_cent, 0.5), atol=1e-6)


def test_step_wiring_matches_a_direct_computation():
    torch.manual_seed(0)
    model = TinyNet().train()
    batch = make_batch()
    algo = MarginMix(3, lambda_margin=2.0, margin=0.3)     # centroid_weight 1: the guess is the centroid label
    algo.bind_backbone(4)
    seed_emb = F.normalize(torch.randn(3, 4), dim=1)
    algo.centroids.accumulate(seed_emb, torch.tensor([0, 1, 2]))
    mu = seed_emb.clone()
    reference = copy.deepcopy(model)
    torch.manual_seed(42)
    res = algo.step(model, batch, ctx(step=32, total=64))   # ramp over 1/64: full weight
    # replay: centroid guess, the same draws, ONE pass over [mixed, labeled]
    torch.manual_seed(42)
    with torch.no_grad():
        feats = copy.deepcopy(reference)(torch.cat(batch.u_views))[1]
    p_cent = centroid_probs(F.normalize(feats, dim=1), mu, torch.ones(3, dtype=torch.bool), 0.1)
    q = sharpen((p_cent[:6] + p_cent[6:]) / 2, 0.5)
    inputs = torch.cat([batch.x_l, *batch.u_views])
    targets = torch.cat([F.one_hot(batch.y_l, 3).float(), q, q])
    lam, perm = sample_lambda(18, 0.75), torch.randperm(18)
    mx, my = mix(inputs, targets, lam, perm)
    logits, feats_all = reference(torch.cat([mx, batch.x_l]))
    emb_l = F.normalize(feats_all[18:], dim=1)
    assert res.losses["sup"].item() == pytest.approx(soft_ce(logits[:6], my[:6]).item(), rel=1e-5)
    assert res.losses["unsup"].item() == pytest.approx(100 * probs_mse(logits[6:18], my[6:]).item(), rel=1e-5)
    expected = 2.0 * centroid_margin_loss(emb_l, batch.y_l, mu, torch.ones(3, dtype=torch.bool), 0.3)
    assert res.losses["margin"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert res.losses["margin"].requires_grad
    # the step's labeled embeddings entered this epoch's sums after the loss (3 seeds + 6 labeled)
    assert algo.centroids.counts.tolist() == [3.0, 3.0, 3.0]
    assert torch.allclose(algo.centroids.sums, seed_emb + torch.zeros(3, 4).index_add_(0, batch.y_l, emb_l.detach()),
                          atol=1e-6)
    assert res.stats["centroid_coverage"].item() == 1.0
    # the stated accuracy of the nearest-centroid label, on the samples of known truth
    known = batch.u_true >= 0
    nearest = ((p_cent[:6] + p_cent[6:]) / 2).argmax(1)
    acc = 100.0 * sum(int(nearest[i] == batch.u_true[i]) for i in range(6) if known[i]) / int(known.sum())
    assert res.stats["centroid_label_acc"].item() == pytest.approx(acc)


def test_margin_only_keeps_mixmatch_guess_and_epoch_start_promotes_centroids():
    torch.manual_seed(0)
    batch = make_batch()
    algo = MarginMix(3, centroid_weight=0.0)
    algo.bind_backbone(None)                            # a backbone that does not give its width
    model = TinyNet().train()
    out = algo.step(model, batch, ctx(step=5))
    assert out.losses["margin"].item() == 0.0           # no centroid before the first step
    assert "centroid_label_acc" not in out.stats
    assert algo.centroids.allocated and algo.centroids.counts.tolist() == [2.0, 2.0, 2.0]
    algo.on_epoch_start(_epoch_ctx(1))
    assert algo.centroids.ready.all() and algo.centroids.counts.sum() == 0
    assert algo.step(model, batch, ctx(step=6)).losses["margin"].item() > 0


def _epoch_ctx(epoch):
    from sslzoo.algorithm import EpochContext
    from sslzoo.distributed import DistContext
    return EpochContext(epoch, 2, 3, DistContext())


HOST_READS = ("__bool__", "item", "tolist", "cpu", "numpy", "nonzero", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("mode", ["concat", "separate"])
def test_the_step_and_the_epoch_hook_read_no_tensor_on_the_host(monkeypatch, mode):
    """Sync-free: every Python-level way to read a tensor on the host raises during the step.

    mixup_alpha=0: MixMatch's lambda draw (torch.distributions.Beta) validates its arguments with a
    host read, which is not MarginMix's code (see the report on sslzoo/mixup.py).
    """
    torch.manual_seed(0)
    model, batch = TinyNet().train(), make_batch()
    algo = MarginMix(3, centroid_weight=0.5, mixup_alpha=0.0)
    algo.bind_backbone(None)
    algo.step(model, batch, ctx(step=1, mode=mode))      # allocates the centroids (first step)

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host inside the step")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, host_read)
    out = algo.step(model, batch, ctx(step=2, mode=mode, dist=DoublingDist()))
    algo.on_epoch_start(_epoch_ctx(1))
    out2 = algo.step(model, batch, ctx(step=3, mode=mode))
    sum(out2.losses.values()).backward()
    monkeypatch.undo()
    assert {"sup", "unsup", "margin"} == set(out.losses) and out2.losses["margin"].item() >= 0
    assert bool(torch.isfinite(sum(out2.losses.values())))


# -- real runs ---------------------------------------------------------------------------------

def test_one_epoch_smoke_is_finite_and_deterministic(tmp_path):
    runs = []
    for name in ("a", "b"):
        metrics = train(tiny_config(tmp_path / name, algo="marginmix"))
        assert metrics["status"] == "finished"
        losses = metrics["history"][-1]["losses"]
        assert {"sup", "unsup", "margin"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
        runs.append(json.loads((tmp_path / name / "run" / "metrics.json").read_text()))
    assert comparable(runs[0]["history"]) == comparable(runs[1]["history"])
    assert runs[0]["final_acc"] == runs[1]["final_acc"]


def test_stop_after_an_epoch_then_resume_equals_the_straight_run(tmp_path):
    _, _, a, b = straight_and_resumed(tmp_path, algo="marginmix", epochs=2)
    a_metrics, b_metrics = (json.loads((tmp_path / run / "run" / "metrics.json").read_text())
                            for run in ("full", "split"))
    assert comparable(a_metrics["history"]) == comparable(b_metrics["history"])
    sa, sb = a["centroids"], b["centroids"]
    assert sa.keys() == {"centroids", "ready", "sums", "counts"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert bool(sa["ready"].any())                        # epoch 2 used centroids promoted from epoch 1
