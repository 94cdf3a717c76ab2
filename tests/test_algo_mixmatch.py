"""MixMatch: sharpening, MixUp convexity, interleaving, label guessing, the step's wiring, smoke run."""
from __future__ import annotations

from tests.conftest import TinyNet

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch, StepContext
from sslzoo.algorithms.mixmatch import MixMatch, guess_labels, probs_mse, soft_ce
from sslzoo.mixup import frozen_bn_stats, interleave, mix, mixed_forward, mixup, sample_lambda, sharpen
from sslzoo.trainer import build_algorithm, train


Tiny = TinyNet


def ctx(step=0, total=64, mode="concat") -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=total, iters_per_epoch=total, num_classes=3,
                       forward_mode=mode)


def test_sharpen_by_hand():
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    assert torch.allclose(sharpen(p, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]]))
    assert torch.allclose(sharpen(p, 1.0), p)
    assert torch.allclose(sharpen(torch.tensor([[0.0, 1.0]]), 0.5), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError):
        sharpen(p, 0.0)


def test_lambda_is_at_least_half_and_alpha_zero_disables_mixing():
    torch.manual_seed(0)
    lam = sample_lambda(1000, 0.75)
    assert lam.shape == (1000,) and bool((lam >= 0.5).all()) and bool((lam <= 1).all())
    assert lam.std() > 0                                    # one per sample
    batch_lam = sample_lambda(7, 0.75, per_sample=False)
    assert torch.all(batch_lam == batch_lam[0])             # USB: one per batch
    assert torch.equal(sample_lambda(3, 0.0), torch.ones(3))


