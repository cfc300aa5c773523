"""What every part of an open ledger shares: the connection, its mutex, the clock, the lock.

One connection serves every thread (the sender's event loop, the reader thread that packs
chunks); the re-entrant mutex makes each transaction whole. Write transactions are short and
``BEGIN IMMEDIATE``, so a writer never waits half-way through; a sqlite failure while writing
becomes ``LedgerWriteError`` (exit 3: no request is ever sent without its record), while
reading, ``LedgerError`` (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from importer.errors import LedgerError, LedgerWriteError
from importer.ledger.lock import acquire, lock_path_for, probe
from importer.model import ChunkStatus

_ZLEVEL: Final = 1  # ~3x on JSON at a fraction of level 6's cost
_DAMAGED_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
CORRUPT_HINT: Final = (
    "use another --ledger path; fyno-import never overwrites or repairs an existing file"
)


def compress(data: bytes) -> bytes:
    """zlib at the ledger's level, for the row maps and id lists (small; ``sqlite3`` users can
    read them with Python's own zlib)."""
    return zlib.compress(data, _ZLEVEL)


_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL: Final = 1  # measured on a 109 KB body: 204 us and 13 KB, zlib level 1 631 us and 15 KB


def compress_body(data: bytes) -> bytes:
    """zstd for request bodies: written before every request, so the hot path of the ledger."""
    import zstandard

    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)


def decompress_body(data: bytes) -> bytes:
    """A body as ``compress_body`` wrote it (or zlib, as ledgers of fyno-import 0.1 did)."""
    if data[:4] == _ZSTD_MAGIC:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)
    return zlib.decompress(data)


def decode_z(data: bytes) -> Any:
    """The JSON array in a ``*_z`` column (rows or distinct_ids)."""
    return orjson.loads(zlib.decompress(data))


def to_json(value: object) -> str:
    """Compact JSON text with sorted keys, as the ``settings`` and ``summary`` columns hold."""
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def sql_list(statuses: Iterable[ChunkStatus]) -> str:
    """``('a','b')`` for an SQL ``IN``: the statuses come from the enum's predicates, not input."""
    return "(" + ",".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


def stamp(micros: int) -> str:
    """UTC ISO 8601 text with microseconds, so that stamps sort as text."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """The shared state of an open ledger; the parts (runs, chunks, reports) build on it."""

    path: Path

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        """Wrap an already checked connection; use `Ledger.open`."""
        self.path = path
        self._conn = conn
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._last_micros = 0
        # Writes that need no commit of their own (a chunk's final outcome): done in the next
        # transaction, before anything reads the ledger (see ChunksMixin.record_outcome)
        self._deferred: list[Callable[[sqlite3.Connection], None]] = []

    def _run_deferred(self, conn: sqlite3.Connection) -> None:
        """Do the deferred writes inside the caller's open transaction."""
        while self._deferred:
            self._deferred.pop(0)(conn)

    def flush(self) -> None:
        """Commit the deferred writes now."""
        if self._deferred:
            with self._writing("deferred outcomes"):
                pass

    def close(self) -> None:
        """Commit what is deferred, close the connection and release the run lock, if held."""
        with self._mutex:
            with contextlib.suppress(LedgerError):
                self.flush()
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    # -- the run lock ---------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        """The sidecar file whose flock marks a run in progress."""
        return lock_path_for(self.path)

    def lock_for_run(self) -> None:
        """Take the exclusive run lock for this process's lifetime; idempotent."""
        with self._mutex:
            if self._lock_fd is None:
                self._lock_fd = acquire(self.lock_path, self.path)

    def run_lock_held(self) -> bool | None:
        """Whether a process (this one included) holds the run lock; None when it cannot be told.

        Never creates the lock file and never blocks; see ``importer.ledger.lock.probe``.
        """
        if self._lock_fd is not None:
            return True
        return probe(self.lock_path)

    # -- transactions ---------------------------------------------------------------------------

    def _now(self) -> str:
        """Now, strictly later than any earlier stamp of this ledger object (for sent_at order)."""
        with self._mutex:
            micros = max(time.time_ns() // 1000, self._last_micros + 1)
            self._last_micros = micros
        return stamp(micros)

    def _write_error(self, what: str, e: sqlite3.Error) -> LedgerWriteError:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        damaged = getattr(e, "sqlite_errorcode", 0) & 0xFF in _DAMAGED_CODES
        return LedgerWriteError(
            f"could not write {what} to the ledger {self.path}: {e}",
            hint=(
                "the ledger file is damaged; " + CORRUPT_HINT
                if damaged
                else "free disk space or check the file's permissions"
            )
            + "; no request is sent without its record",
        )

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One short write transaction; any sqlite failure becomes LedgerWriteError."""
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._run_deferred(self._conn)
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._write_error(what, e) from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reading; any sqlite failure becomes LedgerError."""
        with self._mutex:
            self.flush()  # a reader in this process sees every outcome it was given
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise LedgerError(f"cannot read the ledger {self.path}: {e}") from None

    def _no_run(self, run_id: str) -> LedgerError:
        return LedgerError(
            f"no run {run_id} in the ledger {self.path}",
            hint="`fyno-import ledger show` lists the runs",
        )

    def _run_exists(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise self._no_run(run_id)
