"""User-facing errors.

Why a dedicated type: the CLI prints an `SSLZooError` as one readable paragraph
(what was wrong, what was expected, where) and exits non-zero; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class SSLZooError(Exception):
    """An error caused by the user's input (a name, a path, a config value)."""


class DivergedError(SSLZooError):
    """A loss became non-finite; carries where it happened so runs can record it."""

    def __init__(self, message: str, *, epoch: int, iteration: int, term: str):
        super().__init__(message)
        self.epoch = epoch
        self.iteration = iteration
        self.term = term


def run_command(name: str, fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command's body with the CLI's contract: a user error prints one paragraph on stderr
    and exits 2 (3 for a diverged run, 130 when interrupted); ``debug`` shows the traceback."""
    try:
        return int(fn() or 0)
    except SSLZooError as exc:
        if debug:
            raise
        kind = "diverged" if isinstance(exc, DivergedError) else "error"
        print(f"sslzoo {name}: {kind}: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, DivergedError) else 2
    except KeyboardInterrupt as exc:
        print(f"sslzoo {name}: interrupted. {exc}", file=sys.stderr)
        return 130
