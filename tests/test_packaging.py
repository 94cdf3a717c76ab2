"""A non-editable install must contain every sub-package (setup.cfg lists them by hand)."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_sslzoo_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sslzoo").rglob("__init__.py")}
    assert on_disk <= listed, f"missing from setup.cfg [options] packages: {sorted(on_disk - listed)}"
