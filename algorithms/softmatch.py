"""SoftMatch (Chen et al., ICLR 2023): FixMatch with truncated-Gaussian soft weights.

    q  = softmax(f(weak(u)))                                  (no gradient)
    w_b = lambda(max UA(q)_b)  in (0, 1]                      policy "softmatch" (Gaussian + UA)
    L_u = 1/(mu B) * sum_b w_b * CE(argmax q_b, f(strong(u_b)))
    L = L_s + lambda_u * L_u

Uniform alignment only shapes the weights, so it lives in the policy; the pseudo-labels
are the argmax of the unaligned prediction, as in USB. Every sample gets a positive
weight, so ``mask_ratio`` here is the mean weight.
"""
from __future__ import annotations

from sslzoo.registry import register_algorithm

from .fixmatch import FixMatch


@register_algorithm("softmatch")
class SoftMatch(FixMatch):
    """SoftMatch: FixMatch's loss weighted by a truncated Gaussian of the aligned confidence."""

    name = "softmatch"
    default_policy = "softmatch"
