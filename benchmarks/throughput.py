"""Training-throughput benchmark: ``python -m benchmarks.throughput [options]`` from the repo root.

A thin entry point: the logic lives in :mod:`sslzoo.perf` so that the installed
``sslzoo throughput`` command runs exactly the same benchmark. See
docs/performance.md for what is measured and the numbers on record.
"""
from __future__ import annotations

import sys

from sslzoo.perf import main

if __name__ == "__main__":
    sys.exit(main())
