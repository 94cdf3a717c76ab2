"""SimMatch: instance similarity, unfolding/aggregation, in-loss and bank update on hand-checkable
tensors; the step (warm-up, propagation, policy input, EMA bank source); state round trip; smoke and
exact resume; a 2-process gloo run whose ranks end with the same bank."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from sslzoo import checkpoint
from sslzoo.algorithm import Batch, EpochContext, StepContext, forward
from sslzoo.algorithms.simmatch import (
    SimMatch,
    aggregate,
    in_loss,
    instance_similarity,
    last_occurrence,
    project,
    propagate,
    unfold,
    update_bank,
)
from sslzoo.distributed import DistContext
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.trainer import build_algorithm, train
from tests.algo_testkit import RecordingPolicy, bound, forbid_host_reads, straight_and_resumed, train_two_processes
from tests.conftest import TINY, TinyNet


def ctx(epoch=0, step=0, model=None, ema=None) -> StepContext:
    return StepContext(epoch=epoch, iteration=step, step=step, total_steps=100, iters_per_epoch=10,
                       num_classes=3, model=model, ema_model=ema)


# -- equations on known tensors -----------------------------------------------------------
def test_instance_similarity_on_known_vectors():
    bank = torch.eye(3)                                   # k_j = e_j
    q = instance_similarity(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]), bank, temperature=0.5)
    e2 = math.exp(2.0)
    assert torch.allclose(q[0], torch.tensor([e2, 1.0, 1.0]) / (e2 + 2))
    row = torch.exp(torch.tensor([0.0, 1.2, 1.6]))
    assert torch.allclose(q[1], row / row.sum())


def test_label_propagation_on_a_known_bank():
    labels = torch.tensor([0, 1, 1])                      # three bank slots: class 0, 1, 1
    p = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    q = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    # unfolding: q_j p[y(k_j)], normalised: [0.16, 0.06, 0.10] / 0.32
    assert torch.allclose(unfold(q, p, labels), torch.tensor([[0.5, 0.1875, 0.3125], [0.6, 0.2, 0.2]]))
    # aggregation: q summed per slot label
    assert torch.allclose(aggregate(q, labels, 2), torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    p_hat, q_hat = propagate(p, q, labels, alpha=0.9, mode="smooth")
    assert torch.allclose(p_hat, torch.tensor([[0.74, 0.26], [0.51, 0.49]]))   # 0.9 p + 0.1 q_agg
    assert torch.allclose(q_hat, unfold(q, p, labels))
    p_prod, _ = propagate(p, q, labels, mode="product")                          # p q_agg, normalised
    assert torch.allclose(p_prod, torch.tensor([[0.5, 0.5], [0.6, 0.4]]))
    p_none, _ = propagate(p, q, labels, alpha=1.0)                                # alpha 1: no aggregation
    assert torch.equal(p_none, p)
    with pytest.raises(ValueError, match="aggregation"):
        propagate(p, q, labels, mode="sum")


def test_in_loss_on_known_vectors_and_its_gradient():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_s = torch.tensor([[1.0, 0.0]], requires_grad=True)
    e = math.e
    # q^ = [1, 0]: -log(e / (e + 1));  q^ = [0.5, 0.5]: log(1 + e) - 0.5   (t = 1)
    assert in_loss(z_s, bank, torch.tensor([[1.0, 0.0]]), 1.0).item() == pytest.approx(math.log(1 + 1 / e))
    loss = in_loss(z_s, bank, torch.tensor([[0.5, 0.5]]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + e) - 0.5)
    loss.backward()
    # d/dz of -sum q^ log softmax(z.k) = sum_j (softmax_j - q^_j) k_j
    s = torch.tensor([e / (e + 1), 1 / (e + 1)])
    assert torch.allclose(z_s.grad, ((s - 0.5)[:, None] * bank).sum(0, keepdim=True))
    # the temperature divides the similarities
    assert in_loss(z_s, bank, torch.tensor([[1.0, 0.0]]), 0.5).item() == pytest.approx(math.log(1 + e ** -2))


def test_last_occurrence_of_repeated_indices():
    assert last_occurrence(torch.tensor([3, 1, 3, 2, 1])).tolist() == [2, 4, 2, 3, 4]
    assert last_occurrence(torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]


def test_bank_update_by_index():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 0])
    z = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    new, new_labels = update_bank(bank, labels, z, torch.tensor([1, 2]), torch.tensor([2, 0]), momentum=0.0)
    assert torch.equal(new[2], z[0]) and torch.equal(new[0], z[1])                 # replaced
    assert torch.equal(new[1], bank[1]) and torch.equal(new[3], bank[3])           # untouched
    assert new_labels.tolist() == [2, 0, 1, 0]
    assert torch.equal(bank[2], torch.tensor([1.0, 0.0]))                          # out of place
    # EMA of the slot, renormalised: normalize(0.5 e1 + 0.5 e2)
    ema, _ = update_bank(bank, labels, z[:1], torch.tensor([1]), torch.tensor([0]), momentum=0.5)
    assert torch.allclose(ema[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(ema[0].norm(), torch.tensor(1.0))
    # a slot named twice in one (gathered) batch is written once, from its last occurrence
    dup, dup_labels = update_bank(bank, labels, torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([1, 2]),
                                  torch.tensor([3, 3]), momentum=0.5)
    assert torch.allclose(dup[3], F.normalize(0.5 * bank[3] + 0.5 * torch.tensor([0.6, 0.8]), dim=0))
    assert dup_labels[3].item() == 2


# -- the step -----------------------------------------------------------------------------
def _batch(n=4, pool=6):
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(n, 3, 6, 6, generator=g) for _ in range(2)]
    return Batch(torch.randn(n, 3, 6, 6, generator=g), torch.tensor([0, 1, 2, 0])[:n], views, torch.arange(n),
                 torch.tensor([0, 1, 2, -1])[:n], l_index=torch.tensor([4, 1, 5, 0])[:n])


def _algo(policy=None, **kw):
    torch.manual_seed(0)
    return bound(SimMatch(3, policy if policy is not None else RecordingPolicy(), **kw), TinyNet().feature_dim)


def test_setup_builds_a_unit_bank_from_the_global_generator():
    a, b = _algo(), _algo()
    assert a.bank.shape == (6, 128) and torch.allclose(a.bank.norm(dim=1), torch.ones(6))
    assert torch.equal(a.bank, b.bank)                                      # seeded: deterministic
    torch.manual_seed(1)
    c = SimMatch(3, RecordingPolicy())
    c.bind_backbone(4)
    c.setup(10, torch.device("cpu"), num_labeled=6)
    assert not torch.equal(a.bank, c.bank)
    assert list(a.extra_modules()["proj"][0].weight.shape) == [4, 4]        # Linear(d, d) - ReLU - Linear(d, 128)
    assert list(a.extra_modules()["proj"][2].weight.shape) == [128, 4]
    with pytest.raises(SSLZooError, match="labeled"):
        SimMatch(3).setup(10, torch.device("cpu"), num_labeled=0)
    with pytest.raises(SSLZooError, match="feature_dim"):
        SimMatch(3).bind_backbone(None)


def test_slot_labels_are_read_once_from_the_labeled_set():
    algo = _algo()
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    algo.on_epoch_start(EpochContext(0, 2, 3, DistContext(), None, targets))
    assert algo.bank_labels.tolist() == targets.tolist() and bool(algo.labels_read)
    algo.on_epoch_start(EpochContext(1, 2, 3, DistContext(), None, torch.zeros(6, dtype=torch.long)))
    assert algo.bank_labels.tolist() == targets.tolist()                    # then they are state


def test_warm_up_epoch_is_fixmatch_with_aligned_soft_targets_and_fills_the_bank():
    algo = _algo(bank_momentum=0.0)
    model = TinyNet().train()
    batch = _batch()
    bank0 = algo.bank.clone()
    out = forward(model, batch)
    res = algo.losses(out, batch, ctx(epoch=0))
    assert res.losses["in"].item() == 0.0
    # replay: p aligned to uniform by this batch's mean (window includes the step), soft CE on strong
    p = torch.softmax(out.u_logits[0].detach(), -1)
    aligned = p * (1 / 3 + 1e-6) / (p.mean(0) + 1e-6)
    aligned = aligned / aligned.sum(1, keepdim=True)
    assert torch.allclose(algo.policy.seen[0], aligned, atol=1e-6)
    unsup = -(aligned * F.log_softmax(out.u_logits[1], -1)).sum(1).mean()
    assert res.losses["unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    # the bank: rows at l_index replaced (m = 0) by the projected labeled features, others untouched
    z_l = project(algo.extra_modules()["proj"], out.feats_l.detach())
    assert torch.allclose(algo.bank[batch.l_index], z_l)
    assert algo.bank_labels[batch.l_index].tolist() == batch.y_l.tolist()
    untouched = torch.tensor([2, 3])
    assert torch.equal(algo.bank[untouched], bank0[untouched])


def test_after_warm_up_labels_propagate_and_the_in_loss_trains_the_head():
    algo = _algo()
    model = TinyNet().train()
    batch = _batch()
    head = algo.extra_modules()["proj"]
    algo.losses(forward(model, batch), batch, ctx(epoch=0))                  # bank written, DA pushed once
    bank, labels = algo.bank.clone(), algo.bank_labels.clone()
    da_state = copy.deepcopy(algo.da.state_dict())
    out = forward(model, batch)
    res = algo.losses(out, batch, ctx(epoch=1, step=1))
    # replay with the bank as it was before this step's update
    from sslzoo.algorithms.remixmatch import DistributionAlignment
    da = DistributionAlignment(3, 32)
    da.load_state_dict(da_state)
    p = da(torch.softmax(out.u_logits[0].detach(), -1))
    z_w = project(head, out.u_feats[0].detach())
    q = instance_similarity(z_w, bank, 0.1)
    p_hat, q_hat = propagate(p, q, labels, 0.9, "smooth")
    assert torch.allclose(algo.policy.seen[-1], p_hat, atol=1e-6)          # the policy sees p^
    assert not torch.allclose(p_hat, p)
    z_s = project(head, out.u_feats[1])
    expected_in = -(q_hat * F.log_softmax(z_s @ bank.t() / 0.1, -1)).sum(1).mean()
    assert res.losses["in"].item() == pytest.approx(expected_in.item(), rel=1e-5)
    assert res.losses["in"].item() > 0
    unsup = -(p_hat * F.log_softmax(out.u_logits[1], -1)).sum(1).mean()
    assert res.losses["unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    sum(res.losses.values()).backward()
    assert head[2].weight.grad.abs().sum() > 0 and model.conv.weight.grad.abs().sum() > 0
    # bank EMA (m = 0.7) on the updated slots
    z_l = project(head, out.feats_l.detach())
    assert torch.allclose(algo.bank[batch.l_index], F.normalize(0.7 * bank[batch.l_index] + 0.3 * z_l, dim=1),
                          atol=1e-6)


def test_the_threshold_goes_through_the_policy():
    strict, loose = _algo(build_policy("fixed:1.0")), _algo(build_policy("all"))
    model = TinyNet().train()
    batch = _batch()
    out = forward(model, batch)
    a = strict.losses(out, batch, ctx())
    b = loose.losses(out, batch, ctx())
    assert a.stats["mask_ratio"].item() == 0.0 and a.losses["unsup"].item() == 0.0
    assert b.stats["mask_ratio"].item() == 1.0 and b.losses["unsup"].item() > 0


def test_bank_from_the_ema_model_in_train_mode_with_frozen_statistics():
    algo = _algo(bank_source="ema", bank_momentum=0.0)
    model, ema = TinyNet().train(), TinyNet().eval()
    batch = _batch()
    stats = ema.bn.running_mean.clone()
    algo.losses(forward(model, batch), batch, ctx(model=model, ema=ema))
    with torch.no_grad():
        ema.train()
        reference = TinyNet()
        reference.load_state_dict(ema.state_dict())
        feats = reference.train()(batch.x_l)[1]                              # batch statistics
    assert torch.allclose(algo.bank[batch.l_index], project(algo.extra_modules()["proj"], feats), atol=1e-6)
    assert torch.equal(ema.bn.running_mean, stats)                          # statistics frozen
    ema.eval()
    with pytest.raises(SSLZooError, match="EMA"):
        _algo(bank_source="ema").losses(forward(model, batch), batch, ctx())


def test_bad_settings_are_rejected(tiny, tmp_path):
    for kw, word in [({"temperature": 0}, "temperature"), ({"smoothing_alpha": 1.5}, "smoothing_alpha"),
                     ({"aggregation": "mean"}, "aggregation"), ({"bank_source": "student"}, "bank_source"),
                     ({"bank_momentum": 1.0}, "bank_momentum"), ({"da_window": -1}, "da_window"),
                     ({"proj_dim": 0}, "proj_dim"), ({"warmup_epochs": -1}, "warmup_epochs")]:
        with pytest.raises(ValueError, match=word):
            SimMatch(3, **kw)
    assert build_algorithm(tiny(tmp_path, algo="simmatch"), 7).policy.threshold == 0.95
    assert build_algorithm(tiny(tmp_path, algo="simmatch", policy="fixed:0.7"), 7).policy.threshold == 0.7
    assert type(build_algorithm(tiny(tmp_path, algo="simmatch", policy="flexmatch"), 7).policy).__name__ \
        != "FixedThreshold"
    with pytest.raises(SSLZooError, match="bank_source"):
        build_algorithm(tiny(tmp_path, algo="simmatch", simmatch={"bank_source": "x"}), 7)


def test_state_dict_round_trip():
    algo = _algo()
    model = TinyNet().train()
    batch = _batch()
    algo.on_epoch_start(EpochContext(0, 2, 3, DistContext(), None, torch.tensor([0, 1, 2, 0, 1, 2])))
    for epoch in (0, 1):
        algo.losses(forward(model, batch), batch, ctx(epoch=epoch))
    state = copy.deepcopy(algo.state_dict())
    fresh = _algo()
    fresh.load_state_dict(state)
    for key in ("bank", "bank_labels", "labels_read"):
        assert torch.equal(getattr(fresh, key), getattr(algo, key)), key
    for key, value in algo.da.state_dict().items():
        assert torch.equal(fresh.da.state_dict()[key], value), key
    for key, value in algo.extra_modules().state_dict().items():
        assert torch.equal(fresh.extra_modules().state_dict()[key], value), key
    # the restored algorithm continues exactly as the original
    a = algo.losses(forward(model, batch), batch, ctx(epoch=1))
    b = fresh.losses(forward(model, batch), batch, ctx(epoch=1))
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses)
    assert torch.equal(algo.bank, fresh.bank)


@pytest.mark.parametrize("mode", ["concat", "separate"])
def test_step_reads_nothing_on_the_host(monkeypatch, mode):
    algo = _algo(build_policy("fixed:0.5"))
    model, batch = TinyNet().train(), _batch()
    batch.l_index = torch.tensor([4, 1, 4, 0])                            # a repeated slot too
    c = ctx(epoch=1)
    c.forward_mode = mode
    with monkeypatch.context() as m:
        forbid_host_reads(m)
        for _ in range(2):                                                # propagation and the bank update
            res = algo.step(model, batch, c)
            total = sum(res.losses.values())
            total.backward()
    assert set(res.losses) == {"sup", "unsup", "in"} and torch.isfinite(total)


def test_step_under_bf16_autocast():
    """The GPU path runs under autocast: bf16 features meet the float32 bank and the fp32 similarity code."""
    for source in ("train", "ema"):
        algo = _algo(build_policy("fixed:0.3"), bank_source=source)
        model, batch = TinyNet().train(), _batch()
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                res = algo.step(model, batch, ctx(epoch=1, ema=TinyNet()))
            sum(res.losses.values()).backward()
        assert all(torch.isfinite(v) for v in res.losses.values()) and res.losses["in"].item() > 0
        assert algo.bank.dtype == torch.float32


# -- runs -------------------------------------------------------------------------------------
def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="simmatch", policy="fixed:0.3"))
    assert metrics["status"] == "finished"
    losses = metrics["history"][-1]["losses"]
    assert {"sup", "unsup", "in"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
    assert losses["in"] == 0.0                                                # epoch 1 is the warm-up


def test_two_epochs_equal_one_epoch_resume_one_epoch(tmp_path):
    full, resumed, a, b = straight_and_resumed(tmp_path, algo="simmatch", epochs=2, policy="fixed:0.3")
    assert full["history"][1]["losses"]["in"] > 0                             # propagation in epoch 2
    assert [e["losses"] for e in resumed["history"]] == [e["losses"] for e in full["history"]]
    assert [e["test_acc"] for e in resumed["history"]] == [e["test_acc"] for e in full["history"]]
    assert a["bank"].shape == (TINY["labels"], 128) and bool(a["labels_read"])
    for key in ("bank", "bank_labels"):
        assert torch.equal(a[key], b[key]), key
    for part in ("da", "modules"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert json.loads((tmp_path / "split" / "run" / "metrics.json").read_text())["status"] == "finished"


def test_two_process_gloo_run_ends_with_the_same_bank_on_every_rank(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**TINY, "algo": "simmatch", "policy": "fixed:0.3", "epochs": 2,
                                      "iters_per_epoch": 2, "device": "cpu"}))
    out, dump = tmp_path / "run", tmp_path / "dump"
    train_two_processes(config, out, dump)
    ranks = [checkpoint.load(dump / f"rank{k}.pt")["algorithm"] for k in (0, 1)]
    for key in ("bank", "bank_labels"):
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between ranks"
    for key in ranks[0]["modules"]:
        assert torch.equal(ranks[0]["modules"][key], ranks[1]["modules"][key]), key
    # unit rows; slot labels are the labeled set's (read at the first epoch start, then written)
    assert torch.allclose(ranks[0]["bank"].norm(dim=1), torch.ones(TINY["labels"]))
    assert bool(ranks[0]["labels_read"]) and bool(ranks[1]["labels_read"])
    assert torch.bincount(ranks[0]["bank_labels"], minlength=7).tolist() == [TINY["labels"] // 7] * 7


def test_an_unbound_projection_head_is_a_clear_error_naming_the_algorithm():
    from sslzoo.algorithms.comatch import CoMatch
    for cls in (SimMatch, CoMatch):
        algo = cls(3, RecordingPolicy())
        with pytest.raises(SSLZooError, match=f"{cls.__name__}'s projection head is built by bind_backbone"):
            algo._head()
