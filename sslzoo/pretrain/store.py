"""Named pretrained backbones: ``backbone.pretrained=NAME`` trains them on first use and caches them.

Why built here and not shipped: the weights depend on the backbone's architecture and the
image size a run uses, and the data they are trained on is generated offline anyway, so a
recipe (data set + method + hyperparameters) is the thing to name and version. The weights
file lands in ``<cache>/pretrained/<name>-<key>.pt``; the key hashes the recipe, its
version, the backbone's architecture options, the image size and the device type, so a
changed recipe never reuses stale weights and two machines with the same key hold the same
file. A file lock lets one process build it while others (a bench's parallel runs, two
``sslzoo train`` commands) wait and then read it.

Reproducibility: the recipe fixes the number of CPU threads it trains with (float sums
depend on it), so every CPU machine builds bit-identical weights for the same key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import SSLZooError
from ..io import FileLock, atomic_write
from ..paths import cache_dir
from ..registry import BACKBONES, PRETRAINED

HEAD_OPTIONS = ("weights", "pretrained", "dropout", "normalize_feature")   # not part of the trained layers
FORMAT = "sslzoo-pretrained-1"


@dataclass(frozen=True)
class PretrainRecipe:
    """How to pretrain a backbone: on whose images, with which method and hyperparameters."""

    description: str
    dataset: str                                  # a registered data set; its training images, labels unused
    method: Callable[..., None]    # method(model, images uint8 [N,3,H,W], seed=, device=, log=, **params)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 2                              # CPU threads while training (fixes float summation order)
    version: int = 1                              # bump when the code behind the recipe changes its weights
    # weights key -> SHA-256 of the weights file behind published numbers (the README's); not part of the key
    reference_sha256: dict[str, str] = field(default_factory=dict)


def say(message: str) -> None:
    """Progress lines, flushed: a bench's output often goes to a file, and pretraining takes minutes."""
    print(message, flush=True)


def register_pretrained(name: str, recipe: PretrainRecipe) -> PretrainRecipe:
    """Make ``backbone.pretrained=<name>`` available (one call in any imported file or plugin)."""
    return PRETRAINED.register(name)(recipe)


def architecture(backbone_cfg: dict[str, Any]) -> dict[str, Any]:
    """The backbone options that shape its trained layers (the head's are retrained anyway)."""
    return {k: v for k, v in backbone_cfg.items() if k not in HEAD_OPTIONS and v is not None}


def _recipe_fields(name: str) -> dict[str, Any]:
    recipe = PRETRAINED.get(name)
    return {"name": name.lower(), "version": recipe.version, "dataset": recipe.dataset,
            "method": f"{recipe.method.__module__}.{recipe.method.__qualname__}", "params": recipe.params,
            "seed": recipe.seed, "threads": recipe.threads}


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_fingerprint(name: str) -> str:
    """What the recipe trains (for a run's config hash); "unknown" for a name that is no recipe."""
    return _digest(_recipe_fields(name)) if name.lower() in PRETRAINED else "unknown"


def weights_key(name: str, backbone_cfg: dict[str, Any], image_size: int, device_type: str) -> str:
    return _digest({**_recipe_fields(name), "backbone": architecture(backbone_cfg),
                    "image_size": int(image_size), "device": device_type})


def weights_path(name: str, backbone_cfg: dict[str, Any], image_size: int, device_type: str) -> Path:
    """Where the weights for this recipe, backbone, image size and device type live (whether built or not)."""
    return cache_dir() / "pretrained" / f"{name.lower()}-{weights_key(name, backbone_cfg, image_size, device_type)}.pt"


