"""Where sslzoo keeps caches (generated and decoded data sets)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SSLZOO_CACHE`` if set, else ``~/.cache/sslzoo``; created on demand."""
    root = Path(os.environ.get("SSLZOO_CACHE") or Path.home() / ".cache" / "sslzoo").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
