"""FreeMatch's self-adaptive thresholds (EMAs) and fairness term on hand-checkable tensors."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, PolicyInput, StepContext
from sslzoo.algorithms.freematch import FreeMatch, fairness_loss
from sslzoo.errors import SSLZooError
from sslzoo.policies import build_policy
from sslzoo.policies.freematch import FreeMatchThreshold
from tests.ddp_global_worker import assert_policy_matches_one_process

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=4)
PROBS = torch.tensor([[0.7, 0.1, 0.1, 0.1],
                      [0.1, 0.5, 0.2, 0.2],
                      [0.3, 0.25, 0.25, 0.2]])


def _policy(**kw) -> FreeMatchThreshold:
    p = FreeMatchThreshold(**kw)
    p.setup(4, 100)
    return p


def test_initial_state_is_uniform_and_trusts_everything():
    p = _policy()
    assert p.global_threshold.item() == pytest.approx(0.25)
    assert torch.allclose(p.class_mean, torch.full((4,), 0.25))
    assert torch.allclose(p.label_hist, torch.full((4,), 0.25))
    assert torch.allclose(p.thresholds(), torch.full((4,), 0.25))      # max p >= 1/C always holds
    assert p.weights(PolicyInput(torch.full((2, 4), 0.25)), CTX).tolist() == [1.0, 1.0]


def test_one_update_by_hand_momentum_half():
    p = _policy(momentum=0.5)
    w = p(PolicyInput(PROBS), CTX)
    # mean max confidence (0.7 + 0.5 + 0.3) / 3 = 0.5  ->  tau = 0.5 * 0.25 + 0.5 * 0.5
    assert p.global_threshold.item() == pytest.approx(0.375)
    # batch mean per class [0.3667, 0.2833, 0.1833, 0.1667] -> p~ = (p~0 + mean) / 2
    batch_mean = torch.tensor([1.1, 0.85, 0.55, 0.5]) / 3
    assert torch.allclose(p.class_mean, (0.25 + batch_mean) / 2)
    # pseudo-label histogram [2, 1, 0, 0] / 3
    assert torch.allclose(p.label_hist, (0.25 + torch.tensor([2 / 3, 1 / 3, 0, 0])) / 2)
    # local thresholds: MaxNorm(p~) * tau, tau_t(0) = 0.375 (class 0 has the max p~)
    expected = p.class_mean / p.class_mean.max() * 0.375
    assert torch.allclose(p.thresholds(), expected)
    t1 = 0.375 * (0.25 + 0.85 / 3) / (0.25 + 1.1 / 3)                   # 0.32432 for class 1
    assert p.thresholds()[1].item() == pytest.approx(t1)
    # mask after the update: 0.7 >= 0.375, 0.5 >= 0.324, 0.3 < 0.375
    assert w.tolist() == [1.0, 1.0, 0.0]


def test_ema_with_default_momentum_matches_loop_reference():
    torch.manual_seed(0)
    batches = [torch.softmax(torch.randn(5, 4) * 2, dim=1) for _ in range(4)]
    p = _policy()
    tau, pm = 0.25, [0.25] * 4
    for b in batches:
        w = p(PolicyInput(b), CTX)
        rows = b.tolist()
        tau = 0.999 * tau + 0.001 * sum(max(r) for r in rows) / len(rows)
        pm = [0.999 * pm[c] + 0.001 * sum(r[c] for r in rows) / len(rows) for c in range(4)]
        ref = [1.0 if max(r) >= pm[r.index(max(r))] / max(pm) * tau else 0.0 for r in rows]
        assert w.tolist() == ref
    assert p.global_threshold.item() == pytest.approx(tau, rel=1e-6)
    assert p.class_mean.tolist() == pytest.approx(pm, rel=1e-6)


def test_update_happens_before_the_mask():
    """tau_t includes batch t: a confident batch raises the bar for itself."""
    p = _policy(momentum=0.0)                       # tau_t = this batch's mean confidence
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.5, 0.2, 0.2, 0.1]])
    assert p(PolicyInput(probs), CTX).tolist() == [1.0, 0.0]            # tau = 0.7


def test_two_process_gloo_run_equals_one_process_with_the_doubled_batch():
    """Real gloo collectives: 2 processes with their halves of each batch take the 1-process decisions, bit
    for bit, and end in its state (the EMAs are updated from every rank's gathered probabilities;
    tests/ddp_global_worker.py)."""
    assert_policy_matches_one_process("freematch")


def test_state_dict_round_trip_and_spec():
    p = _policy()
    p(PolicyInput(PROBS), CTX)
    q = build_policy("freematch:0.999")
    q.setup(4, 100)
    q.load_state_dict(p.state_dict())
    assert set(p.state_dict()) == {"global_threshold", "class_mean", "label_hist"}
    for key, value in p.state_dict().items():
        assert torch.equal(getattr(q, key), value)
    assert build_policy("freematch:0.9").momentum == 0.9


def _fairness_reference(logits_s, selected, class_mean, label_hist) -> float:
    """Loop-based reference of Eq. (9)."""
    probs = [torch.softmax(l, 0).tolist() for l, s in zip(logits_s, selected) if s]
    C, n = len(class_mean), len(probs)
    hist = [sum(1 for p in probs if max(range(C), key=lambda c: p[c]) == k) / n for k in range(C)]
    mean = [sum(p[k] for p in probs) / n for k in range(C)]
    a = [class_mean[k] / label_hist[k] for k in range(C)]
    a = [x / sum(a) for x in a]
    b = [mean[k] / hist[k] if hist[k] > 0 else 0.0 for k in range(C)]
    b = [x / sum(b) for x in b]
    return sum(a[k] * math.log(b[k] + 1e-12) for k in range(C))


def test_fairness_loss_matches_reference_and_sign():
    logits_s = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.5, 0.5, 0.0], [1.0, 0.2, 0.0, 0.3],
                             [0.0, 0.0, 0.0, 3.0]], requires_grad=True)
    selected = torch.tensor([True, True, True, False])
    class_mean = torch.tensor([0.4, 0.3, 0.2, 0.1])
    label_hist = torch.tensor([0.5, 0.25, 0.125, 0.125])
    loss = fairness_loss(logits_s, selected, class_mean, label_hist)
    ref = _fairness_reference(logits_s.detach(), selected.tolist(), class_mean.tolist(), label_hist.tolist())
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert loss.item() < 0                          # -H(a, b): the negative cross-entropy, as printed
    loss.backward()
    assert logits_s.grad[3].abs().sum() == 0 and logits_s.grad[:3].abs().sum() > 0
    # a one-class batch: hist = [1, 0, 0, 0] -> b = e_0, L_f = a_0 * log(1) + sum_k a_k log(1e-12)
    one = fairness_loss(torch.tensor([[3.0, 0.0, 0.0, 0.0]]), torch.tensor([True]), class_mean, label_hist)
    a = class_mean / label_hist
    a = a / a.sum()
    assert one.item() == pytest.approx(float((1 - a[0]) * math.log(1e-12)), rel=1e-4)
    zero = fairness_loss(logits_s, torch.zeros(4, dtype=torch.bool), class_mean, label_hist)
    assert zero.item() == 0.0


def test_freematch_algorithm_losses_and_policy_check():
    algo = FreeMatch(4, _policy(momentum=0.5))
    weak = PROBS.log()
    strong = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]])
    out = ForwardOutput(torch.zeros(2, 4), torch.zeros(2, 3), [weak, strong], [torch.zeros(3, 3)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), [], torch.arange(3), torch.tensor([0, 1, 2]))
    res = algo.losses(out, batch, CTX)
    w = torch.tensor([1.0, 1.0, 0.0])                                     # from test_one_update_by_hand
    ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 1, 0]), reduction="none")
    assert res.losses["unsup"].item() == pytest.approx(float((ce * w).sum() / 3), rel=1e-6)
    expected_f = 0.01 * fairness_loss(strong, w > 0, algo.policy.class_mean, algo.policy.label_hist)
    assert res.losses["fairness"].item() == pytest.approx(expected_f.item(), rel=1e-6)
    assert res.losses["sup"].item() == pytest.approx(math.log(4), rel=1e-6)
    with pytest.raises(SSLZooError, match="lambda_f=0"):
        FreeMatch(4, build_policy("fixed:0.9"))
    assert "fairness" not in FreeMatch(4, build_policy("fixed:0.9"), lambda_f=0.0).losses(out, batch, CTX).losses


def test_freematch_algorithm_trains_one_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="freematch"))
    assert metrics["status"] == "finished" and metrics["policy"] == "freematch"
    entry = metrics["history"][0]
    assert "fairness" in entry["losses"] and 0.0 < entry["policy_stats"]["freematch_tau"] < 1.0
