"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with curriculum pseudo-labeling.

    q = softmax(f(weak(u)))                       (no gradient)
    T_c = M(beta_c) * tau,  M(x) = x / (2 - x)    class-wise thresholds, policy "flexmatch"
    L_u = 1/(mu B) * sum_b 1[max q_b >= T_{argmax q_b}] * CE(argmax q_b, f(strong(u_b)))
    L = L_s + lambda_u * L_u

The loss is FixMatch's (hard pseudo-labels, normalized by the whole unlabeled batch, as
USB's ``consistency_loss``); only the default policy differs. The learning effects beta_c,
the warm-up and the mapping are in ``sslzoo/policies/flexmatch.py``.
"""
from __future__ import annotations

from sslzoo.registry import register_algorithm

from .fixmatch import FixMatch


@register_algorithm("flexmatch")
class FlexMatch(FixMatch):
    """FlexMatch: FixMatch's loss with class-wise thresholds from each class's learning effect."""

    name = "flexmatch"
    default_policy = "flexmatch"
