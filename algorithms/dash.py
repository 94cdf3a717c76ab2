"""Dash (Xu et al., ICML 2021): FixMatch with dynamic, loss-based selection.

    q = softmax(f(weak(u)))                                   (no gradient)
    select b when -log max q_b <= rho_t,  rho_t = max(C gamma^-(t-1) rho_hat, rho_min)   policy "dash"
    L_u = 1/(mu B) * sum_b 1[selected] * CE(argmax q_b, f(strong(u_b)))
    L = L_s + lambda_u * L_u

During the policy's warm-up nothing is selected (supervised-only training); rho_hat is the
labeled training loss of the warmed-up model, which the trainer computes once, over the whole
labeled set, just before the first step after the warm-up (``StepContext.labeled_loss``); see
``sslzoo/policies/dash.py`` for the schedule.
"""
from __future__ import annotations

from sslzoo.registry import register_algorithm

from .fixmatch import FixMatch


@register_algorithm("dash")
class Dash(FixMatch):
    """Dash: FixMatch's loss on samples whose pseudo-label loss is below a decreasing threshold."""

    name = "dash"
    default_policy = "dash"
