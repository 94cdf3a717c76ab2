"""The algorithm zoo: one file per algorithm, each registered by name.

Installed as ``sslzoo.algorithms`` (see setup.cfg's package_dir), so installing
sslzoo never puts a generic top-level module named ``algorithms`` into
site-packages.
"""
from . import adacm, fixmatch, supervised  # noqa: F401  (import registers them)
