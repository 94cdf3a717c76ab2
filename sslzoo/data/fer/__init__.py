"""Loaders for the real FER data sets; importing this package registers them.

Each loader reads one data set's own on-disk layout, maps its label ids onto the
canonical space (``sslzoo.data.labels``) and decodes the images once into the
cache (``sslzoo.data.cache``). See docs/datasets.md for layouts and options.
"""
from . import affectnet, ckplus, fer2013, folder, rafdb, sfew  # noqa: F401 (registers the loaders)

__all__ = ["affectnet", "ckplus", "fer2013", "folder", "rafdb", "sfew"]
