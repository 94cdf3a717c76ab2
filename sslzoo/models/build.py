"""Build a backbone from its config section."""
from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any, Callable

from torch import nn

from ..errors import SSLZooError
from ..registry import BACKBONES, PRETRAINED


def accepted_options(factory: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword options a backbone factory takes; None if it takes any (``**kwargs``)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"num_classes"}


def build_backbone(cfg: dict[str, Any], num_classes: int, image_size: int) -> nn.Module:
    """Call the registered factory with the section's options, warning about the ones it ignores.

    A pretraining recipe in ``pretrained`` must already be resolved to ``weights``
    (``sslzoo.factory.build_model`` does it: pretraining sits above the backbones).

    A factory that names an ``image_size`` keyword receives the run's image size (smallcnn
    picks its first stride from it); the config cannot set it, the data decides it.

    Why a warning and not an error: a data set's YAML sets options for its default backbone
    (synthfer: ``width`` for smallcnn), and one ``--set backbone.weights=...`` serves a whole
    suite whose rows mix backbones (paper/table4). Those keys must not stop a run that switches
    backbone, but a typo (``widht``) must not pass unnoticed either.
    """
    name = cfg["name"]
    factory = BACKBONES.get(name)
    accepted = accepted_options(factory)
    options = {k: v for k, v in cfg.items() if k != "name" and v is not None}
    if accepted is not None and "image_size" in accepted:   # the factory adapts to the input size itself
        options["image_size"] = image_size
    if name == "resnet18" and "small_input" not in options:
        options["small_input"] = image_size <= 64
    if "pretrained" in options and accepted is not None and "pretrained" not in accepted:
        known = PRETRAINED.names()
        close = difflib.get_close_matches(str(options["pretrained"]).lower(), known, 1)
        raise SSLZooError(f"backbone.pretrained={options['pretrained']!r} is not a pretraining recipe"
                          + (f" (did you mean '{close[0]}'?)" if close else "")
                          + f"; known: {', '.join(known)}. "
                          f"Or pass a weights file with backbone.weights=PATH.")
    if accepted is not None:
        ignored = sorted(set(options) - accepted)
        if ignored:
            hints = [f"'{k}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, accepted, 1)) else "")
                     for k in ignored]
            warnings.warn(f"backbone '{name}' ignores option(s) {', '.join(hints)}; "
                          f"it takes: {', '.join(sorted(accepted)) or 'no options'}", stacklevel=2)
        options = {k: v for k, v in options.items() if k in accepted}
    return factory(num_classes, **options)
