"""Mean Teacher: MSE consistency against the EMA teacher on another view, sigmoid ramp, BN handling."""
from __future__ import annotations

from tests.conftest import TinyNet

import copy
import math

import pytest
import torch

from sslzoo.algorithm import Batch, ForwardOutput, StepContext
from sslzoo.algorithms.meanteacher import MeanTeacher, consistency_mse, teacher_logits
from sslzoo.ramps import sigmoid_rampup, warmup_factor
from sslzoo.trainer import train


Tiny = TinyNet


def ctx(step=10, total=10, ema=None, mode="separate") -> StepContext:
    return StepContext(epoch=0, iteration=0, step=step, total_steps=total, iters_per_epoch=total, num_classes=3,
                       ema_model=ema, forward_mode=mode)


def test_sigmoid_ramp_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(30, 10) == 1.0
    assert sigmoid_rampup(1, 0) == 1.0
    # Mean Teacher's weight: 50 * exp(-5 (1 - 2/4)^2) at step 2 of 10 with a 0.4 ramp
    algo = MeanTeacher(3)
    assert algo.unsup_weight(ctx(step=2)) == pytest.approx(50 * math.exp(-1.25))
    assert warmup_factor("sigmoid", 4, 10, 0.4) == 1.0


def test_consistency_mse_by_hand_and_teacher_is_a_target():
    student = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]])).requires_grad_(True)
    teacher = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]])).requires_grad_(True)
    loss = consistency_mse(student, teacher)
    # row 0: (0.4^2 + 0.4^2) / 2 = 0.16; row 1: 0; mean over rows = 0.08
    assert loss.item() == pytest.approx(0.08, rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def _batch(views):
    torch.manual_seed(1)
    return Batch(torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0]), views, torch.arange(4),
                 torch.tensor([0, 1, 2, -1]))


def test_guard_unlabeled_loss_uses_student_view_against_teacher_view():
    torch.manual_seed(0)
    student = Tiny()
    teacher = copy.deepcopy(student).eval()
    v0 = torch.randn(4, 3, 6, 6)
    algo = MeanTeacher(3)   # lambda_u 50; ctx at the end of the ramp: weight 50
    # identical weights and identical views: nothing to be consistent about
    same = algo.step(student.train(), _batch([v0, v0.clone()]), ctx(ema=teacher))
    assert same.losses["unsup"].item() == pytest.approx(0.0, abs=1e-12)
    # perturbed teacher: non-zero, and exactly the MSE of student(view 0) vs teacher(view 1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    v1 = torch.randn(4, 3, 6, 6)
    res = algo.step(student, _batch([v0, v1]), ctx(ema=teacher))
    with torch.no_grad():
        p_s = torch.softmax(copy.deepcopy(student).train()(v0)[0], -1)
        p_t = torch.softmax(copy.deepcopy(teacher).train()(v1)[0], -1)
    expected = 50 * ((p_s - p_t) ** 2).mean()
    assert res.losses["unsup"].item() > 1e-4
    assert res.losses["unsup"].item() == pytest.approx(expected.item(), rel=1e-5)
    swapped = 50 * ((torch.softmax(copy.deepcopy(student).train()(v1)[0], -1) - p_t) ** 2).mean()
    assert abs(swapped.item() - expected.item()) > 1e-6    # the view assignment matters, and it is v0 for the student
    # gradients go to the student only
    res.losses["unsup"].backward()
    assert student.conv.weight.grad is not None and student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_runs_in_train_mode_with_frozen_bn_stats_and_stays_in_eval_mode():
    torch.manual_seed(0)
    teacher = Tiny().eval()
    teacher.bn.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(5, 3, 6, 6)
    train_logits = teacher_logits(teacher, x, "train")
    eval_logits = teacher_logits(teacher, x, "eval")
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.allclose(train_logits, eval_logits)   # batch statistics, not the running ones
    with torch.no_grad():
        ref = copy.deepcopy(teacher).train()(x)[0]
    assert torch.allclose(train_logits, ref)


def test_losses_on_packed_output_and_stats():
    algo = MeanTeacher(2, lambda_u=1.0, rampup="none")
    out = ForwardOutput(torch.zeros(2, 2), torch.zeros(2, 1), [torch.log(torch.tensor([[0.5, 0.5]])),
                        torch.log(torch.tensor([[0.9, 0.1]]))], [torch.zeros(1, 1)] * 2)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), [], torch.arange(1), torch.tensor([0]))
    res = algo.losses(out, batch, ctx(step=0))
    assert res.losses["unsup"].item() == pytest.approx(0.16, rel=1e-5)
    assert res.stats["pseudo_label_acc"].item() == 100.0


def test_step_needs_a_teacher():
    from sslzoo.errors import SSLZooError
    with pytest.raises(SSLZooError, match="EMA"):
        MeanTeacher(3).step(Tiny(), _batch([torch.zeros(4, 3, 6, 6)] * 2), ctx(ema=None))


def test_one_epoch_smoke(tiny, tmp_path):
    metrics = train(tiny(tmp_path, algo="meanteacher"))
    assert metrics["status"] == "finished"
    losses = metrics["history"][-1]["losses"]
    assert {"sup", "unsup"} <= set(losses) and all(math.isfinite(v) for v in losses.values())
    assert losses["unsup"] > 0
