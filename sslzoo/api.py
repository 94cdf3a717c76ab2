"""sslzoo's Python API: train with your own network and data, list and create components, load runs.

    import sslzoo
    result = sslzoo.fit(algorithm="adacm", backbone=my_net, labeled=(x_l, y_l), unlabeled=x_u,
                        test=(x_t, y_t), epochs=2, iters_per_epoch=10, out="runs/api", seed=0,
                        policy="fixed:0.8", adacm={"lambda_c": 0})
    result.final_acc, result.best_test_acc, result.history, result.model

The command line is a thin layer over these functions (``sslzoo train`` is :func:`fit` with a
config, ``sslzoo eval``/``predict`` use :func:`load_run`); docs/api.md has the whole map.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from .algorithm import SSLAlgorithm
from .callbacks import Callback
from .config import API_BACKBONE, API_DATASET, load_yaml, resolve
from .distributed import shutdown
from .errors import SSLZooError
from .evaluation import Predictor
from .factory import build_algorithm
from .policies import build_policy
from .policy import ThresholdPolicy
from .registry import ALGORITHMS, BACKBONES, DATASETS, POLICIES, PRETRAINED, load_plugin
from .predict import Predictions  # noqa: F401 - part of the API (what Run.predict returns)
from .runs import Run, load_run  # noqa: F401 - part of the API

ConfigLike = dict[str, Any] | str | Path | Sequence[dict[str, Any] | str | Path] | None


def list_algorithms() -> list[str]:
    """Registered algorithm names (built-ins, installed plugins, loaded ``--plugin`` files)."""
    return ALGORITHMS.names()


def list_policies() -> list[str]:
    """Registered threshold-policy names."""
    return POLICIES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_pretrained() -> list[str]:
    """Pretraining recipes usable as ``backbone={"name": ..., "pretrained": NAME}``."""
    return PRETRAINED.names()


def create_policy(spec: str | dict[str, Any], **kwargs: Any) -> ThresholdPolicy:
    """A threshold policy from a spec (``"fixed:0.8"``, ``"flexmatch"``) and keyword settings."""
    return build_policy(spec, kwargs or None)


def create_algorithm(name: str, num_classes: int, policy: str | dict[str, Any] | ThresholdPolicy | None = None,
                     **kwargs: Any) -> SSLAlgorithm:
    """An algorithm by name with its hyperparameters (timm's ``create_model`` convention).

    ``policy``: a spec or a policy object; default: the algorithm's own. ``kwargs`` are the
    algorithm's config section (``create_algorithm("adacm", 7, lambda_c=0)``).
    """
    if isinstance(policy, ThresholdPolicy):
        cls = ALGORITHMS.get(name)
        if not cls.uses_policy:
            raise SSLZooError(f"Algorithm '{name}' takes no threshold policy.")
        return cls(num_classes, policy, **kwargs)
    return build_algorithm({"algo": name, "policy": policy, "policies": {}, name: kwargs}, num_classes)


@dataclass
class FitResult:
    """What :func:`fit` returns: the run's metrics.json content and its evaluation (EMA) model."""

    metrics: dict[str, Any]
    model: nn.Module
    config: dict[str, Any]
    out: Path
    predictor: Predictor

    @property
    def status(self) -> str:
        return self.metrics["status"]

    @property
    def final_acc(self) -> float | None:
        return self.metrics["final_acc"]

    @property
    def best_test_acc(self) -> float | None:
        return self.metrics["best_test_acc"]

    @property
    def val_selected_acc(self) -> float | None:
        return self.metrics["val_selected_acc"]

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics["history"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metrics["classes"])

    def predict(self, images: Any) -> Tensor:
        """Softmax probabilities [N, C] of the EMA model on uint8 images ([N, H, W, 3] or (images, labels))."""
        from .data.user import image_set
        probs, _, _ = self.predictor(self.model, image_set(images, "images", labeled=False))
        return probs


def config_layers(config: ConfigLike) -> list[dict[str, Any]]:
    """``config`` as a list of layers: a dict, a YAML path, or a sequence of them (later ones win)."""
    if config is None:
        return []
    if isinstance(config, (dict, str, Path)):
        config = [config]
    return [dict(c) if isinstance(c, dict) else load_yaml(c) for c in config]


def fit(algorithm: str | SSLAlgorithm | None = None, backbone: nn.Module | str | dict[str, Any] | None = None,
        labeled: Any = None, unlabeled: Any = None, test: Any = None, *, val: Any = None,
        classes: Sequence[str] | None = None, config: ConfigLike = None, out: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, stop_after_epoch: int | None = None,
        callbacks: Sequence[Callback] = (), plugins: Sequence[str | Path] = (), **overrides: Any) -> FitResult:
    """Train one run and return its metrics and evaluation model.

    Args:
        algorithm: a registered name (``"adacm"``) or an :class:`SSLAlgorithm` instance
            (:func:`create_algorithm`); default: the config's (``adacm``).
        backbone: any ``nn.Module`` returning logits or ``(logits, features)``; or a registered
            backbone name or config section (``{"name": "resnet18", "pretrained": "imagenet"}``).
        labeled, unlabeled, test, val: your images: uint8 ``[N, H, W, 3]`` arrays/tensors, ``(images,
            labels)`` pairs, or ``torch.utils.data.Dataset`` of ``(image, label)``. Omit them to train on
            a registered data set (``dataset="rafdb", data_root=...``).
        classes: class names of your labels (default "0", "1", ...).
        config: config layers under the keyword overrides (a dict, a YAML file, or a list of them).
        out: the run folder (default ``runs/fit``).
        resume, overwrite, stop_after_epoch: as ``sslzoo train --resume / --overwrite / --stop-after-epoch``.
        callbacks: extra :class:`sslzoo.callbacks.Callback` objects (loggers, early inspection).
        plugins: Python files that register components (``--plugin``).
        overrides: any config key, e.g. ``epochs=2, policy="fixed:0.8", adacm={"lambda_c": 0}``.
    """
    from .data.user import user_run_data
    from .models.wrap import as_backbone
    from .trainer import Trainer
    for plugin in plugins:
        load_plugin(plugin)
    layers = config_layers(config)
    user: dict[str, Any] = dict(overrides)
    algo_obj = algorithm if isinstance(algorithm, SSLAlgorithm) else None
    if isinstance(algorithm, str):
        user["algo"] = algorithm
    elif algo_obj is not None:
        user["algo"] = algo_obj.name if algo_obj.name in ALGORITHMS else "supervised"   # its section is unused
    model = None
    if isinstance(backbone, nn.Module):
        model = as_backbone(backbone)
        user["backbone"] = {"name": f"{API_BACKBONE}{type(backbone).__qualname__}"}
    elif isinstance(backbone, str):
        user["backbone"] = {"name": backbone}
    elif isinstance(backbone, dict):
        user["backbone"] = dict(backbone)
    if out is not None:
        user["out"] = str(out)
    elif not any("out" in layer for layer in layers):
        user["out"] = "runs/fit"
    data = None
    if labeled is not None:
        folder = Path(user.get("out") or resolve(layers)["out"]) / "user_data"
        data = user_run_data(labeled, unlabeled, test, val=val, classes=classes, folder=folder)
        user.update(dataset=API_DATASET, labels=len(data.labeled), image_size=data.bundle.image_size)
    elif any(v is not None for v in (unlabeled, test, val)):
        raise SSLZooError("fit(): give labeled=(images, labels) together with unlabeled/test/val, or none of "
                          "them (to train on a registered data set, e.g. dataset='synthfer').")
    cfg = resolve(layers + [user])
    if algo_obj is not None:
        cfg["algo"] = algo_obj.name
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite, stop_after_epoch=stop_after_epoch,
                          model=model, algorithm=algo_obj, data=data, callbacks=callbacks)
        metrics = trainer.fit()
    finally:
        shutdown()
    return FitResult(metrics, trainer.ema.module, cfg, Path(cfg["out"]), trainer.predictor)
