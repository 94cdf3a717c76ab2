"""User-facing errors.

Why a dedicated type: the CLI prints an `SSLZooError` as one readable paragraph
(what was wrong, what was expected, where) and exits non-zero; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class SSLZooError(Exception):
    """An error caused by the user's input (a name, a path, a config value)."""


class DivergedError(SSLZooError):
    """A loss became non-finite; carries where it happened so runs can record it."""

    def __init__(self, message: str, *, epoch: int, iteration: int, term: str):
        super().__init__(message)
        self.epoch = epoch
        self.iteration = iteration
        self.term = term
