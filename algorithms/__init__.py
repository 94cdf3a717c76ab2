"""The algorithm zoo: one file per algorithm, each registered by name on import.

Installed as ``sslzoo.algorithms`` (see setup.cfg's package_dir), so installing
sslzoo never puts a generic top-level module named ``algorithms`` into
site-packages. Every module in this folder is imported, so adding an algorithm
is adding a file.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
