"""SoftMatch's truncated-Gaussian weights, EMAs and uniform alignment on hand-checkable tensors."""
from __future__ import annotations

import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, PolicyInput, StepContext
from sslzoo.algorithms.softmatch import SoftMatch
from sslzoo.policies import build_policy
from sslzoo.policies.softmatch import SoftMatchWeights, truncated_gaussian_weights, uniform_alignment
from tests.ddp_global_worker import assert_policy_matches_one_process

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=4)


def _policy(**kw) -> SoftMatchWeights:
    p = SoftMatchWeights(**kw)
    p.setup(4, 100)
    return p


def _rows(confidences: list[float]) -> torch.Tensor:
    """4-class rows with max prob = confidence on class 0."""
    c = torch.tensor(confidences)
    rest = (1 - c) / 3
    return torch.stack([c, rest, rest, rest], dim=1)


def test_truncated_gaussian_by_hand():
    mu, var = torch.tensor(0.8), torch.tensor(0.04)                 # sigma = 0.2, n_sigma = 2
    w = truncated_gaussian_weights(torch.tensor([0.9, 0.8, 0.7, 0.4]), mu, var)
    # below mu: exp(-(c - mu)^2 / (2 * 0.04 / 4)) = exp(-(c - mu)^2 / 0.02)
    assert w.tolist() == pytest.approx([1.0, 1.0, math.exp(-0.5), math.exp(-8.0)])
    w = truncated_gaussian_weights(torch.tensor([0.7]), mu, var, n_sigma=1.0, lambda_max=0.5)
    assert w.item() == pytest.approx(0.5 * math.exp(-0.01 / 0.08))


def test_initial_state():
    p = _policy()
    assert p.mu.item() == pytest.approx(0.25) and p.var.item() == 1.0
    assert torch.allclose(p.mean_prediction, torch.full((4,), 0.25)) and not bool(p.ua_started)


def test_ema_update_by_hand_without_alignment():
    p = _policy(momentum=0.5, uniform_alignment=False)
    w = p(PolicyInput(_rows([0.9, 0.5, 0.7])), CTX)
    # batch mean 0.7, unbiased variance (0.04 + 0.04 + 0) / 2 = 0.04
    assert p.mu.item() == pytest.approx(0.5 * 0.25 + 0.5 * 0.7)           # 0.475
    assert p.var.item() == pytest.approx(0.5 * 1.0 + 0.5 * 0.04)          # 0.52
    # weights use the UPDATED mu/var: 0.5 >= 0.475 and 0.9, 0.7 too -> all 1
    assert w.tolist() == [1.0, 1.0, 1.0]
    w = p(PolicyInput(_rows([0.3, 0.3])), CTX)                            # mean 0.3, variance 0
    mu, var = 0.5 * 0.475 + 0.5 * 0.3, 0.5 * 0.52
    assert p.mu.item() == pytest.approx(mu) and p.var.item() == pytest.approx(var)
    assert w.tolist() == pytest.approx([math.exp(-(0.3 - mu) ** 2 / (2 * var / 4))] * 2, rel=1e-5)


def test_default_momentum_matches_loop_reference():
    torch.manual_seed(1)
    p = _policy(uniform_alignment=False)
    mu, var = 0.25, 1.0
    for _ in range(3):
        probs = torch.softmax(torch.randn(6, 4) * 2, dim=1)
        w = p(PolicyInput(probs), CTX)
        conf = [max(r) for r in probs.tolist()]
        m = sum(conf) / len(conf)
        v = sum((c - m) ** 2 for c in conf) / (len(conf) - 1)
        mu, var = 0.999 * mu + 0.001 * m, 0.999 * var + 0.001 * v
        ref = [1.0 if c >= mu else math.exp(-(c - mu) ** 2 / (2 * var / 4)) for c in conf]
        assert w.tolist() == pytest.approx(ref, rel=1e-5)
    assert p.mu.item() == pytest.approx(mu, rel=1e-6) and p.var.item() == pytest.approx(var, rel=1e-5)


