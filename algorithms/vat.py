"""Virtual adversarial training (Miyato et al., TPAMI 2018), with entropy minimisation as USB has it.

    q     = softmax(f(u))                                 clean prediction: the target, no gradient
    D(r)  = KL(q || softmax(f(u + r)))                    per sample; D(0) = 0, grad D(0) = 0
    d_0 ~ N(0, I);  d_k+1 = unit(grad_r D(r) at r = xi d_k)    power iteration, K = 1, xi = 1e-2
    r_adv = eps * d_K                                     the virtual adversarial perturbation (no gradient)
    L_vat = 1/(mu B) * sum_b KL(q_b || softmax(f(u_b + r_adv,b)))     the local distributional smoothness
    L_ent = 1/(mu B) * sum_b H(softmax(f(u_b)))            entropy minimisation (with gradient)
    L = L_s + lambda_u * r(t) * L_vat + lambda_ent * L_ent,   r linear over ``unsup_warmup``
    unit(v) = v / ||v||_2 per sample, over all of its values

For a model whose curvature is H = d^2 D / dr^2 at 0, grad_r D(xi d) ~ xi H d: one power
iteration turns the random d_0 towards H's top eigenvector, the direction in which the
prediction changes fastest. For a 2-class linear model f(x) = W x, H = q_0 q_1 v v^T with
v = w_0 - w_1, so d_1 = +-v / ||v|| whatever x is (a unit test checks this).

Choices, and what they follow:
  * eps = 6, K = 1, lambda_u = 1, lambda_ent = 0.06, linear ramp over 40 % of training:
    USB's classic_cv configs (``vat_eps: 6``, ``ent_loss_ratio: 0.06``, default
    ``ulb_loss_ratio: 1``, ``unsup_warm_up: 0.4``). The paper and its official code
    (takerum/vat_tf): eps 8 on CIFAR-10 with augmentation (10 without; SVHN 2.5 / 3.5), K = 1,
    alpha = 1, entropy weight 1 for VAT+EntMin and no ramp: ``vat.eps=8 vat.lambda_ent=1
    vat.unsup_warmup=0``; ``vat.lambda_ent=0`` is plain VAT. eps is the L2 norm of the whole
    perturbation in the trainer's normalized-image space, so the same eps is a smaller
    per-pixel change on larger images (6 on 3x32x32 is an RMS of 0.11 per value).
  * xi = 1e-2, not the paper's and USB's 1e-6 (``vat.xi=1e-6`` restores it). In float32 a
    probe of norm 1e-6 spread over 3x32x32 values is ~2e-8 per value, below the resolution of
    a normalized pixel (~1e-7 near 1): x + xi d rounds back to x and the finite difference is
    rounding noise. Measured here (one power step from the same start, float32 against the
    same model in float64; smallcnn and wrn28_2 at 32 px, resnet18 at 224 px, briefly
    trained): the cosine with the float64 direction ranged from -0.86 to 0.24 at xi = 1e-6,
    from 0.82 to 0.9999 at 1e-3, and from 0.987 to 0.9994 at 1e-2 on all three.
  * Batch norm: every VAT pass normalizes with its own batch's statistics and leaves the
    running statistics untouched (the official ``update_batch_stats=False``, USB's
    ``freeze_bn``).
  * The target q comes from its own no-gradient pass over the unlabeled batch alone, the
    batch composition of the perturbation passes, so that at r = 0 the perturbed pass
    reproduces q and the power iteration sees the curvature, not a difference in
    batch statistics. USB and the official code take q (detached) from the unlabeled pass
    that also gives the entropy term; sslzoo computes the entropy term (and L_s) in the
    trainer's ``forward_mode`` pass, concatenated with the labeled batch by default: one
    extra no-gradient pass.
  * Dropout: the three VAT passes (target, power iteration, adversarial) run with dropout
    off (``vat_dropout=False``): the finite difference needs one deterministic function.
    The official code gets that by giving the passes the same dropout masks (fixed op
    seeds); USB's WRN-28-2 has no dropout. sslzoo's heads have dropout 0.5;
    ``vat.vat_dropout=true`` keeps it on in each pass (independent masks: what USB's code
    would do with such a backbone, and then the masks, not the curvature, set the direction).
    Only ``nn.Dropout``-family modules are switched; functional dropout is not.
  * Precision: the target and power-iteration passes run in float32 with autocast off: the
    probe (xi = 1e-2 over 3x32x32 values is ~2e-4 per value) is below bf16/fp16 resolution,
    so under autocast the direction would be zero or noise. The adversarial pass runs under
    the trainer's autocast.
  * unit(): divides by the per-sample max |d| before the L2 norm (the official code's
    order: tiny gradients do not underflow when squared); USB divides by the L2 norm
    + 1e-16. The same direction in exact arithmetic.
  * The gradient with respect to d is taken with ``torch.autograd.grad`` on the module under
    any DDP / torch.compile wrapper: parameter gradients are untouched (USB calls backward
    and then ``zero_grad``), and DDP sees exactly one backward per step. The adversarial
    pass goes through the wrapped model, so DDP averages its gradients. Everything else is
    per rank, as in USB.
  * ``power_iterations=0`` gives eps-sized random perturbations (the paper's RPT baseline).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslzoo.algorithm import Batch, SSLAlgorithm, StepContext, StepOutput, forward, pseudo_label_stats, \
    supervised_ce
from sslzoo.mixup import frozen_bn_stats
from sslzoo.ramps import check_ramp, warmup_factor
from sslzoo.registry import register_algorithm


def unit_vector(d: Tensor) -> Tensor:
    """d / ||d||_2 per sample (over every dimension but the first); an all-zero sample stays zero."""
    flat = d.flatten(1)
    flat = flat / flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)   # scale first: no underflow in the squares
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return flat.view(d.shape)


def _at_least_float32(t: Tensor) -> Tensor:
    """Half-precision logits upcast to float32; float32 and float64 kept (the tests use float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def kl_from_logits(target_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean over samples of KL(softmax(target_logits) || softmax(logits)); the target is a constant."""
    log_q = F.log_softmax(_at_least_float32(target_logits.detach()), dim=-1)
    log_p = F.log_softmax(_at_least_float32(logits), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=-1).mean()


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Mean over samples of the entropy H(softmax(logits)) (differentiable: entropy minimisation)."""
    log_p = F.log_softmax(_at_least_float32(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Dropout modules in evaluation mode (identity) inside; everything else keeps its mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.eval()
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile and DistributedDataParallel wrappers (same parameters)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def adversarial_direction(net: nn.Module, x: Tensor, target_logits: Tensor, xi: float,
                          iterations: int, start: Tensor | None = None) -> Tensor:
    """unit(d_K): ``iterations`` power-iteration steps from ``start`` (default: a Gaussian draw).

    Only the gradient with respect to the probe is taken: parameter gradients are untouched.
    """
    d = unit_vector(torch.randn_like(x) if start is None else start)
    for _ in range(iterations):
        probe = (xi * d).requires_grad_(True)
        with torch.enable_grad():
            divergence = kl_from_logits(target_logits, net(x + probe)[0])
        (grad,) = torch.autograd.grad(divergence, probe)
        d = unit_vector(grad)
    return d


@register_algorithm("vat")
class VAT(SSLAlgorithm):
    """VAT: the prediction must not change along the most sensitive eps-sized input direction."""

    name = "vat"
    unlabeled_views = ("weak",)
    default_policy = None
    uses_policy = False

    def __init__(self, num_classes: int, policy=None, lambda_u: float = 1.0, lambda_ent: float = 0.06,
                 eps: float = 6.0, xi: float = 1e-2, power_iterations: int = 1, unsup_warmup: float = 0.4,
                 rampup: str = "linear", vat_dropout: bool = False):
        super().__init__(num_classes, policy)
        for key, value in (("lambda_u", lambda_u), ("lambda_ent", lambda_ent), ("eps", eps)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0; got {value}")
        if not xi > 0:
            raise ValueError(f"xi (the finite-difference step of the power iteration) must be > 0; got {xi}")
        if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 0:
            raise ValueError(f"power_iterations must be a whole number >= 0; got {power_iterations!r}")
        if unsup_warmup < 0:
            raise ValueError(f"unsup_warmup is a fraction of training >= 0; got {unsup_warmup}")
        if not isinstance(vat_dropout, bool):
            raise ValueError(f"vat_dropout must be true or false; got {vat_dropout!r}")
        self.lambda_u, self.lambda_ent, self.eps, self.xi = float(lambda_u), float(lambda_ent), float(eps), float(xi)
        self.power_iterations, self.unsup_warmup = int(power_iterations), float(unsup_warmup)
        self.vat_dropout = vat_dropout
        self.rampup = check_ramp(rampup)

    def unsup_weight(self, ctx: StepContext) -> float:
        """lambda_u * r(t): the ramped weight of the VAT term at this step."""
        return self.lambda_u * warmup_factor(self.rampup, ctx.step, ctx.total_steps, self.unsup_warmup)

    def vat_loss(self, model: nn.Module, u: Tensor) -> tuple[Tensor, Tensor]:
        """(L_vat, the clean target logits) for the unlabeled batch ``u``."""
        net = unwrap(model)
        no_dropout = nullcontext() if self.vat_dropout else dropout_off(net)
        with no_dropout, frozen_bn_stats(net):
            with torch.autocast(u.device.type, enabled=False):
                x = u.float()
                with torch.no_grad():
                    target = net(x)[0].float()
                direction = adversarial_direction(net, x, target, self.xi, self.power_iterations)
            adv_logits = model(u + (self.eps * direction).to(u.dtype))[0]
        return kl_from_logits(target, adv_logits), target

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        out = forward(model, batch, ctx.forward_mode)
        sup, _ = supervised_ce(out.logits_l, batch.y_l)
        (u,) = batch.u_views
        lds, target = self.vat_loss(model, u)
        ent = entropy_from_logits(out.u_logits[0])
        pseudo = target.argmax(dim=-1)
        stats = pseudo_label_stats(torch.ones_like(pseudo, dtype=torch.float32), pseudo, batch.u_true)
        stats.update({"vat_lds": lds.detach(), "vat_entropy": ent.detach()})
        return StepOutput({"sup": sup, "unsup": self.unsup_weight(ctx) * lds, "entmin": self.lambda_ent * ent}, stats)
