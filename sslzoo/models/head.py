"""The Ada-CM paper's classification head: dropout -> L2 normalize -> linear.

Why a shared module: Ada-CM's contrastive loss uses the L2-normalized pooled
feature, and every backbone must expose the same (logits, feature) pair.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PaperHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5, normalize: bool = True):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.normalize = normalize
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.dropout(pooled)
        if self.normalize:
            feature = F.normalize(feature, dim=1)
        return self.fc(feature), feature
