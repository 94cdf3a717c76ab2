"""Read backbone weights from a checkpoint file, whatever wrote it.

Why one reader: pretrained backbones arrive as a plain state dict, as a dict with a
``state_dict`` entry (the MS-Celeb-1M ResNet-18 FER papers share, often with DataParallel's
``module.`` prefix), or as an sslzoo run's ``checkpoint.pt`` (pretraining on one data set,
fine-tuning on another). Every backbone takes the same files and gives the same errors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import SSLZooError


def read_state_dict(path: str | Path, expected: str) -> dict[str, Tensor]:
    """The tensors in ``path``, ``module.`` prefixes removed.

    An sslzoo run checkpoint gives its EMA model (the one that run evaluated); ``expected``
    names the kind of file wanted, for the error messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SSLZooError(f"backbone.weights: file '{path}' does not exist (expected {expected}).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable/unsafe file: say which and why
        raise SSLZooError(f"backbone.weights: could not read '{path}' as a PyTorch checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).") from None
    if isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("sslzoo-checkpoint"):
        ckpt = ckpt.get("ema", {}).get("module", ckpt.get("model"))
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SSLZooError(f"backbone.weights: '{path}' holds no state dict (expected a dict of "
                          f"tensors, a dict with a 'state_dict' entry, or an sslzoo checkpoint.pt).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_part(part: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> None:
    """Load ``state`` into ``part`` strictly, or fail naming the missing, extra and misshapen keys.

    Batch-norm ``num_batches_tracked`` counters may be absent (checkpoints saved before PyTorch
    0.4.1 have none; they only matter for momentum=None): the model's own are kept.
    """
    expected = part.state_dict()
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {k}: checkpoint "
                         f"{tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
        raise SSLZooError(f"backbone.weights: '{path}' does not fit {what}: {'; '.join(parts)}.")
    part.load_state_dict(state)
