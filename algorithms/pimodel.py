"""Pi-Model (Laine & Aila, ICLR 2017): two stochastic passes of the same image must agree.

    p_1 = softmax(f(weak_1(u)))                      (the target: no gradient by default)
    p_2 = softmax(f(weak_2(u)))                      (the same image, another augmentation and dropout mask)
    L_u = 1/(mu B) * 1/C * sum_b ||p_2,b - p_1,b||^2 (MSE of probabilities, mean over classes and samples)
    L = L_s + lambda_u * r(t) * L_u,  r = sigmoid ramp exp(-5 (1 - t)^2) over ``unsup_warmup``
    optional input noise (the paper's): x <- x + n,  n ~ N(0, sigma^2), on every input

Choices, and what they follow:
  * Two weak views (crop + flip), no strong augmentation: the paper's stochastic
    augmentation and USB's (its Pi-Model ``x_ulb_s`` is a second WEAK view). The backbone's
    own dropout (0.5 in sslzoo's heads) gives the two views independent masks, the
    paper's other source of noise; USB's WRN-28-2 has none.
  * ``stop_gradient=True`` (default): p_1 is a constant target, as in USB and TorchSSL
    (``logits_x_ulb_w.detach()``). The paper's Algorithm 1 and its official code
    (smlaine2/tempens) differentiate the loss through both evaluations:
    ``pimodel.stop_gradient=false``.
  * lambda_u = 10: USB's classic_cv configs (``ulb_loss_ratio: 10``). The paper's
    maximum weight is w_max * M/N (w_max = 100, M/N the labeled fraction of its data set).
  * Ramp-up: the paper's sigmoid shape (``rampup="sigmoid"``, as sslzoo's Mean Teacher), over
    USB's ``unsup_warm_up=0.4`` of training (the paper ramps over its first 80 epochs);
    USB ramps linearly: ``pimodel.rampup=linear``.
  * Input noise: off (USB). The paper adds Gaussian noise (sigma 0.15, on its whitened
    inputs) to every input of both branches: ``pimodel.input_noise=0.15`` (here in the
    trainer's normalized-image space; drawn on the batch's device from torch's seeded generator).
  * The paper's minibatch mixes labeled and unlabeled images and applies L_u to all of
    them; USB and sslzoo apply it to the unlabeled batch only (sslzoo's labeled and
    unlabeled pools are disjoint). No switch.
  * Forward passes: ``ctx.forward_mode`` — one concatenated pass over the labeled batch and
    both views (batch-norm statistics over all of them, as every sslzoo algorithm), or
    ``separate``: one pass per input. USB updates batch-norm statistics on the labeled
    pass only and freezes them for the two unlabeled passes.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import Batch, ForwardOutput, SSLAlgorithm, StepContext, StepOutput, pseudo_label_stats, \
    supervised_ce
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm


def pi_consistency(logits: Tensor, target_logits: Tensor, stop_gradient: bool = True) -> Tensor:
    """Mean over samples and classes of (softmax(logits) - softmax(target_logits))^2.

    With ``stop_gradient`` the target branch is a constant (USB); without, both branches
    receive gradients (the paper's Algorithm 1).
    """
    target = target_logits.detach() if stop_gradient else target_logits
    p = torch.softmax(logits.float(), dim=-1)
    q = torch.softmax(target.float(), dim=-1)
    return F.mse_loss(p, q, reduction="none").mean(dim=1).mean()


def with_input_noise(batch: Batch, sigma: float) -> Batch:
    """The batch with independent Gaussian noise (std ``sigma``) added to every image.

    Drawn with torch's global generator on the images' device: the trainer seeds it per step
    and checkpoints it, so runs stay reproducible and resumable.
    """
    def noisy(x: Tensor) -> Tensor:
        return x + sigma * torch.randn_like(x)

    return dataclasses.replace(batch, x_l=noisy(batch.x_l), u_views=[noisy(v) for v in batch.u_views])


@register_algorithm("pimodel")
class PiModel(SSLAlgorithm):
    """Pi-Model: the predictions on two weak views of an unlabeled image should match (MSE)."""

    name = "pimodel"
    unlabeled_views = ("weak", "weak")   # [0]: the target's view, [1]: the trained view
    default_policy = None
    uses_policy = False

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 10.0, unsup_warmup: float = 0.4,
                 rampup: str = "sigmoid", stop_gradient: bool = True, input_noise: float = 0.0):
        super().__init__(num_classes, policy)
        if lambda_u < 0:
            raise ValueError(f"lambda_u (weight of the consistency loss) must be >= 0; got {lambda_u}")
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        if input_noise < 0:
            raise ValueError(f"input_noise is the standard deviation of Gaussian input noise, >= 0; "
                             f"got {input_noise}")
        if not isinstance(stop_gradient, bool):
            raise ValueError(f"stop_gradient must be true or false; got {stop_gradient!r}")
        self.lambda_u, self.unsup_warmup = float(lambda_u), float(unsup_warmup)
        self.stop_gradient, self.input_noise = stop_gradient, float(input_noise)
        self.rampup = check_ramp(rampup)

    def unsup_weight(self, ctx: StepContext) -> float:
        """lambda_u * r(t): the ramped weight of the consistency term at this step."""
        return self.lambda_u * warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        if self.input_noise > 0:
            batch = with_input_noise(batch, self.input_noise)
        return super().step(model, batch, ctx)

    def losses(self, out: ForwardOutput, batch: Batch, ctx: StepContext) -> StepOutput:
        """u_logits = [logits on view 1 (target), logits on view 2 (trained)]."""
        sup, _ = supervised_ce(out.logits_l, batch.y_l)
        target_logits, logits = out.u_logits
        unsup = pi_consistency(logits, target_logits, self.stop_gradient)
        pseudo = target_logits.detach().argmax(dim=-1)
        stats = pseudo_label_stats(torch.ones_like(pseudo, dtype=torch.float32), pseudo, batch.u_true)
        return StepOutput({"sup": sup, "unsup": self.unsup_weight(ctx) * unsup}, stats)
