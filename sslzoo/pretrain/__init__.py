"""Pretrained backbones built offline: ``backbone.pretrained=NAME`` (recipes in :mod:`.recipes`)."""
from . import recipes  # noqa: F401 - registers the built-in recipes
from .store import PretrainRecipe, pretrained_weights, register_pretrained, resolve_pretrained  # noqa: F401
