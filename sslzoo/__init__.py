"""sslzoo: a registry-based zoo of semi-supervised learning algorithms for facial expression recognition.

The Python API (``sslzoo.fit``, ``sslzoo.load_run``, ``sslzoo.list_algorithms``, ...) lives in
:mod:`sslzoo.api` and is imported on first use, so ``import sslzoo.errors`` (or the bench's run
processes) do not pay for torch before they need it.
"""
from .version import __version__

_API = ("fit", "FitResult", "load_run", "Run", "Predictions", "list_algorithms", "list_policies", "list_datasets",
        "list_backbones", "list_pretrained", "create_algorithm", "create_policy")


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'sslzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
