"""Named registries for algorithms, threshold policies, data sets, backbones and pretrained backbones.

Why: the trainer, the CLI and the bench only ever see names. Adding a component
is one decorator (``@register_policy("topk")``) in any imported file, a
``--plugin path.py`` file, or an installed package exposing the
``sslzoo.plugins`` entry-point group.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import SSLZooError

T = TypeVar("T")

ENTRY_POINT_GROUP = "sslzoo.plugins"


class Registry(Generic[T]):
    """A name -> component table with helpful errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name.lower()
            existing = self._items.get(key)
            if existing is not None and existing is not obj:
                same_def = (getattr(existing, "__qualname__", None) == getattr(obj, "__qualname__", None)
                            and getattr(existing, "__module__", None) == getattr(obj, "__module__", None))
                if not same_def:
                    raise SSLZooError(
                        f"{self.kind} '{name}' is registered twice: by "
                        f"{_where(existing)} and by {_where(obj)}. Pick another name.")
            self._items[key] = obj
            return obj
        return decorator

    def get(self, name: str) -> T:
        load_builtins()
        key = str(name).lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SSLZooError(
                f"Unknown {self.kind} '{name}'.{hint} Known {self.kind}s: "
                f"{', '.join(sorted(self._items))}. (Run `sslzoo list` for descriptions; "
                f"load your own with --plugin FILE.py.)")
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return str(name).lower() in self._items

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        load_builtins()
        return iter(sorted(self._items.items()))


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def describe(obj: Any) -> str:
    """First line of a component's docstring: the one-line description `sslzoo list` shows."""
    if isinstance(getattr(obj, "description", None), str):   # e.g. a pretraining recipe (a dataclass)
        return obj.description
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


ALGORITHMS: Registry = Registry("algorithm")
POLICIES: Registry = Registry("threshold policy")
DATASETS: Registry = Registry("data set")
BACKBONES: Registry = Registry("backbone")
PRETRAINED: Registry = Registry("pretrained backbone")

register_algorithm = ALGORITHMS.register
register_policy = POLICIES.register
register_dataset = DATASETS.register
register_backbone = BACKBONES.register

_BUILTIN_MODULES = (
    "sslzoo.policies",
    "sslzoo.algorithms",
    "sslzoo.data.builtin",
    "sslzoo.data.fer",
    "sslzoo.models",
    "sslzoo.pretrain",
)
_loaded = False


def load_builtins() -> None:
    """Import the built-in components once, then any installed entry-point plugins."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - report which plugin broke, keep the cause
            raise SSLZooError(
                f"The installed plugin '{entry.name}' ({entry.value}, entry-point group "
                f"'{ENTRY_POINT_GROUP}') failed to load: {exc!r}") from exc


def load_plugin(path: str | Path) -> None:
    """Import a user's Python file so its ``@register_*`` decorators run."""
    load_builtins()
    path = Path(path).expanduser()
    if not path.is_file():
        raise SSLZooError(f"Plugin file '{path}' does not exist (expected a .py file that "
                          f"registers components with @register_policy / @register_algorithm).")
    # the same name in every process (str hashes are salted per process): component fingerprints
    # such as a pretraining recipe's include the module name
    module_name = f"sslzoo_plugin_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SSLZooError(f"Plugin '{path}' is not an importable Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SSLZooError:
        del sys.modules[module_name]
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug, reported with its location
        del sys.modules[module_name]
        raise SSLZooError(f"Plugin '{path}' raised while loading: {type(exc).__name__}: {exc}") from exc
