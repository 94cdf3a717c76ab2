"""Built-in threshold policies: one small file each, registered by name on import."""
import importlib
import pkgutil

from .spec import build_policy, parse_policy_spec  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
