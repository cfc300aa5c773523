"""The run lock: an exclusive ``flock`` on ``<ledger>.lock`` held for a run's whole life.

A run (``run``, ``retry``, ``ledger resolve``) takes it without waiting: when another process
holds it, the run refuses at once, naming the pid the holder wrote into the file. The kernel drops
the lock when the process ends, however it ends (``kill -9`` included).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Final

from importer.errors import LedgerError, LedgerLockedError
from importer.files import open_private_fd

_BUSY: Final = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def lock_path_for(ledger: Path) -> Path:
    """``<ledger>.lock``, next to the ledger."""
    return ledger.with_name(ledger.name + ".lock")


def acquire(lock_path: Path, ledger: Path) -> int:
    """Take the run lock exclusively; the descriptor that holds it (closing it lets go)."""
    try:
        fd = open_private_fd(lock_path)
    except OSError as e:
        raise LedgerError(f"cannot create the lock file {lock_path}: {e.strerror}") from None
    try:
        if not _try_flock(fd, fcntl.LOCK_EX, lock_path):
            raise _held_by_a_run(fd, ledger)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
