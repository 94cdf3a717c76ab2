"""ReMixMatch: distribution alignment, rotation, the step's terms, state round trip, smoke and resume."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch, EpochContext, StepContext
from sslzoo.algorithms.remixmatch import DistributionAlignment, ReMixMatch, rotate_batch
from sslzoo.distributed import DistContext
from sslzoo.mixup import mix, sample_lambda
from tests.algo_testkit import straight_and_resumed
from tests.conftest import TinyNet

Tiny = TinyNet


def ctx(step=0, total=64) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=total, iters_per_epoch=total, num_classes=3)


def test_distribution_alignment_on_a_known_distribution():
    da = DistributionAlignment(2, window=4)
    da.set_target(torch.tensor([0, 1, 1, 1]))                      # p(y) = [0.25, 0.75]
    assert torch.allclose(da.p_target, torch.tensor([0.25, 0.75]))
    probs = torch.tensor([[0.8, 0.2], [0.8, 0.2]])                 # the model over-predicts class 0
    aligned = da(probs)                                            # p_model = [0.8, 0.2] after this push
    # p * p(y) / p~ = [0.8 * 0.25 / 0.8, 0.2 * 0.75 / 0.2] = [0.25, 0.75] (eps aside)
    assert torch.allclose(aligned, torch.tensor([[0.25, 0.75]] * 2), atol=1e-5)
    assert torch.allclose(aligned.sum(1), torch.ones(2))
    # uniform target and a model already matching it: alignment is the identity
    da_u = DistributionAlignment(2, window=4)
    p = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    assert torch.allclose(da_u(p), p, atol=1e-5)


def test_running_p_model_is_the_mean_over_the_last_window_steps():
    da = DistributionAlignment(2, window=2)
    assert torch.allclose(da.p_model(), torch.tensor([0.5, 0.5]))  # nothing seen yet
    for m in ([1.0, 0.0], [0.5, 0.5], [0.0, 1.0]):
        da.push(torch.tensor(m))
    assert int(da.count) == 3
    assert torch.allclose(da.p_model(), torch.tensor([0.25, 0.75]))   # last two only
    da.push(torch.tensor([0.0, 1.0]))
    assert torch.allclose(da.p_model(), torch.tensor([0.0, 1.0]))


def test_rotation_matches_a_per_sample_reference():
    x = torch.arange(4 * 1 * 3 * 3, dtype=torch.float32).view(4, 1, 3, 3)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate_batch(x, turns)
    for i in range(4):   # loop reference
        assert torch.equal(out[i], torch.rot90(x[i], int(turns[i]), dims=(-2, -1)))
    assert torch.equal(out[0], x[0])
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 1, 2, 3), torch.tensor([1]))


def _batch():
    torch.manual_seed(1)
    views = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    return Batch(torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0]), views, torch.arange(4),
                 torch.tensor([0, 1, 2, -1]))


def test_step_terms_weights_and_rotation_head():
    torch.manual_seed(0)
    model = Tiny().train()
    algo = ReMixMatch(3)
    head = algo.extra_modules()["rot"]
    res = algo.step(model, _batch(), ctx(step=0))
    assert set(res.losses) == {"sup", "unsup", "anchor", "rot"}
    assert all(math.isfinite(v.item()) for v in res.losses.values())
    assert res.losses["unsup"].item() == 0.0 and res.losses["anchor"].item() == 0.0   # ramp 0 at step 0
    assert res.losses["rot"].item() > 0
    assert head.in_features == model.feature_dim                # lazily sized from the features
    sum(res.losses.values()).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert model.conv.weight.grad.abs().sum() > 0
    later = algo.step(model, _batch(), ctx(step=1, total=64))   # ramp over 1/64 of 64 steps = 1 step: full
    assert later.losses["unsup"].item() > 0 and later.losses["anchor"].item() > 0
    assert int(algo.da.count) == 2


def test_a_known_feature_width_builds_the_rotation_head_up_front():
    from torch import nn
    algo = ReMixMatch(3)
    algo.bind_backbone(None)                                      # a backbone that does not say: stays lazy
    assert isinstance(algo.extra_modules()["rot"], nn.modules.lazy.LazyModuleMixin)
    algo.bind_backbone(Tiny().feature_dim)
    head = algo.extra_modules()["rot"]
    assert type(head) is nn.Linear and (head.in_features, head.out_features) == (Tiny().feature_dim, 4)
    res = algo.step(Tiny().train(), _batch(), ctx(step=0))
    assert algo.extra_modules()["rot"] is head and res.losses["rot"].item() > 0
    no_rot = ReMixMatch(3, lambda_rot=0.0)
    no_rot.bind_backbone(16)
    assert len(no_rot.extra_modules()) == 0


def test_anchor_term_is_ce_of_the_aligned_sharpened_weak_guess_on_the_first_strong_view():
    torch.manual_seed(0)
    model = Tiny().train()
    algo = ReMixMatch(3, lambda_rot=0.0, lambda_u1=1.0, unsup_warmup=0.0)
    batch = _batch()
    reference = copy.deepcopy(model)
    torch.manual_seed(7)
    res = algo.step(model, batch, ctx(step=5))
    assert "rot" not in res.losses and len(algo.extra_modules()) == 0
    # replay by hand: p -> DA (uniform target, p~ = this batch's mean) -> sharpen T=0.5
    torch.manual_seed(7)
    weak, s1, s2 = batch.u_views
    with torch.no_grad():
        p = torch.softmax(reference(weak)[0], -1)
        aligned = p * (1 / 3 + 1e-6) / (p.mean(0) + 1e-6)
        aligned = aligned / aligned.sum(1, keepdim=True)
        q = aligned ** 2 / (aligned ** 2).sum(1, keepdim=True)
    inputs = torch.cat([batch.x_l, s1, s2, weak])
    targets = torch.cat([F.one_hot(batch.y_l, 3).float(), q, q, q])
    lam = sample_lambda(16, 0.75)
    perm = torch.randperm(16)
    mixed_x, mixed_y = mix(inputs, targets, lam, perm)
    logits = reference(torch.cat([mixed_x, s1]))[0]         # concat mode: one pass, strong_1 unmixed last
    anchor = -(q * F.log_softmax(logits[16:], -1)).sum(1).mean()
    assert res.losses["anchor"].item() == pytest.approx(anchor.item(), rel=1e-5)
    unsup = -(mixed_y[4:] * F.log_softmax(logits[4:16], -1)).sum(1).mean()
    assert res.losses["unsup"].item() == pytest.approx(1.5 * unsup.item(), rel=1e-5)
    sup = -(mixed_y[:4] * F.log_softmax(logits[:4], -1)).sum(1).mean()
    assert res.losses["sup"].item() == pytest.approx(sup.item(), rel=1e-5)


def test_k_strong_views_are_declared_per_instance():
    assert ReMixMatch(3).unlabeled_views == ("weak", "strong", "strong")
    assert ReMixMatch(3, K=4).unlabeled_views == ("weak",) + ("strong",) * 4


def test_p_target_read_once_from_the_labeled_labels_without_a_prediction_pass():
    algo = ReMixMatch(3)

    def no_predictions(view):
        raise AssertionError("p(y) comes from the labels; no model pass is needed")

    epoch_ctx = EpochContext(0, 2, 3, DistContext(), no_predictions, torch.tensor([0, 0, 1, 2]))
    algo.on_epoch_start(epoch_ctx)
    algo.on_epoch_start(EpochContext(1, 2, 3, DistContext(), no_predictions, torch.tensor([1, 1, 1, 1])))
    assert torch.allclose(algo.da.p_target, torch.tensor([0.5, 0.25, 0.25]))   # read once, then state
    uniform = ReMixMatch(3, da_target="uniform")
    uniform.on_epoch_start(epoch_ctx)
    assert torch.allclose(uniform.da.p_target, torch.full((3,), 1 / 3))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    algo = ReMixMatch(3, da_window=4)
    algo.da.set_target(torch.tensor([0, 1, 1, 2]))
    algo.step(Tiny().train(), _batch(), ctx())
    state = copy.deepcopy(algo.state_dict())
    fresh = ReMixMatch(3, da_window=4)
    fresh.load_state_dict(state)
    for key in ("history", "count", "p_target", "target_set"):
        assert torch.equal(getattr(fresh.da, key), getattr(algo.da, key)), key
    for k, v in algo.extra_modules().state_dict().items():
        assert torch.equal(fresh.extra_modules().state_dict()[k], v)
    # the restored running statistics align exactly as the original would
    p = torch.softmax(torch.randn(5, 3), -1)
    assert torch.allclose(fresh.da.align(p), algo.da.align(p))


def test_one_epoch_smoke_and_exact_resume(tmp_path):
    full, resumed, a, b = straight_and_resumed(tmp_path, algo="remixmatch", epochs=2, iters_per_epoch=1)
    assert full["status"] == "finished"
    losses = full["history"][-1]["losses"]
    assert {"sup", "unsup", "anchor", "rot"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
    assert [e["losses"] for e in resumed["history"]] == [e["losses"] for e in full["history"]]
    assert int(a["da"]["count"]) == 2 and bool(a["da"]["target_set"])
    for key in ("history", "p_target"):
        assert torch.equal(a["da"][key], b["da"][key])
    for key in a["modules"]:
        assert torch.equal(a["modules"][key], b["modules"][key])
    assert json.loads((tmp_path / "split" / "run" / "metrics.json").read_text())["status"] == "finished"
