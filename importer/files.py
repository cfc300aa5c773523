"""Files only their owner may read: the ledger, its lock, the rejects file, exports, the state.

Each may hold personal data (rows, ids), so each is created with mode 0600 from the start (never
created readable and narrowed afterwards), and an existing file keeps no wider mode.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Literal

PRIVATE_MODE = 0o600


def open_private(path: Path | str, mode: Literal["wb", "w"] = "wb") -> IO[bytes] | IO[str]:
    """Open ``path`` for writing, truncated, readable and writable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # an existing file keeps no wider mode
    except OSError:
        os.close(fd)
        raise
    if mode == "w":
        return os.fdopen(fd, "w", encoding="utf-8", newline="")
    return os.fdopen(fd, "wb")


def create_private(path: Path | str) -> bool:
    """Create an empty owner-only file unless one exists; True when this call created it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
    except FileExistsError:
        return False
    return True


def open_private_fd(path: Path | str) -> int:
    """A read-write descriptor of ``path`` (created owner-only when missing), e.g. for a lock."""
    return os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)


def write_private_atomically(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def fsync_directory(path: Path | str) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
