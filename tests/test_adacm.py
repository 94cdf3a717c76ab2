"""Ada-CM's equations on small hand-checkable tensors (paper Eq. 4-10)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslzoo.algorithm import Batch, EpochContext, ForwardOutput, PolicyInput, StepContext, masked_ce
from sslzoo.distributed import DistContext
from sslzoo.policies.adacm_margin import AdaptiveMargin, correct_class_confidence, margin_schedule
from sslzoo.algorithms.adacm import AdaCM, average_weak_predictions, info_nce

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=3)


def test_eq4_mean_confidence_of_correct_predictions_only():
    probs = torch.tensor([[0.7, 0.2, 0.1],   # class 0, correct, conf 0.7
                          [0.9, 0.05, 0.05],  # class 0, correct, conf 0.9
                          [0.6, 0.3, 0.1],   # class 1, WRONG (predicted 0): excluded
                          [0.2, 0.5, 0.3],   # class 1, correct, conf 0.5
                          [0.5, 0.4, 0.1]])  # class 2, wrong: class 2 has no correct prediction
    targets = torch.tensor([0, 0, 1, 1, 2])
    T, has = correct_class_confidence(probs, targets, 3)
    assert torch.allclose(T, torch.tensor([0.8, 0.5, 0.0]))
    assert has.tolist() == [True, True, False]


def test_eq5_schedule_values():
    T = torch.tensor([0.9, 0.6])
    for t in (1, 2, 5):
        expected = torch.tensor([0.97 * 0.9 / (1 + math.e ** -t), 0.97 * 0.6 / (1 + math.e ** -t)])
        assert torch.allclose(margin_schedule(T, t), expected)
    # by hand: t=1 -> 0.97*0.9/(1+1/e) = 0.63822...
    assert margin_schedule(torch.tensor([0.9]), 1).item() == pytest.approx(0.638219, abs=1e-5)
    # large t approaches B*T
    assert margin_schedule(torch.tensor([1.0]), 50).item() == pytest.approx(0.97)


def _epoch_ctx(epoch, probs, targets):
    return EpochContext(epoch=epoch, epochs=10, num_classes=3, dist=DistContext(),
                        labeled_predictions=lambda view: (probs, targets))


def test_margin_official_defaults_floor_offset_and_empty_class():
    probs = torch.tensor([[0.99, 0.005, 0.005], [0.01, 0.98, 0.01], [0.2, 0.5, 0.3]])
    targets = torch.tensor([0, 1, 2])                     # class 2 never correct
    policy = AdaptiveMargin()
    policy.setup(3, 100)
    policy.on_epoch_start(_epoch_ctx(0, probs, targets))
    assert torch.allclose(policy.margin, torch.full((3,), 0.8))          # epoch 1 uses T0
    policy.on_epoch_start(_epoch_ctx(3, probs, targets))                  # after 3 epochs: exponent 3
    expect0 = 0.97 * 0.99 / (1 + math.e ** -3)
    expect1 = max(0.8, 0.97 * 0.98 / (1 + math.e ** -3))
    assert policy.margin[0].item() == pytest.approx(expect0, abs=1e-6)
    assert policy.margin[1].item() == pytest.approx(expect1, abs=1e-6)
    assert policy.margin[2].item() == pytest.approx(0.8)                 # no correct prediction -> T0
    policy.on_epoch_start(_epoch_ctx(1, probs, targets))                  # exponent 1: below the floor
    assert torch.allclose(policy.margin, torch.full((3,), 0.8))


def test_margin_plain_paper_formula():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.6, 0.3]])
    targets = torch.tensor([0, 1])
    policy = AdaptiveMargin(floor=None, epoch_offset=False)
    policy.setup(3, 10)
    policy.on_epoch_start(_epoch_ctx(2, probs, targets))                  # 3rd epoch: exponent t = 3
    expected = torch.tensor([0.97 * 0.9 / (1 + math.e ** -3), 0.97 * 0.6 / (1 + math.e ** -3), 0.8])
    assert torch.allclose(policy.margin, expected, atol=1e-6)


def test_partition_uses_threshold_of_predicted_class_inclusive():
    policy = AdaptiveMargin()
    policy.setup(3, 10)
    policy.margin = torch.tensor([0.9, 0.5, 0.7])
    probs = torch.tensor([[0.9, 0.05, 0.05],   # pred 0, 0.9 >= 0.9 -> subset I (>=)
                          [0.85, 0.1, 0.05],   # pred 0, below 0.9 -> II
                          [0.3, 0.5, 0.2],     # pred 1, 0.5 >= 0.5 -> I
                          [0.1, 0.2, 0.7],     # pred 2, 0.7 >= 0.7 -> I
                          [0.3, 0.1, 0.6]])    # pred 2, 0.6 < 0.7 -> II
    w = policy.weights(PolicyInput(probs), CTX)
    assert w.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_eq6_average_of_two_weak_views():
    la, lb = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    p = average_weak_predictions(la, lb)
    assert torch.allclose(p, torch.tensor([[(0.5 + 0.75) / 2, (0.5 + 0.25) / 2]]))


def test_eq7_ce_normalized_by_batch_or_subset():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    targets = torch.tensor([0, 1, 0])
    mask = torch.tensor([1.0, 1.0, 0.0])
    ce = [-math.log(0.5), -math.log(0.75)]
    assert masked_ce(logits, targets, mask, "batch").item() == pytest.approx(sum(ce) / 3)
    assert masked_ce(logits, targets, mask, "subset").item() == pytest.approx(sum(ce) / 2)
    assert masked_ce(logits, targets, torch.zeros(3), "subset").item() == 0.0


def _info_nce_loop(a, b, members, tau, anchors):
    """Eq. (8-9) written literally with loops over the subset (reference)."""
    idx = [i for i in range(a.shape[0]) if members[i]]
    s = lambda x, y: float(torch.dot(x, y) / (x.norm() * y.norm()))  # noqa: E731
    terms = []
    for first, second in ((a, b), (b, a)) if anchors == "both" else ((a, b),):
        for i in idx:
            num = math.exp(s(first[i], second[i]) / tau)
            den = sum(math.exp(s(first[i], first[j]) / tau) for j in idx if j != i)
            den += sum(math.exp(s(first[i], second[k]) / tau) for k in idx)
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("anchors", ["a", "both"])
def test_eq9_info_nce_matches_loop_reference(anchors):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    members = torch.tensor([True, False, True, True, False, True])
    got = info_nce(a, b, members, temperature=0.5, anchors=anchors).item()
    assert got == pytest.approx(_info_nce_loop(a, b, members.tolist(), 0.5, anchors), rel=1e-5)


def test_info_nce_empty_and_single_sample_subsets_are_zero_with_finite_grads():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    for members in (torch.zeros(4, dtype=torch.bool), torch.tensor([False, True, False, False])):
        loss = info_nce(a, b, members, 0.07)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        a.grad = b.grad = None


def test_adacm_losses_combine_terms_with_paper_weights():
    torch.manual_seed(0)
    policy = AdaptiveMargin()
    policy.setup(3, 10)
    policy.margin = torch.tensor([0.6, 0.6, 0.6])
    algo = AdaCM(3, policy)
    logits_l = torch.randn(2, 3)
    y = torch.tensor([0, 2])
    confident = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0], [0.1, 0.0, 0.0]])
    strong = torch.randn(4, 3)
    fa, fb = torch.randn(4, 5), torch.randn(4, 5)
    out = ForwardOutput(logits_l, torch.randn(2, 5), [confident, confident, strong], [fa, fb, torch.randn(4, 5)])
    batch = Batch(torch.zeros(2, 3, 4, 4), y, [], torch.arange(4), torch.tensor([0, 1, 2, -1]))
    res = algo.losses(out, batch, CTX)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])                      # rows 0 and 2 are confident
    pseudo = torch.tensor([0, 1, 2, 0])
    expected_u = (F.cross_entropy(strong, pseudo, reduction="none") * mask).sum() / 4
    assert res.losses["sup"].item() == pytest.approx(0.5 * F.cross_entropy(logits_l, y).item(), rel=1e-6)
    assert res.losses["unsup"].item() == pytest.approx(expected_u.item(), rel=1e-6)
    expected_c = 0.1 * info_nce(fa, fb, mask == 0, 0.07).item()
    assert res.losses["contrast"].item() == pytest.approx(expected_c, rel=1e-6)
    assert res.stats["mask_ratio"].item() == pytest.approx(0.5)
    assert res.stats["pseudo_label_acc"].item() == pytest.approx(100.0)   # rows 0, 2 pseudo == truth


def test_lambda_c_zero_drops_the_contrastive_term():
    policy = AdaptiveMargin()
    policy.setup(3, 4)
    algo = AdaCM(3, policy, lambda_c=0.0)
    out = ForwardOutput(torch.randn(2, 3), torch.randn(2, 5), [torch.randn(4, 3)] * 3, [torch.randn(4, 5)] * 3)
    batch = Batch(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), [], torch.arange(4), torch.full((4,), -1))
    assert "contrast" not in algo.losses(out, batch, CTX).losses
