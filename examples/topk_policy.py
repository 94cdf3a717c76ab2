"""A threshold policy in one file: trust the most confident `fraction` of each predicted class.

    sslzoo train --plugin topk_policy.py --algo fixmatch --set policy=topk:0.5
"""
import torch

from sslzoo.policy import PolicyInput, StepContext, ThresholdPolicy
from sslzoo.registry import register_policy


@register_policy("topk")
class TopKPerClass(ThresholdPolicy):
    """Trust the top `fraction` most confident samples of each predicted class in the batch."""

    name = "topk"
    spec_arg = "fraction"  # "topk:0.5" sets fraction=0.5

    def __init__(self, fraction: float = 0.5):
        self.fraction = float(fraction)

    def weights(self, inp: PolicyInput, ctx: StepContext) -> torch.Tensor:
        conf, pred = inp.probs.max(dim=-1)
        same_class = pred[:, None] == pred[None, :]                    # [B, B]
        rank = (same_class & (conf[None, :] > conf[:, None])).sum(1)   # 0 = most confident of its class
        keep = torch.ceil(self.fraction * same_class.sum(1))           # how many to trust in that class
        return (rank < keep).float()