def pretrained_weights(name: str, backbone_cfg: dict[str, Any], image_size: int, device_type: str,
                       log: Callable[[str], None] = say) -> Path:
    """The weights file of recipe ``name`` for this backbone, trained on ``device_type`` first if not cached.

    The run's own device type: a ``--device cpu`` run on a GPU machine fine-tunes CPU-built
    weights, and the key (hence the file) says which device built them.
    """
    device = torch.device(device_type)
    path = weights_path(name, backbone_cfg, image_size, device.type)
    if is_built(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        if is_built(path):                       # another process built it while we waited
            return path
        recipe = PRETRAINED.get(name)
        log(f"pretraining backbone '{backbone_cfg.get('name')}' with '{name}' ({recipe.description}); "
            f"once per machine, cached at {path}")
        state = train_recipe(name, recipe, backbone_cfg, image_size, device, log)
        meta = {"format": FORMAT, "recipe": name.lower(), "version": recipe.version, "params": recipe.params,
                "dataset": recipe.dataset, "backbone": architecture(backbone_cfg), "image_size": int(image_size)}
        atomic_write(path, lambda f: torch.save({"state_dict": state, "pretrained": meta}, f), mode="wb")
    return path


def train_recipe(name: str, recipe: PretrainRecipe, backbone_cfg: dict[str, Any], image_size: int,
                 device: torch.device, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Train a fresh backbone with ``recipe``; its state dict without the (discarded) head.

    Under its own random stream (``fork_rng``): the caller's generators (a run that was seeded
    before its weights were found missing) are left exactly as they were.
    """
    from ..data.prepare import load_bundle
    from ..data.views import ImageRows
    from ..models.build import build_backbone
    bundle = load_bundle(recipe.dataset, None, image_size, {})
    images = ImageRows(bundle.train.images)   # batches are read from the memory-mapped cache as needed
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(recipe.seed)
            model: nn.Module = build_backbone({**architecture(backbone_cfg), "dropout": 0.0,
                                               "normalize_feature": False}, 1, image_size)
            recipe.method(model, images, seed=recipe.seed, device=device, log=log, **recipe.params)
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_note(name: str, path: Path) -> str | None:
    """Whether the weights file at ``path`` is the build behind the README's numbers, in one sentence.

    None when recipe ``name`` records no reference build at all (a plugin's recipe). Why: the
    weights are built locally, and another torch, CPU or device can give other bits, hence
    other numbers than the README's; saying so beats a silent difference.
    """
    recipe = PRETRAINED.get(name)
    if not recipe.reference_sha256:
        return None
    key = path.stem.rpartition("-")[2]
    expected = recipe.reference_sha256.get(key)
    if expected is None:
        return (f"{path.name}: no reference SHA-256 recorded for this recipe, backbone, image size and device "
                f"(not the weights behind the README's numbers); see docs/pretraining.md")
    actual = file_sha256(path)
    if actual == expected:
        return f"{path.name}: SHA-256 {actual[:16]}... matches the weights behind the README's numbers"
    return (f"{path.name}: SHA-256 {actual[:16]}... differs from the reference {expected[:16]}...: expect other "
            f"numbers than the README's; see docs/pretraining.md")


def is_built(path: Path) -> bool:
    """A finished weights file (atomic writes leave no half files; a foreign or broken one is rebuilt)."""
    if not path.is_file():
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: rebuild it
        return False
    return isinstance(ckpt, dict) and ckpt.get("pretrained", {}).get("format") == FORMAT


def recipe_name(backbone_cfg: dict[str, Any]) -> str | None:
    """The recipe ``backbone.pretrained`` names, or None; an error when ``weights`` is given as well."""
    name = backbone_cfg.get("pretrained")
    if not name or str(name).lower() not in PRETRAINED:
        return None
    if backbone_cfg.get("weights"):
        raise SSLZooError(f"backbone.pretrained={name} and backbone.weights={backbone_cfg['weights']} both "
                          f"name the weights to start from; keep one of them (a suite that sets "
                          f"backbone.pretrained, such as the default one, takes --set backbone.pretrained=null).")
    return str(name)


def resolve_pretrained(backbone_cfg: dict[str, Any], image_size: int, device_type: str) -> dict[str, Any]:
    """``backbone_cfg`` with a recipe name in ``pretrained`` replaced by ``weights=<its cached file>``
    (built on ``device_type`` first if needed).

    Other values of ``pretrained`` (resnet18's ``imagenet``) are the backbone's own business.
    """
    from ..models.build import accepted_options
    name = recipe_name(backbone_cfg)
    if name is None:
        return backbone_cfg
    accepted = accepted_options(BACKBONES.get(backbone_cfg["name"]))
    if accepted is not None and "weights" not in accepted:
        raise SSLZooError(f"backbone '{backbone_cfg['name']}' takes no weights file, so backbone.pretrained={name} "
                          f"cannot start it from pretrained weights (it takes: {', '.join(sorted(accepted))}).")
    path = pretrained_weights(name, backbone_cfg, image_size, device_type)
    return {**{k: v for k, v in backbone_cfg.items() if k != "pretrained"}, "weights": str(path)}


def prebuild(configs: Iterable[dict[str, Any]], log: Callable[[str], None] = say) -> list[Path]:
    """Build (or find) the weights every run config in ``configs`` starts from, once per file.

    Configs without a recipe in ``backbone.pretrained``, or without an explicit ``image_size``
    (the data set decides it, known only once loaded), are left to their runs. Each is built on
    the device type its runs will use.
    """
    from ..device import device_type
    configs = list(configs)
    names = [recipe_name(cfg.get("backbone") or {}) for cfg in configs]   # every conflict before any build
    paths: list[Path] = []
    for cfg, name in zip(configs, names):
        if name is None or not cfg.get("image_size"):
            continue
        kind = device_type(str(cfg.get("device", "auto")))
        if weights_path(name, cfg["backbone"], int(cfg["image_size"]), kind) not in paths:   # read each file once
            paths.append(pretrained_weights(name, cfg["backbone"], int(cfg["image_size"]), kind, log))
            note = reference_note(name, paths[-1])
            if note:
                log(note)
    return paths
