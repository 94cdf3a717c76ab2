"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017): consistency with an EMA teacher.

    theta'_t = a theta'_{t-1} + (1 - a) theta_t          (the trainer's EMA model = ctx.ema_model)
    p_s = softmax(f_theta(weak_1(u)))                     (student, own view, with gradient)
    p_t = softmax(f_theta'(weak_2(u)))                    (teacher, ANOTHER weak view, no gradient)
    L_u = 1/(mu B) * 1/C * sum_b ||p_s,b - p_t,b||^2      (MSE of probabilities, mean over classes)
    L = L_s + lambda_u * r(t) * L_u,  r = sigmoid ramp exp(-5 (1 - t)^2) over ``unsup_warmup``

Choices where the paper leaves room, with what they follow:
  * lambda_u = 50 with the MSE averaged over classes and samples: USB's classic_cv
    configs (``ulb_loss_ratio: 50``, ``consistency_loss(..., 'mse')`` = mean over classes,
    then over the batch). The paper's PyTorch code averages over classes too
    (``softmax_mse_loss`` / C) and uses 100 on CIFAR-10, with a 5-epoch sigmoid ramp.
  * Ramp-up: the paper's sigmoid shape (``rampup="sigmoid"``); its length is USB's
    ``unsup_warm_up=0.4`` of training (USB/TorchSSL ramp linearly: ``rampup="linear"``).
  * Teacher forward (``teacher_mode="train"``, default): the EMA weights run in training
    mode — batch statistics and dropout, i.e. the teacher gets its own noise as in the
    paper — with batch-norm running statistics left untouched. That is what USB and
    TorchSSL do (``ema.apply_shadow()`` on the training model + ``bn_controller.freeze_bn``).
    The paper's code also runs the teacher in training mode (its BN buffers are its own;
    here the trainer's EMA copies the student's buffers, as USB does).
    ``teacher_mode="eval"`` uses running statistics and no dropout instead.
  * The student's unlabeled view goes through ``ctx.forward_mode`` together with the
    labeled batch (one gradient pass); the teacher's view is a separate no-grad pass.
  * EMA decay: the trainer's ``ema.decay`` (0.999, with its warm-up), USB's ``ema_m``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import (Batch, ForwardOutput, SSLAlgorithm, StepContext, StepOutput, forward,
                              pseudo_label_stats, supervised_ce)
from sslzoo.errors import SSLZooError
from sslzoo.mixup import frozen_bn_stats, train_mode
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm


def consistency_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over samples and classes of (softmax(student) - softmax(teacher))^2; the teacher is a target."""
    p_s = torch.softmax(student_logits.float(), dim=-1)
    p_t = torch.softmax(teacher_logits.detach().float(), dim=-1)
    return F.mse_loss(p_s, p_t, reduction="none").mean(dim=1).mean()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: Tensor, mode: str = "train") -> Tensor:
    """The teacher's logits on ``x``: training mode with frozen BN statistics, or evaluation mode."""
    if mode == "eval":
        was_training = teacher.training
        teacher.eval()
        try:
            return teacher(x)[0]
        finally:
            teacher.train(was_training)
    if mode != "train":
        raise ValueError(f"teacher_mode must be 'train' or 'eval'; got {mode!r}")
    with train_mode(teacher), frozen_bn_stats(teacher):
        return teacher(x)[0]


@register_algorithm("meanteacher")
class MeanTeacher(SSLAlgorithm):
    """Mean Teacher: the student matches the EMA teacher's prediction on another weak view (MSE)."""

    name = "meanteacher"
    unlabeled_views = ("weak", "weak")   # [0]: the student's view, [1]: the teacher's view
    default_policy = None
    uses_policy = False

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 50.0, unsup_warmup: float = 0.4,
                 rampup: str = "sigmoid", teacher_mode: str = "train"):
        super().__init__(num_classes, policy)
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        if teacher_mode not in ("train", "eval"):
            raise ValueError(f"teacher_mode must be 'train' or 'eval'; got {teacher_mode!r}")
        self.lambda_u, self.unsup_warmup, self.teacher_mode = lambda_u, unsup_warmup, teacher_mode
        self.rampup = check_ramp(rampup)

    def unsup_weight(self, ctx: StepContext) -> float:
        return self.lambda_u * warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        if ctx.ema_model is None:
            raise SSLZooError("Mean Teacher needs the trainer's EMA model as its teacher (ctx.ema_model), "
                              "but none was given.")
        student_view, teacher_view = batch.u_views
        student = forward(model, Batch(batch.x_l, batch.y_l, [student_view], batch.u_index, batch.u_true),
                          ctx.forward_mode)
        t_logits = teacher_logits(ctx.ema_model, teacher_view, self.teacher_mode)
        out = ForwardOutput(student.logits_l, student.feats_l, [student.u_logits[0], t_logits],
                            [student.u_feats[0], student.u_feats[0].new_zeros(0)])
        return self.losses(out, batch, ctx)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        """u_logits = [student logits on view 1, teacher logits on view 2]."""
        sup, _ = supervised_ce(out.logits_l, batch.y_l)
        student_u, teacher_u = out.u_logits
        unsup = consistency_mse(student_u, teacher_u)
        pseudo = teacher_u.detach().argmax(dim=-1)
        stats = pseudo_label_stats(torch.ones_like(pseudo, dtype=torch.float32), pseudo, batch.u_true)
        return StepOutput({"sup": sup, "unsup": self.unsup_weight(ctx) * unsup}, stats)
