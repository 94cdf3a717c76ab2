"""sslzoo.io.FileLock tells "held by another process" from "this file system cannot lock",
the bench and its runs stop with a clear error on the latter, and the decode cache builds
each entry once however many processes ask for it at the same time."""
from __future__ import annotations

import errno
import fcntl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sslzoo import io as sio
from sslzoo.bench import runner as R
from sslzoo.data import cache as C
from sslzoo.errors import SSLZooError
from sslzoo.io import FileLock

UNSUPPORTED = [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP]


def _no_flock(code: int):
    def flock(fd: int, op: int) -> None:
        raise OSError(code, "flock unsupported (simulated)")
    return flock


@pytest.fixture(autouse=True)
def _locks_on(monkeypatch):
    monkeypatch.delenv(sio.NO_LOCKS_ENV, raising=False)


@pytest.mark.parametrize("code", UNSUPPORTED)
def test_unsupported_locking_is_an_error_not_busy(tmp_path, monkeypatch, code):
    monkeypatch.setattr(fcntl, "flock", _no_flock(code))
    path = tmp_path / "run" / ".lock"
    path.parent.mkdir()
    for blocking in (False, True):
        with pytest.raises(SSLZooError) as info:
            FileLock(path).acquire(blocking=blocking)
        msg = str(info.value)
        assert str(path) in msg and "local disk" in msg and f"{sio.NO_LOCKS_ENV}=1" in msg
    with pytest.raises(SSLZooError):
        with FileLock(path):
            pass
    with pytest.raises(SSLZooError):       # was: True, so a bench deferred every run
        R.lock_busy(path.parent)


def test_unsupported_locking_can_be_accepted(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.ENOLCK))
    monkeypatch.setenv(sio.NO_LOCKS_ENV, "1")
    lock = FileLock(tmp_path / ".lock")
    with caplog.at_level("WARNING", logger="sslzoo.io"):
        assert lock.acquire(blocking=False) is True
    assert any("without a lock" in r.getMessage() for r in caplog.records)
    lock.release()
    assert R.lock_busy(tmp_path) is False
    with FileLock(tmp_path / ".lock"):
        pass


def test_other_lock_errors_are_errors_too(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.EIO))
    with pytest.raises(SSLZooError, match="could not lock"):
        FileLock(tmp_path / ".lock").acquire(blocking=False)


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_is_busy(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = FileLock(path)
        assert lock.acquire(blocking=False) is False and lock.fd is None
        assert R.lock_busy(tmp_path) is True
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert R.lock_busy(tmp_path) is False     # the kernel dropped it when the holder exited
    with FileLock(path) as lock:
        assert lock.fd is not None
        assert FileLock(path).acquire(blocking=False) is False   # held by us now (another open file)
    assert FileLock(path).acquire(blocking=False) is True


def test_run_process_reports_unsupported_locking(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.ENOLCK))
    monkeypatch.delenv(R.PARENT_ENV, raising=False)
    assert R._child_main([str(tmp_path), "--hash", "x"]) == 2
    captured = capsys.readouterr()
    assert "waiting" not in captured.out
    assert "error:" in captured.err and sio.NO_LOCKS_ENV in captured.err and "Traceback" not in captured.err


SUITE = """\
name: locks
defaults: {backbone: {name: smallcnn, width: 8}, epochs: 1, seeds: 1}
settings: [{dataset: synthfer, labels: 35}]
methods: [{name: Supervised, algo: supervised}]
"""


def test_bench_on_a_folder_without_locks_stops_before_running(tmp_path, monkeypatch, capsys):
    class MustNotRun:
        def __init__(self, *a, **k):
            raise AssertionError("the bench started runs on a folder it cannot lock")
    monkeypatch.setattr(R, "BenchRunner", MustNotRun)
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.ENOLCK))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    from sslzoo.cli import main
    code = main(["bench", "--suite", str(suite), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and sio.NO_LOCKS_ENV in err and "local disk" in err


# ----------------------------------------------------------------------------- the decode cache

def _counting_builder(calls: list[int], delay: float):
    def build(tmp: Path | None):
        calls.append(1)
        time.sleep(delay)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(3, 4, 4, 3))
        images[:] = 7
        return images, {"labels": [0, 1, 2], "ids": ["a", "b", "c"]}
    return build


def test_cache_builds_each_key_once_for_concurrent_callers(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    build = _counting_builder(calls, delay=0.5)
    entries: list = []
    errors: list = []

    def worker() -> None:
        try:
            entries.append(C.get_or_build("synthetic-8px-key", build))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(entries) == 3
    assert len(calls) == 1                                   # was: one decode per caller
    assert sorted(e.hit for e in entries) == [False, True, True]
    assert all(e.path == entries[0].path and int(e.images[0, 0, 0, 0]) == 7 for e in entries)
    assert (tmp_path / "cache" / "locks" / "decoded-synthetic-8px-key.lock").is_file()
    assert sorted(p.name for p in (tmp_path / "cache" / "decoded").iterdir()) == ["synthetic-8px-key"]


def test_cache_without_locks_still_builds(tmp_path, monkeypatch):
    """On a shared cache that cannot lock, building the entry anyway is safe (atomic rename)."""
    monkeypatch.setenv("SSLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.ENOLCK))
    calls: list[int] = []
    with pytest.warns(UserWarning, match="cannot lock"):
        entry = C.get_or_build("synthetic-8px-key", _counting_builder(calls, 0.0))
    assert len(calls) == 1 and entry.hit is False
