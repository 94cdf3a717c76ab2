"""FlexMatch's learning effect, warm-up, mapping and memory on hand-checkable tensors."""
from __future__ import annotations

import json

import pytest
import torch

from sslzoo.algorithm import PolicyInput, StepContext
from sslzoo.policies import build_policy
from sslzoo.policies.flexmatch import FlexMatchThreshold, flexmatch_mapping, learning_effect
from tests.ddp_global_worker import assert_policy_matches_one_process

CTX = StepContext(epoch=0, iteration=0, step=0, total_steps=10, iters_per_epoch=10, num_classes=3)


def _policy(pool: int = 10, classes: int = 3, **kw) -> FlexMatchThreshold:
    p = FlexMatchThreshold(**kw)
    p.setup(classes, pool)
    return p


def _reference_thresholds(memory: list[int], classes: int, tau: float, warmup: bool) -> list[float]:
    """Loop-based reference of the paper's equations."""
    sigma = [sum(1 for m in memory if m == c) for c in range(classes)]
    unused = sum(1 for m in memory if m == -1)
    denom = max(max(sigma), unused) if warmup else max(sigma)
    beta = [s / denom if denom else 0.0 for s in sigma]
    return [tau * b / (2 - b) for b in beta]


def test_convex_mapping_is_x_over_2_minus_x():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(flexmatch_mapping(x), torch.tensor([0.0, 0.25 / 1.75, 1 / 3, 1.0]))
    assert torch.allclose(flexmatch_mapping(x, "linear"), x)
    with pytest.raises(ValueError):
        flexmatch_mapping(x, "concave")


@pytest.mark.parametrize("warmup", [True, False])
def test_guard_very_start_trusts_everything_with_and_without_warmup(warmup):
    """No confident prediction yet: every beta is 0, so every T_c = 0 and all samples pass."""
    p = _policy(warmup=warmup)
    assert torch.equal(p.memory, torch.full((10,), -1))
    assert torch.equal(p.thresholds(), torch.zeros(3))
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    assert p.weights(PolicyInput(probs, torch.arange(3)), CTX).tolist() == [1.0, 1.0, 1.0]


def test_guard_first_confident_prediction_warmup_vs_no_warmup():
    """One confident class-0 sample in a pool of 10: warm-up normalizes by the 9 unused samples."""
    probs = torch.tensor([[0.97, 0.02, 0.01]])
    warm, cold = _policy(warmup=True), _policy(warmup=False)
    for p in (warm, cold):
        p(PolicyInput(probs, torch.tensor([4])), CTX)
        assert p.memory.tolist() == [-1, -1, -1, -1, 0, -1, -1, -1, -1, -1]
    beta0 = 1 / 9                                        # sigma_0 / max(max sigma = 1, unused = 9)
    assert warm.thresholds().tolist() == pytest.approx([0.95 * beta0 / (2 - beta0), 0.0, 0.0])
    assert warm.thresholds()[0].item() == pytest.approx(0.95 / 17)
    assert cold.thresholds().tolist() == pytest.approx([0.95, 0.0, 0.0])   # sigma_0 / max sigma = 1


@pytest.mark.parametrize("warmup", [True, False])
def test_thresholds_match_loop_reference(warmup):
    memory = [0, 0, 0, 1, -1, -1, -1, -1, -1, -1]
    p = _policy(warmup=warmup)
    p.memory = torch.tensor(memory)
    expected = [0.95 / 3, 0.95 / 11, 0.0] if warmup else [0.95, 0.95 * 0.2, 0.0]   # by hand
    assert p.thresholds().tolist() == pytest.approx(expected)
    assert p.thresholds().tolist() == pytest.approx(_reference_thresholds(memory, 3, 0.95, warmup))
    # once used samples dominate, warm-up and no warm-up agree
    memory = [0, 0, 0, 0, 1, 1, 2, 2, 2, -1]
    p.memory = torch.tensor(memory)
    assert p.thresholds().tolist() == pytest.approx(_reference_thresholds(memory, 3, 0.95, warmup))
    assert learning_effect(p.memory, 3, warmup).tolist() == pytest.approx([1.0, 0.5, 0.75])


