"""From a resolved config to the objects a run trains: algorithm + policy, model, seeds.

One home for these rules: ``sslzoo train``, ``sslzoo bench`` (which checks every cell before
anything trains), ``sslzoo.fit`` and the throughput benchmark build through here, so a name
means the same object everywhere (timm's ``create_model`` idea).

Policy settings come in two places; the more specific wins:
  * ``policy``: which policy (``"fixed"``, ``"fixed:0.8"`` or ``{"name": "fixed", "threshold": 0.8}``);
    its ``:value`` shortcut or mapping keys set parameters for this run;
  * ``policies.<name>``: settings of that policy, applied whenever it is in force (e.g. a data
    set's YAML shortening FreeMatch's momentum); the ``policy`` spec overrides them.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .algorithm import SSLAlgorithm
from .device import device_type
from .errors import SSLZooError
from .models import build_backbone
from .policies import build_policy, parse_policy_spec
from .pretrain.store import resolve_pretrained
from .registry import ALGORITHMS


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (every device) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def policy_spec(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(policy name, its parameters) in force for ``cfg``'s algorithm; None when it takes no policy."""
    cls = ALGORITHMS.get(cfg["algo"])
    if not cls.uses_policy:
        if cfg.get("policy"):
            raise SSLZooError(f"Algorithm '{cfg['algo']}' takes no threshold policy, but policy="
                              f"'{cfg['policy']}' was set.")
        return None
    name, spec_params = parse_policy_spec(cfg.get("policy") or cls.default_policy)
    return name, {**(cfg.get("policies") or {}).get(name, {}), **spec_params}


def policy_label(cfg: dict[str, Any]) -> str | None:
    """How results name the policy of a run: its spec as written ("fixed:0.8"), else its name."""
    resolved = policy_spec(cfg)
    if resolved is None:
        return None
    spec = cfg.get("policy") or ALGORITHMS.get(cfg["algo"]).default_policy
    return spec if isinstance(spec, str) else resolved[0]


def build_algorithm(cfg: dict[str, Any], num_classes: int) -> SSLAlgorithm:
    """The configured algorithm with its threshold policy; user errors name the settings at fault."""
    cls = ALGORITHMS.get(cfg["algo"])
    resolved = policy_spec(cfg)
    policy = None
    if resolved is not None:
        name, params = resolved
        try:
            policy = build_policy({"name": name, **params})
        except (ValueError, TypeError) as exc:   # a constructor rejecting a value: the user's input
            raise SSLZooError(f"Threshold policy '{name}' rejected its settings {params}: {exc}") from exc
    try:
        return cls(num_classes, policy, **cfg.get(cfg["algo"], {}))
    except (ValueError, TypeError) as exc:
        raise SSLZooError(f"Algorithm '{cfg['algo']}' rejected its settings ({cfg['algo']}.*): {exc}") from exc


def backbone_config(cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """``cfg["backbone"]`` with a pretraining recipe in ``pretrained`` replaced by its weights file.

    The weights are built on first use, on the run's device type, under their own random
    stream (so building them on a cold cache leaves the run's seeds as a warm cache would).
    """
    return resolve_pretrained(cfg["backbone"], image_size, device_type(cfg["device"]))


def build_model(cfg: dict[str, Any], num_classes: int, image_size: int) -> nn.Module:
    """The configured backbone (pretrained weights resolved), not yet on a device."""
    return build_backbone(backbone_config(cfg, image_size), num_classes, image_size)
