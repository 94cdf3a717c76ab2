"""CoMatch: memory smoothing on a known queue, the pseudo-label graph (edge threshold, self-loops),
the graph-contrastive loss on known embeddings, the ring-buffer queue; the step (smoothing once the
queue is full, policy input); state round trip; smoke and exact resume; a 2-process gloo run whose
ranks end with the same queue."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from sslzoo import checkpoint
from sslzoo.algorithm import Batch, StepContext, forward
from sslzoo.algorithms.comatch import (
    CoMatch,
    MemoryQueue,
    graph_contrastive_loss,
    memory_smoothed,
    one_hot,
    pseudo_label_graph,
)
from sslzoo.algorithms.simmatch import project
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.trainer import build_algorithm, train
from tests.algo_testkit import RecordingPolicy, bound, forbid_host_reads, straight_and_resumed, train_two_processes
from tests.conftest import TINY, TinyNet


def ctx(step=0) -> StepContext:
    return StepContext(epoch=0, iteration=step, step=step, total_steps=100, iters_per_epoch=10, num_classes=3)


# -- equations on known tensors -----------------------------------------------------------
def test_memory_smoothed_pseudo_label_on_a_known_queue():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                 # two remembered embeddings
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                 # ... of class 0 and class 1
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    q = memory_smoothed(p, z, feats, probs, alpha=0.9, temperature=1.0)
    e = math.e
    a0 = torch.tensor([e, 1.0]) / (e + 1)                          # softmax(z . z_k / t) of row 0
    a1 = torch.softmax(torch.tensor([0.6, 0.8]), 0)
    assert torch.allclose(q[0], 0.9 * p[0] + 0.1 * a0)
    assert torch.allclose(q[1], 0.9 * p[1] + 0.1 * a1)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert torch.equal(memory_smoothed(p, z, feats, probs, alpha=1.0, temperature=0.2), p)
    sharper = memory_smoothed(p, z, feats, probs, alpha=0.0, temperature=0.1)   # t divides the similarities
    assert sharper[0, 0] > a0[0]


def test_pseudo_label_graph_thresholds_edges_and_keeps_self_loops():
    q = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    # q q^T = [[1, .9, 0, .5], [.9, .82, .1, .5], [0, .1, 1, .5], [.5, .5, .5, .5]]; diagonal -> 1
    w = pseudo_label_graph(q, threshold=0.8)
    expected = torch.tensor([[1.0, 0.9, 0.0, 0.0],
                             [0.9, 1.0, 0.0, 0.0],      # self-loop 1 replaces q_1 . q_1 = 0.82
                             [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])     # q_3 . q_3 = 0.5 < T: the self-loop still stays
    assert torch.allclose(w, expected / expected.sum(1, keepdim=True))
    # threshold 0: every edge, rows still normalised
    w0 = pseudo_label_graph(q, threshold=0.0)
    dense = q @ q.t()
    dense.fill_diagonal_(1.0)
    assert torch.allclose(w0, dense / dense.sum(1, keepdim=True))
    assert torch.allclose(pseudo_label_graph(q, 1.0), torch.eye(4))   # only self-loops


def test_graph_contrastive_loss_on_known_embeddings():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = math.e
    # identity graph: each row's target is its own other view: -log(e / (e + 1))
    assert graph_contrastive_loss(z, z, torch.eye(2), 1.0).item() == pytest.approx(math.log(1 + 1 / e))
    # both samples connected with weight 1/2: -(0.5 log(e/(e+1)) + 0.5 log(1/(e+1)))
    half = torch.full((2, 2), 0.5)
    assert graph_contrastive_loss(z, z, half, 1.0).item() == pytest.approx(math.log(1 + e) - 0.5)
    # the temperature divides the similarities: t = 0.5 -> -log(e^2 / (e^2 + 1))
    assert graph_contrastive_loss(z, z, torch.eye(2), 0.5).item() == pytest.approx(math.log(1 + e ** -2))
    # gradient reaches both strong views
    z0, z1 = z.clone().requires_grad_(), z.flip(0).clone().requires_grad_()
    graph_contrastive_loss(z0, z1, torch.eye(2), 0.2).backward()
    assert z0.grad.abs().sum() > 0 and z1.grad.abs().sum() > 0


def test_ring_buffer_queue_wraps_with_device_pointers():
    queue = MemoryQueue(5, 1, 2)
    rows = lambda a, b: torch.arange(a, b, dtype=torch.float32)[:, None]   # noqa: E731
    queue.push(rows(0, 3), one_hot(torch.tensor([0, 1, 0]), 2))
    assert queue.ptr.item() == 3 and not bool(queue.full)
    assert queue.feats[:, 0].tolist() == [0, 1, 2, 0, 0]
    queue.push(rows(3, 6), one_hot(torch.tensor([1, 1, 1]), 2))           # slots 3, 4, then 0
    assert queue.ptr.item() == 1 and bool(queue.full)
    assert queue.feats[:, 0].tolist() == [5, 1, 2, 3, 4]
    assert queue.probs[:, 1].tolist() == [1, 1, 0, 1, 1]
    queue.push(rows(10, 17), torch.zeros(7, 2))                             # more than the queue holds
    assert queue.ptr.item() == (1 + 7) % 5
    assert queue.feats[:, 0].tolist() == [14, 15, 16, 12, 13]              # the newest 5; the newest before ptr
    assert queue.ptr.dtype == torch.long and queue.ptr.dim() == 0
    with pytest.raises(ValueError, match="size"):
        MemoryQueue(0, 1, 2)


def test_one_hot_by_scatter():
    assert torch.equal(one_hot(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))


# -- the step -----------------------------------------------------------------------------
def _batch(seed=1, n=4):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 6, 6, generator=g) for _ in range(3)]
    return Batch(torch.randn(n, 3, 6, 6, generator=g), torch.tensor([0, 1, 2, 0]), views, torch.arange(n),
                 torch.tensor([0, 1, 2, -1]), l_index=torch.arange(n))


def _algo(policy=None, **kw):
    torch.manual_seed(0)
    return bound(CoMatch(3, policy if policy is not None else RecordingPolicy(), **kw), TinyNet().feature_dim)


def test_queue_holds_queue_batch_steps_and_smoothing_starts_when_it_is_full():
    algo = _algo(queue_batch=2)
    model = TinyNet().train()
    head = algo.extra_modules()["proj"]
    assert algo.queue is None
    # steps 0 and 1 fill the queue (2 steps x (4 labeled + 4 unlabeled)); until then q = DA(p)
    for step in range(2):
        batch = _batch(seed=step)
        out = forward(model, batch)
        da = copy.deepcopy(algo.da)
        algo.losses(out, batch, ctx(step))
        assert algo.queue.size == 2 * 8
        p = da(torch.softmax(out.u_logits[0].detach(), -1))
        assert torch.allclose(algo.policy.seen[-1], p, atol=1e-6)
    assert bool(algo.queue.full) and algo.queue.ptr.item() == 0
    # the queue holds [weak unlabeled (z, aligned p), labeled (z, onehot y)] per step, in order
    assert torch.allclose(algo.queue.feats[12:], project(head, out.feats_l.detach()), atol=1e-6)
    assert torch.equal(algo.queue.probs[12:], one_hot(batch.y_l, 3))
    assert torch.allclose(algo.queue.probs[8:12], p, atol=1e-6)
    # step 2: memory smoothing with the queue as it was before this step's push
    batch = _batch(seed=2)
    out = forward(model, batch)
    feats, probs, da = algo.queue.feats.clone(), algo.queue.probs.clone(), copy.deepcopy(algo.da)
    res = algo.losses(out, batch, ctx(2))
    p = da(torch.softmax(out.u_logits[0].detach(), -1))
    q = memory_smoothed(p, project(head, out.u_feats[0].detach()), feats, probs, 0.9, 0.2)
    assert torch.allclose(algo.policy.seen[-1], q, atol=1e-6) and not torch.allclose(q, p)
    unsup = -(q * F.log_softmax(out.u_logits[1], -1)).sum(1).mean()
    assert res.losses["unsup"].item() == pytest.approx(unsup.item(), rel=1e-5)
    z = project(head, torch.cat([out.u_feats[1], out.u_feats[2]]))
    contrast = graph_contrastive_loss(z[:4], z[4:], pseudo_label_graph(q, 0.8), 0.2)
    assert res.losses["contrast"].item() == pytest.approx(contrast.item(), rel=1e-5)
    assert 1.0 <= res.stats["graph_edges"].item() <= 4.0
    sum(res.losses.values()).backward()
    assert head[2].weight.grad.abs().sum() > 0 and model.conv.weight.grad.abs().sum() > 0


def test_the_threshold_goes_through_the_policy():
    model = TinyNet().train()
    batch = _batch()
    out = forward(model, batch)
    strict = _algo(build_policy("fixed:1.0")).losses(out, batch, ctx())
    loose = _algo(build_policy("all")).losses(out, batch, ctx())
    assert strict.stats["mask_ratio"].item() == 0.0 and strict.losses["unsup"].item() == 0.0
    assert loose.stats["mask_ratio"].item() == 1.0 and loose.losses["unsup"].item() > 0
    assert torch.equal(strict.losses["contrast"], loose.losses["contrast"])   # the graph ignores the mask


def test_bad_settings_are_rejected(tiny, tmp_path):
    for kw, word in [({"temperature": 0}, "temperature"), ({"smoothing_alpha": -0.1}, "smoothing_alpha"),
                     ({"contrast_threshold": 1.5}, "contrast_threshold"), ({"queue_batch": 0}, "queue_batch"),
                     ({"da_window": -1}, "da_window"), ({"proj_dim": 0}, "proj_dim"),
                     ({"unsup_norm": "all"}, "unsup_norm")]:
        with pytest.raises(ValueError, match=word):
            CoMatch(3, **kw)
    with pytest.raises(SSLZooError, match="feature_dim"):
        CoMatch(3).bind_backbone(None)
    assert build_algorithm(tiny(tmp_path, algo="comatch"), 7).policy.threshold == 0.95
    assert build_algorithm(tiny(tmp_path, algo="comatch", policy="fixed:0.6"), 7).policy.threshold == 0.6
    with pytest.raises(SSLZooError, match="queue_batch"):
        build_algorithm(tiny(tmp_path, algo="comatch", comatch={"queue_batch": 0}), 7)


def test_state_dict_round_trip():
    algo = _algo(queue_batch=3)
    assert "queue" not in algo.state_dict()                       # sized at the first step
    model = TinyNet().train()
    for step in range(4):                                        # wraps: ptr = 4 x 8 mod 24 = 8
        algo.losses(forward(model, _batch(seed=step)), _batch(seed=step), ctx(step))
    state = copy.deepcopy(algo.state_dict())
    fresh = _algo(queue_batch=3)
    fresh.load_state_dict(state)
    assert fresh.queue.size == algo.queue.size == 24 and fresh.queue.ptr.item() == 8
    for key, value in algo.queue.state_dict().items():
        assert torch.equal(fresh.queue.state_dict()[key], value), key
    for key, value in algo.da.state_dict().items():
        assert torch.equal(fresh.da.state_dict()[key], value), key
    for key, value in algo.extra_modules().state_dict().items():
        assert torch.equal(fresh.extra_modules().state_dict()[key], value), key
    batch = _batch(seed=9)
    a, b = algo.losses(forward(model, batch), batch, ctx(4)), fresh.losses(forward(model, batch), batch, ctx(4))
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses)
    assert torch.equal(algo.queue.feats, fresh.queue.feats) and torch.equal(algo.queue.ptr, fresh.queue.ptr)


@pytest.mark.parametrize("mode", ["concat", "separate"])
def test_step_reads_nothing_on_the_host(monkeypatch, mode):
    algo = _algo(build_policy("fixed:0.5"), queue_batch=1)
    model, batch = TinyNet().train(), _batch()
    c = ctx()
    c.forward_mode = mode
    with monkeypatch.context() as m:
        forbid_host_reads(m)
        for _ in range(3):                              # queue sized, filled, then smoothing and wrap-around
            res = algo.step(model, batch, c)
            total = sum(res.losses.values())
            total.backward()
    assert set(res.losses) == {"sup", "unsup", "contrast"} and torch.isfinite(total)
    assert bool(algo.queue.full)


def test_step_under_bf16_autocast():
    """The GPU path runs under autocast: bf16 features meet the float32 queue and the fp32 similarity code."""
    algo = _algo(build_policy("fixed:0.3"), queue_batch=1)
    model, batch = TinyNet().train(), _batch()
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = algo.step(model, batch, ctx())
        sum(res.losses.values()).backward()
    assert all(torch.isfinite(v) for v in res.losses.values()) and res.losses["contrast"].item() > 0
    assert algo.queue.feats.dtype == torch.float32 and bool(algo.queue.full)


# -- runs -------------------------------------------------------------------------------------
def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="comatch", policy="fixed:0.3"))
    assert metrics["status"] == "finished"
    entry = metrics["history"][-1]
    assert {"sup", "unsup", "contrast"} <= set(entry["losses"])
    assert all(math.isfinite(v) for v in entry["losses"].values()) and entry["losses"]["contrast"] > 0
    assert entry["stats"]["graph_edges"] >= 1.0


def test_two_epochs_equal_one_epoch_resume_one_epoch(tmp_path):
    full, resumed, a, b = straight_and_resumed(tmp_path, algo="comatch", epochs=2, policy="fixed:0.3",
                                               comatch={"queue_batch": 2})
    assert [e["losses"] for e in resumed["history"]] == [e["losses"] for e in full["history"]]
    assert [e["stats"] for e in resumed["history"]] == [e["stats"] for e in full["history"]]
    per_step = TINY["batch_size"] * (1 + TINY["mu"])
    assert a["queue"]["feats"].shape[0] == 2 * per_step and bool(a["queue"]["full"])
    assert a["queue"]["ptr"].item() == (2 * TINY["iters_per_epoch"] * per_step) % (2 * per_step)
    for part in ("queue", "da", "modules"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert json.loads((tmp_path / "split" / "run" / "metrics.json").read_text())["status"] == "finished"


def test_two_process_gloo_run_ends_with_the_same_queue_on_every_rank(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**TINY, "algo": "comatch", "policy": "fixed:0.3", "epochs": 2,
                                      "iters_per_epoch": 2, "device": "cpu", "comatch": {"queue_batch": 3}}))
    out, dump = tmp_path / "run", tmp_path / "dump"
    train_two_processes(config, out, dump)
    ranks = [checkpoint.load(dump / f"rank{k}.pt")["algorithm"] for k in (0, 1)]
    for key in ("feats", "probs", "ptr", "full"):
        assert torch.equal(ranks[0]["queue"][key], ranks[1]["queue"][key]), f"queue.{key} differs between ranks"
    for key in ranks[0]["da"]:
        assert torch.equal(ranks[0]["da"][key], ranks[1]["da"][key]), f"da.{key} differs between ranks"
    # the queue holds 3 steps of BOTH ranks' entries: 3 x (8 labeled + 8 unlabeled) x 2
    per_step = TINY["batch_size"] * (1 + TINY["mu"]) * 2
    assert ranks[0]["queue"]["feats"].shape[0] == 3 * per_step
    assert ranks[0]["queue"]["ptr"].item() == (4 * per_step) % (3 * per_step)
