"""The layering the README describes holds: imports only point down (sslzoo/layers.py), no cycles."""
from __future__ import annotations

from pathlib import Path

import pytest

from sslzoo import layers

REPO = Path(__file__).resolve().parent.parent


def test_no_upward_import_and_no_cycle():
    assert layers.violations(REPO) == []


def test_every_module_has_a_layer():
    for module in layers.modules(REPO):
        layers.layer_of(module)   # raises for a module the table does not place


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    """The check can fail: a data module importing the trainer is both upward and a cycle."""
    for package, folder in layers.SOURCES.items():
        src = REPO / folder
        for path in src.rglob("*.py"):
            target = tmp_path / folder / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    bad = tmp_path / "sslzoo" / "data" / "views.py"
    bad.write_text(bad.read_text() + "\n\ndef _oops():\n    from ..trainer import Trainer  # noqa\n")
    problems = layers.violations(tmp_path)
    assert any(p.startswith("upward import: sslzoo.data.views (data) imports sslzoo.trainer") for p in problems)
    assert any(p.startswith("import cycle:") and "sslzoo.data.views" in p for p in problems)


def test_an_unplaced_module_is_an_error():
    with pytest.raises(KeyError, match="no layer"):
        layers.layer_of("somewhere.else")
