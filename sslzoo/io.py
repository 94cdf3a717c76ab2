"""Atomic file writes (a reader, or a crash, never sees half a file) and exclusive file locks."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import SSLZooError

log = logging.getLogger(__name__)


def _default_mode() -> int:
    """Permissions an ordinary ``open(path, "w")`` would give (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_mode()


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w", **open_kwargs: Any) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``.

    A crash or kill at any moment leaves either the old file or the new one, never
    a mix; the temp file is removed when ``write`` raises. The file gets the usual
    permissions (mkstemp's would be owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: json.dump(_clean(data), f, indent=1))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


#: Set to 1 to accept running without file locks where the file system has none.
NO_LOCKS_ENV = "SSLZOO_NO_LOCKS"
#: errno of a lock that another process holds (flock: EWOULDBLOCK = EAGAIN; fcntl locks: EACCES).
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
#: errno of a file system that cannot lock: NFS without a lock daemon (ENOLCK), Lustre mounted
#: without -o flock (ENOSYS), FUSE and other file systems without flock (EOPNOTSUPP / ENOTSUP).
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_warned: set[str] = set()


class LockUnsupportedError(SSLZooError):
    """The file system of a lock file cannot lock (a subclass, so callers may choose to go on)."""


class FileLock:
    """An exclusive ``flock`` on ``path``, held until :meth:`release` or the process exits.

    Why flock: the kernel drops it when its holder dies, so a killed run never leaves a
    stale lock behind (a lock *file* that merely exists would).

    ``acquire(blocking=False)`` returns False only when another process holds the lock.
    Any other failure raises :class:`SSLZooError`, because a lock that silently does not
    lock lets two processes train one run folder or a bench defer every run: on a file
    system without locking (NFS without a lock daemon, Lustre without ``-o flock``) a
    :class:`LockUnsupportedError` that says where and what to do, unless
    ``SSLZOO_NO_LOCKS=1`` accepts running unlocked (then ``acquire`` returns True, holding
    nothing, with one warning per folder).

    Why not the ``filelock`` package (installed with torch, not a dependency of sslzoo):
    where flock is missing (ENOSYS) it silently falls back to a soft lock, a marker file
    that a killed process leaves behind and whose holder cannot be checked from another
    node of a cluster, which is exactly where flock is missing; the other "cannot lock"
    errors (ENOLCK on NFS) reach the caller as a bare ``OSError`` with no advice; and its
    blocking mode polls instead of sleeping in the kernel. What sslzoo needs is the errno
    distinction below, a few lines on top of ``fcntl.flock``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, blocking: bool) -> bool:
        """Take the lock; False only if ``blocking`` is False and another process holds it."""
        if self.fd is not None:
            return True
        try:
            import fcntl
        except ImportError:          # no flock (Windows): no cross-process protection
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in _BUSY and not blocking:
                return False
            return self._cannot_lock(exc)
        self.fd = fd
        return True

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SSLZooError(f"Cannot create the lock file {self.path} ({exc.strerror}). sslzoo needs to "
                              f"write in that folder; check that it exists and is writable.") from None

    def _cannot_lock(self, exc: OSError) -> bool:
        """No lock: raise, or (``SSLZOO_NO_LOCKS=1``) warn once per folder and go on unlocked."""
        if os.environ.get(NO_LOCKS_ENV, "").strip() not in ("", "0"):
            if str(self.path.parent) not in _warned:
                _warned.add(str(self.path.parent))
                log.warning("%s=1: running without a lock on %s (%s); two processes can now work on "
                            "the same folder at once.", NO_LOCKS_ENV, self.path, exc.strerror)
            return True
        if exc.errno in _UNSUPPORTED:
            raise LockUnsupportedError(
                f"Cannot lock {self.path}: its file system does not support file locks ({exc.strerror}; "
                f"e.g. NFS without a lock daemon, or Lustre mounted without -o flock). sslzoo locks "
                f"run folders and cache entries so that two processes never write the same one. Put "
                f"the folder on a local disk (for a bench: --out on local or locking storage; for the "
                f"data cache: SSLZOO_CACHE=/local/path), or set {NO_LOCKS_ENV}=1 to run without locks "
                f"if you make sure that no two processes use the same folder.") from None
        raise SSLZooError(f"could not lock {self.path} ({exc.strerror}, errno {exc.errno}). Check that the "
                          f"folder is writable, or set {NO_LOCKS_ENV}=1 to run without locks if no two "
                          f"processes use the same folder.") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        if not self.acquire(blocking=True):   # cannot happen for a blocking flock; never go on unlocked
            raise SSLZooError(f"could not take the lock {self.path}.")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_locking(folder: str | Path) -> None:
    """Fail now, with :class:`LockUnsupportedError`'s advice, if ``folder`` cannot hold file locks.

    Why: a bench would otherwise find out once per run, after starting them.
    """
    probe = FileLock(Path(folder) / ".sslzoo-lock-probe")
    if probe.acquire(blocking=False):
        probe.release()