def test_mix_is_the_convex_combination_with_the_permuted_batch():
    x = torch.arange(4 * 2 * 2 * 2, dtype=torch.float32).view(4, 2, 2, 2)
    y = torch.eye(4)
    lam, perm = torch.tensor([0.5, 0.75, 1.0, 0.9]), torch.tensor([1, 2, 3, 0])
    mx, my = mix(x, y, lam, perm)
    assert torch.allclose(mx[1], 0.75 * x[1] + 0.25 * x[2])
    assert torch.allclose(mx[2], x[2])
    assert torch.allclose(my[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.manual_seed(3)
    mx, my, lam, perm = mixup(x, y, 0.75)
    assert mx.shape == x.shape and my.shape == y.shape and bool((lam >= 0.5).all())
    ref_x = torch.stack([lam[i] * x[i] + (1 - lam[i]) * x[perm[i]] for i in range(4)])   # loop reference
    assert torch.allclose(mx, ref_x)
    assert torch.allclose(my.sum(dim=1), torch.ones(4))
    # every mixed target puts at least half its mass on its own row's label
    assert bool((my[torch.arange(4), torch.arange(4)] >= 0.5).all())


def test_interleave_is_an_involution_that_spreads_the_first_chunk():
    chunks = [torch.full((4,), float(i)) for i in range(3)]
    mixed = interleave(chunks, 4)
    assert [sorted(set(c.tolist())) for c in mixed][0] == [0.0, 1.0, 2.0]   # first pass sees all groups
    back = interleave(mixed, 4)
    assert all(torch.equal(a, b) for a, b in zip(back, chunks))


def test_loss_helpers_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert soft_ce(logits, targets).item() == pytest.approx((-math.log(0.5) - 0.5 * math.log(0.9)
                                                             - 0.5 * math.log(0.1)) / 2, rel=1e-5)
    # ((0.5^2 + 0.5^2) / 2 + (0.4^2 + 0.4^2) / 2) / 2
    assert probs_mse(logits, targets).item() == pytest.approx((0.25 + 0.16) / 2, rel=1e-5)


def test_guess_averages_the_views_sharpens_and_leaves_bn_stats():
    torch.manual_seed(0)
    model = Tiny().train()
    v1, v2 = torch.randn(5, 3, 6, 6), torch.randn(5, 3, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q, avg = guess_labels(model, [v1, v2], 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():   # one pass over both views, as in the step
        logits = copy.deepcopy(model)(torch.cat([v1, v2]))[0]
    ref = (torch.softmax(logits[:5], -1) + torch.softmax(logits[5:], -1)) / 2
    assert torch.allclose(avg, ref, atol=1e-6)
    assert torch.allclose(q, ref ** 2 / (ref ** 2).sum(1, keepdim=True), atol=1e-6)
    assert not q.requires_grad


def test_step_wiring_matches_a_direct_computation():
    torch.manual_seed(0)
    model = Tiny().train()
    x_l, y_l = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 1])
    views = [torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)]
    batch = Batch(x_l, y_l, views, torch.arange(4), torch.tensor([0, 1, -1, 2]))
    algo = MixMatch(3)
    reference = copy.deepcopy(model)
    torch.manual_seed(42)
    res = algo.step(model, batch, ctx(step=0))
    # replay: same guess, same random draws, one pass over the mixed batch
    torch.manual_seed(42)
    q, _ = guess_labels(reference, views, 0.5)
    inputs = torch.cat([x_l, *views])
    targets = torch.cat([F.one_hot(y_l, 3).float(), q, q])
    lam = sample_lambda(12, 0.75)
    perm = torch.randperm(12)
    mx, my = mix(inputs, targets, lam, perm)
    logits = reference(mx)[0]
    assert res.losses["sup"].item() == pytest.approx(soft_ce(logits[:4], my[:4]).item(), rel=1e-5)
    assert res.losses["unsup"].item() == 0.0              # ramp weight 0 at step 0
    res_later = algo.step(copy.deepcopy(reference), batch, ctx(step=1, total=64))   # 1 / (64 / 64) = 1
    assert res_later.losses["unsup"].item() > 0
    assert res.stats["mask_ratio"].item() == 1.0


def test_unsup_weight_ramps_linearly_over_the_warmup_fraction():
    algo = MixMatch(3, unsup_warmup=0.5)
    assert algo.unsup_weight(ctx(step=0, total=100)) == 0.0
    assert algo.unsup_weight(ctx(step=25, total=100)) == pytest.approx(50.0)
    assert algo.unsup_weight(ctx(step=60, total=100)) == pytest.approx(100.0)


def test_separate_mode_updates_bn_from_the_first_chunk_only():
    torch.manual_seed(0)
    model = Tiny().train()
    mixed, extra = torch.randn(12, 3, 6, 6), torch.randn(4, 3, 6, 6)
    ref = copy.deepcopy(model)
    logits, feats, extra_out = mixed_forward(model, mixed, 4, "separate", [extra])
    assert logits.shape == (12, 3) and feats.shape == (12, 4) and extra_out[0][0].shape == (4, 3)
    (logits.sum() + extra_out[0][0].sum()).backward()     # restoring BN buffers must not break autograd
    assert model.conv.weight.grad is not None
    first = interleave(list(mixed.split(4)), 4)[0]
    ref(first)                                             # the only pass that should move the statistics
    assert torch.allclose(model.bn.running_mean, ref.bn.running_mean)
    # rows come back in their original order
    with torch.no_grad(), frozen_bn_stats(ref):
        chunks = interleave(list(mixed.split(4)), 4)
        outs = interleave([ref(c)[0] for c in chunks], 4)
    assert torch.allclose(logits, torch.cat(outs), atol=1e-6)


def test_k_views_and_config(tiny, tmp_path):
    assert MixMatch(3, K=3).unlabeled_views == ("weak", "weak", "weak")
    cfg = tiny(tmp_path, algo="mixmatch")
    assert cfg["mixmatch"]["unsup_warmup"] == 0.4         # configs/algorithms/mixmatch.yaml
    assert build_algorithm(cfg, 7).policy is None


def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="mixmatch"))
    assert metrics["status"] == "finished"
    losses = metrics["history"][-1]["losses"]
    assert {"sup", "unsup"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
