"""The run lock: an ``flock`` on ``<ledger>.lock`` that marks a run (or retry, or resolve) alive.

Two kinds of holder, told apart by the kind of lock, so a reader can never make a run fail:

- A **run** holds it exclusively (``LOCK_EX``) for its whole life; the kernel drops it when the
  process ends, however it ends (``kill -9`` included). The file holds the pid of the last run
  that took it, for the "in use by another run (pid N)" message.
- A **reader** (``ledger show``) that wants to know whether a run is alive probes it: it opens
  the file read-only (never creating it), takes a *shared* lock without waiting, and lets go
  at once. Held exclusively means a run is alive; otherwise the stored "running" is stale.

A run that finds the lock taken asks which kind holds it by trying a shared lock itself: that
fails only while a run holds it exclusively (then it refuses, naming the pid); if it succeeds,
only probes were in the way, so it lets go and tries again a moment later. So a probe can delay
a starting run by the instant it holds the lock, never make it fail.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import time
from pathlib import Path
from typing import Final

from importer.errors import LedgerError, LedgerLockedError
from importer.files import open_private_fd

_BUSY: Final = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
# How long only shared holders may keep a starting run waiting. A probe holds the lock for
# microseconds; this is for a foreign process (`flock -s`) that holds it shared and stays.
SHARED_PATIENCE_S: Final = 10.0


def lock_path_for(ledger: Path) -> Path:
    """``<ledger>.lock``, next to the ledger."""
    return ledger.with_name(ledger.name + ".lock")


def acquire(lock_path: Path, ledger: Path, *, patience_s: float = SHARED_PATIENCE_S) -> int:
    """Take the run lock exclusively; the descriptor that holds it (closing it lets go)."""
    try:
        fd = open_private_fd(lock_path)
    except OSError as e:
        raise LedgerError(f"cannot create the lock file {lock_path}: {e.strerror}") from None
    try:
        _take_exclusive(fd, lock_path, ledger, patience_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _take_exclusive(fd: int, lock_path: Path, ledger: Path, patience_s: float) -> None:
    deadline = time.monotonic() + patience_s
    while not _try_flock(fd, fcntl.LOCK_EX, lock_path):
        # Taken. By a run (exclusive) or only by probes (shared)? A shared lock tells.
        if not _try_flock(fd, fcntl.LOCK_SH, lock_path):
            raise _held_by_a_run(fd, ledger)
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            raise LedgerLockedError(
                f"the lock {lock_path} of the ledger {ledger} has been held shared for over "
                f"{patience_s:g} s by a process that is not a fyno-import run",
                hint="stop the process holding it (fuser names it), or use another --ledger path",
            )
        # Jitter, so two runs starting together (each seeing the other's shared try) part ways.
        time.sleep(random.uniform(0.0002, 0.002))


def _try_flock(fd: int, kind: int, lock_path: Path) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise LedgerError(f"cannot lock {lock_path}: {e.strerror}") from None
    return True


def _held_by_a_run(fd: int, ledger: Path) -> LedgerLockedError:
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    who = f"pid {holder}" if holder.isdigit() else "pid unknown"
    return LedgerLockedError(
        f"the ledger {ledger} is in use by another run ({who})",
        hint="wait for that run to finish, or use another --ledger path",
    )


def probe(lock_path: Path) -> bool | None:
    """Whether a run holds the lock now; None when that cannot be told (no access to the file).

    Read-only and non-blocking: it creates nothing, and holds a shared lock only between two
    system calls, which a starting run waits out (see the module's docstring).
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no run ever took it
    except OSError:
        return None  # e.g. another user's 0600 lock file: keep the stored status
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return True if e.errno in _BUSY else None
    finally:
        os.close(fd)  # lets go of the shared lock, if taken
    return False