def test_uniform_alignment_by_hand():
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1]])
    mean = torch.tensor([0.75, 0.25])
    aligned = uniform_alignment(probs, mean)
    # p * u / E[p]: [0.6 / 0.75, 0.4 / 0.25] * 0.5 = [0.4, 0.8] -> [1/3, 2/3]; [1.2, 0.4] -> [0.75, 0.25]
    assert torch.allclose(aligned, torch.tensor([[1 / 3, 2 / 3], [0.75, 0.25]]), atol=1e-5)


def test_alignment_mean_starts_at_first_batch_then_ema():
    p = _policy(momentum=0.5)
    b1 = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1]])
    p(PolicyInput(b1), CTX)
    assert torch.allclose(p.mean_prediction, b1.mean(0)) and bool(p.ua_started)
    # mu/var are updated from the ALIGNED batch
    conf = uniform_alignment(b1, b1.mean(0)).max(1).values
    assert p.mu.item() == pytest.approx(0.5 * 0.25 + 0.5 * conf.mean().item(), rel=1e-5)
    var1 = 0.5 * 1.0 + 0.5 * conf.var(unbiased=True).item()
    assert p.var.item() == pytest.approx(var1, rel=1e-5)
    b2 = torch.tensor([[0.1, 0.1, 0.1, 0.7]])
    w = p(PolicyInput(b2), CTX)
    expected_mean = 0.5 * b1.mean(0) + 0.5 * b2.mean(0)
    assert torch.allclose(p.mean_prediction, expected_mean)
    conf2 = uniform_alignment(b2, expected_mean).max(1).values
    assert p.var.item() == pytest.approx(0.5 * var1, rel=1e-5)           # a batch of one adds variance 0
    assert w.item() == pytest.approx(truncated_gaussian_weights(conf2, p.mu, p.var).item(), rel=1e-6)


def test_two_process_gloo_run_equals_one_process_with_the_doubled_batch():
    """Real gloo collectives: 2 processes with their halves of each batch take the 1-process decisions, bit
    for bit, and end in its state (the alignment mean, mu and sigma^2 are updated from every rank's
    gathered probabilities; tests/ddp_global_worker.py)."""
    assert_policy_matches_one_process("softmatch")


def test_state_dict_round_trip_and_spec():
    p = _policy()
    p(PolicyInput(_rows([0.9, 0.4, 0.6])), CTX)
    q = build_policy("softmatch:2")
    q.setup(4, 100)
    q.load_state_dict(p.state_dict())
    probs = _rows([0.3, 0.5, 0.95])
    assert torch.equal(q.weights(PolicyInput(probs), CTX), p.weights(PolicyInput(probs), CTX))
    assert set(p.state_dict()) == {"mu", "var", "mean_prediction", "ua_started"}
    assert build_policy("softmatch:3").n_sigma == 3.0


def test_pseudo_labels_come_from_the_unaligned_prediction():
    """UA shapes only the weights: a row that UA would flip keeps its original argmax as target."""
    policy = SoftMatchWeights(momentum=0.5)
    policy.setup(2, 10)
    algo = SoftMatch(2, policy)
    weak = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45]]))   # E[p] = [0.783, 0.217]
    assert uniform_alignment(weak.exp(), weak.exp().mean(0))[2].argmax() == 1   # UA flips row 2
    strong = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    out = ForwardOutput(torch.zeros(1, 2), torch.zeros(1, 3), [weak, strong], [torch.zeros(3, 3)] * 2)
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), [], torch.arange(3), torch.tensor([0, 0, 0]))
    res = algo.losses(out, batch, CTX)
    fresh = SoftMatchWeights(momentum=0.5)
    fresh.setup(2, 10)
    w = fresh(PolicyInput(weak.exp()), CTX)
    ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 0, 0]), reduction="none")
    assert res.losses["unsup"].item() == pytest.approx(float((w * ce).sum() / 3), rel=1e-6)
    assert 0 < w.min() and w.max() <= 1


def test_softmatch_algorithm_trains_one_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="softmatch"))
    assert metrics["status"] == "finished" and metrics["policy"] == "softmatch"
    entry = metrics["history"][0]
    assert 0.0 < entry["mask_ratio"] <= 1.0 and entry["policy_stats"]["softmatch_var"] > 0
