"""sslzoo from Python: Ada-CM on scikit-learn's handwritten digits with your own network.

    python examples/python_api.py [OUT_DIR]

Everything a notebook needs: uint8 images as numpy arrays, a plain ``nn.Module`` that returns
logits (its features are caught at its last Linear layer), one ``sslzoo.fit`` call, then the
result's accuracy, history and model. See docs/api.md.
"""
from __future__ import annotations

import sys

import numpy as np
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import sslzoo


class TinyConvNet(nn.Module):
    """Two convolutions and a linear classifier: a network that knows nothing about sslzoo."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(16), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))
        return self.fc(x)


def digits_as_images(side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits as uint8 [N, side, side, 3] images (nearest upsampling, grey to RGB)."""
    digits = load_digits()
    grey = (digits.images / 16.0 * 255).round().astype(np.uint8)
    big = grey.repeat(side // 8, axis=1).repeat(side // 8, axis=2)
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype(np.int64)


def main(out: str = "runs/python_api") -> sslzoo.FitResult:
    images, labels = digits_as_images()
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:400], order[400:]
    labeled = train[np.concatenate([np.flatnonzero(labels[train] == c)[:5] for c in range(10)])]   # 5 per class
    unlabeled = np.setdiff1d(train, labeled)
    x_l, y_l = images[labeled], labels[labeled]
    x_u = images[unlabeled]
    x_t, y_t = images[test], labels[test]

    result = sslzoo.fit(
        algorithm="adacm",
        backbone=TinyConvNet(),
        labeled=(x_l, y_l),
        unlabeled=x_u,
        test=(x_t, y_t),
        epochs=2, iters_per_epoch=10, out=out, seed=0,
        policy="fixed:0.8", adacm={"lambda_c": 0},   # any config key: Table 1's "FT = 0.8" row
        batch_size=16, num_workers=0, tensorboard=False, overwrite=True,
    )
    print(f"final test accuracy {result.final_acc:.2f}% (best over epochs {result.best_test_acc:.2f}%), "
          f"{len(result.history)} epochs, model: {type(result.model).__name__}")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:2])