def test_linear_mapping_thresholds():
    p = _policy(warmup=False, mapping="linear", threshold=0.9)
    p.memory = torch.tensor([0, 0, 0, 1, -1, -1, -1, -1, -1, -1])
    assert p.thresholds().tolist() == pytest.approx([0.9, 0.3, 0.0])


def test_mask_uses_threshold_of_predicted_class_inclusive():
    p = _policy(warmup=False)
    p.memory = torch.tensor([0, 0, 0, 1, -1, -1, -1, -1, -1, -1])      # T = [0.95, 0.19, 0]
    probs = torch.tensor([[0.95, 0.03, 0.02],   # class 0 at exactly 0.95 -> trusted (>=)
                          [0.94, 0.05, 0.01],   # class 0 below 0.95 -> not
                          [0.30, 0.40, 0.30],   # class 1, 0.40 >= 0.19 -> trusted
                          [0.20, 0.30, 0.50]])  # class 2 (T = 0) -> trusted
    assert p.weights(PolicyInput(probs, torch.arange(4)), CTX).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_update_records_only_confident_predictions_after_the_mask():
    p = _policy(warmup=False)
    p.memory = torch.tensor([1, -1, -1, -1, -1, -1, -1, -1, -1, 2])
    probs = torch.tensor([[0.96, 0.02, 0.02],    # index 0: confident class 0, overwrites 1
                          [0.94, 0.03, 0.03],    # index 1: not confident, stays -1
                          [0.02, 0.02, 0.96],    # index 5: confident class 2
                          [0.50, 0.45, 0.05]])   # index 9: not confident, keeps its old class 2
    index = torch.tensor([0, 1, 5, 9])
    before = p.thresholds().clone()                    # [0, 0.95, 0.95]: classes 1 and 2 one each
    w = p(PolicyInput(probs, index), CTX)
    expected_w = (probs.max(1).values >= before[probs.argmax(1)]).float()
    assert torch.equal(w, expected_w)                  # mask from the memory BEFORE this batch
    assert p.memory.tolist() == [0, -1, -1, -1, -1, 2, -1, -1, -1, 2]
    with pytest.raises(ValueError, match="index"):
        p.update(PolicyInput(probs, None), CTX)


def test_two_process_gloo_run_equals_one_process_with_the_doubled_batch():
    """Real gloo collectives: 2 processes with their halves of each batch take the 1-process decisions, bit
    for bit, and end in its state (the per-sample memory is written from every rank's gathered indices
    and confident predictions; tests/ddp_global_worker.py)."""
    assert_policy_matches_one_process("flexmatch")


def test_state_dict_round_trip_and_spec():
    p = _policy()
    p(PolicyInput(torch.tensor([[0.99, 0.005, 0.005], [0.01, 0.98, 0.01]]), torch.tensor([2, 6])), CTX)
    q = build_policy("flexmatch:0.95")
    q.setup(3, 10)
    q.load_state_dict(p.state_dict())
    assert torch.equal(q.memory, p.memory) and torch.equal(q.thresholds(), p.thresholds())
    assert build_policy("flexmatch:0.7").threshold == 0.7
    assert build_policy("flexmatch", {"warmup": False}).warmup is False
    assert p.extra_stats() == {"flexmatch_unused": pytest.approx(0.8)}


def test_flexmatch_algorithm_trains_one_epoch(tmp_path, tiny):
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="flexmatch", tensorboard=True))
    assert metrics["status"] == "finished" and metrics["policy"] == "flexmatch"
    entry = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][0]
    assert len(entry["thresholds"]) == len(metrics["classes"])
    assert 0.0 <= entry["policy_stats"]["flexmatch_unused"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert events.Scalars("policy/flexmatch_unused")[0].value == pytest.approx(entry["policy_stats"]["flexmatch_unused"])
    assert "threshold/fear" in events.Tags()["scalars"]


def test_flexmatch_policy_under_adacm_loss_trains(tmp_path, tiny):
    """The paper's Table 1 "FlexMatch" row: Ada-CM's L_u with FlexMatch thresholds, no L_c."""
    from sslzoo.trainer import train
    metrics = train(tiny(tmp_path, algo="adacm", policy="flexmatch", adacm={"lambda_c": 0.0}))
    assert metrics["status"] == "finished" and metrics["policy"] == "flexmatch"
