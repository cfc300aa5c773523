"""The SQLite results ledger: runs, their sources, chunks, attempts and outcomes.

The ledger is what makes a run resumable and `retry` possible without the source files: before a
chunk's request is sent its row is committed as ``in_flight`` together with its (compressed)
body, so after any crash the ledger knows every chunk that may have reached the API.

The file
--------
One SQLite database (``fyno-import.ledger.db`` by default) in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed (``kill -9``); an OS crash or
power loss may lose the last few commits. The file is created readable and writable by its owner
only (0600); SQLite gives its ``-wal`` and ``-shm`` sidecars the same mode. Its header carries
``PRAGMA application_id`` = 0x46594E4F ("FYNO") and the schema version in ``PRAGMA user_version``.
A file that is not such a database is never written to, overwritten or "repaired".

A run (``run``, ``retry``, ``ledger resolve``) holds an exclusive ``flock`` on the sidecar
``<ledger>.lock`` (0600, holding the owner's pid) for its whole duration; the kernel releases it
when the process ends, however it ends. Readers (``ledger show``/``export``) take no lock.

Tables (schema version 1), for querying with ``sqlite3``
--------------------------------------------------------
Timestamps are UTC ISO 8601 text with microseconds (``2026-11-29T23:45:00.123456Z``), so they
sort as text. JSON columns are text; ``*_z`` / ``body`` columns are zlib-compressed.

``runs`` — one row per run (a resumed run keeps its row)
    run_id        text, time-sortable: ``20261129T234500Z-1a2b3c``
    created_at, updated_at, finished_at (NULL unless status is finished)
    status        running | finished | interrupted | aborted
    source_key    hash of the ordered source fingerprints and the shard: finds the run to resume
    mapping_hash  hash of the mapping (without ``settings:``)
    chunk_key     hash of the chunk settings (batch size, max batch bytes, shard, lane count)
    shard         ``K/N`` or NULL
    settings      JSON: every run option (never the API key)
    base_url, workspace, api_version   where the chunks were sent; ``retry`` sends there again
    summary       JSON: the last summary's counts, or NULL

``run_sources`` — one row per source of a run, primary key (run_id, idx)
    idx           position of the source in the run, from 0
    source        the source as the user named it (path or URL)
    fingerprint   hash of its content (local) or ETag and size (remote)
    rows_read, rows_rejected
    chunks_total  NULL until the source was completely read and chunked
    status        pending | chunked | skipped (already imported by another run)

``chunks`` — one row per chunk that was ever sent, primary key (run_id, chunk_id)
    source_idx, lane, seq        where the chunk comes from (``run_sources.idx``)
    first_row, last_row, items, bytes   its rows (1-based data records), item count, body size
    has_add       1 when it carries ``$add`` (never resent blindly)
    status        pending | in_flight | accepted | failed | refused | ambiguous | abandoned
    attempts      requests sent for it, over all tries
    http_status, request_id, error     of its last answer (error is a short, key-free text)
    body          zlib: the exact request body; NULL once accepted
    rows_z        zlib: JSON array, the source row of each item in body order; NULL once accepted
    ids_z         zlib: JSON array, the distinct_id of each item in body order; kept
    sent_at       when its request was last recorded as in flight
    updated_at

``item_errors`` — per-operator statuses other than "ok" in a 202 answer
    run_id, chunk_id, item_index (position in the body), source_row, distinct_id, operator
    (``$add``, …), status (what the API said instead of "ok")

For example, the rows of failed chunks:
``SELECT chunk_id, first_row, last_row, http_status, error FROM chunks WHERE status='failed'``.

A schema change is one more function appended to ``_MIGRATIONS``; ``user_version`` is the number
of migrations applied. A ledger with a higher version than this code knows is refused.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import os
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson

from importer.errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerLockedError,
    LedgerSchemaError,
    LedgerWriteError,
)
from importer.model import Chunk, ChunkOutcome, ChunkStatus

__all__ = ["Ledger", "RunInfo", "RunStatus", "SourceInfo", "SourceStatus"]

RunStatus = Literal["running", "finished", "interrupted", "aborted"]
SourceStatus = Literal["pending", "chunked", "skipped"]

RUN_STATUSES: Final[frozenset[str]] = frozenset({"running", "finished", "interrupted", "aborted"})
APPLICATION_ID: Final = 0x46594E4F  # "FYNO" in the SQLite header: tells our file from others
EXPORT_COLUMNS: Final = (
    "run_id",
    "chunk_id",
    "source",
    "row",
    "distinct_id",
    "status",
    "http_status",
    "error",
)
# The chunk states a person or `retry` still has to deal with.
_OPEN_FAILURES: Final = (ChunkStatus.FAILED, ChunkStatus.REFUSED, ChunkStatus.AMBIGUOUS)
_RESOLVABLE: Final = frozenset(_OPEN_FAILURES)
_RESOLUTIONS: Final = frozenset({ChunkStatus.ACCEPTED, ChunkStatus.ABANDONED})
# Belt and braces: callers never pass the key, but a settings dict must not carry one either.
_SECRET_SETTINGS: Final = frozenset({"api_key", "key", "token", "password", "authorization"})
_ZLEVEL: Final = 1  # ~3x on JSON bodies at a fraction of level 6's cost: this is the hot path
_BUSY_TIMEOUT_MS: Final = 10_000
_DAMAGED_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_CORRUPT_HINT: Final = (
    "use another --ledger path; fyno-import never overwrites or repairs an existing file"
)


# ---------------------------------------------------------------------------------------------
# Schema and migrations


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Create the first schema: runs, run_sources, chunks, item_errors."""
    for statement in (
        """CREATE TABLE runs (
            run_id       TEXT PRIMARY KEY,
            created_at   TEXT NOT NULL,
            updated_at   TEXT NOT NULL,
            finished_at  TEXT,
            status       TEXT NOT NULL
                         CHECK (status IN ('running','finished','interrupted','aborted')),
            source_key   TEXT NOT NULL,
            mapping_hash TEXT NOT NULL,
            chunk_key    TEXT NOT NULL,
            shard        TEXT,
            settings     TEXT NOT NULL,
            base_url     TEXT NOT NULL,
            workspace    TEXT NOT NULL,
            api_version  TEXT NOT NULL,
            summary      TEXT
        )""",
        "CREATE INDEX runs_by_source_key ON runs (source_key, created_at)",
        """CREATE TABLE run_sources (
            run_id        TEXT NOT NULL REFERENCES runs (run_id),
            idx           INTEGER NOT NULL,
            source        TEXT NOT NULL,
            fingerprint   TEXT NOT NULL,
            rows_read     INTEGER NOT NULL DEFAULT 0,
            rows_rejected INTEGER NOT NULL DEFAULT 0,
            chunks_total  INTEGER,
            status        TEXT NOT NULL DEFAULT 'pending',
            PRIMARY KEY (run_id, idx)
        )""",
        "CREATE INDEX run_sources_by_fingerprint ON run_sources (fingerprint)",
        """CREATE TABLE chunks (
            run_id      TEXT NOT NULL REFERENCES runs (run_id),
            chunk_id    TEXT NOT NULL,
            source_idx  INTEGER NOT NULL,
            lane        INTEGER NOT NULL,
            seq         INTEGER NOT NULL,
            first_row   INTEGER NOT NULL,
            last_row    INTEGER NOT NULL,
            items       INTEGER NOT NULL,
            bytes       INTEGER NOT NULL,
            has_add     INTEGER NOT NULL,
            status      TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            http_status INTEGER,
            request_id  TEXT,
            error       TEXT,
            body        BLOB,
            rows_z      BLOB,
            ids_z       BLOB,
            sent_at     TEXT,
            updated_at  TEXT NOT NULL,
            PRIMARY KEY (run_id, chunk_id)
        )""",
        # For `retry` without --run and for profiles_superseded (accepted chunks sent later).
        "CREATE INDEX chunks_by_status ON chunks (status, sent_at)",
        """CREATE TABLE item_errors (
            run_id      TEXT NOT NULL,
            chunk_id    TEXT NOT NULL,
            item_index  INTEGER NOT NULL,
            source_row  INTEGER,
            distinct_id TEXT,
            operator    TEXT NOT NULL,
            status      TEXT NOT NULL,
            PRIMARY KEY (run_id, chunk_id, item_index, operator)
        )""",
    ):
        conn.execute(statement)


# Index i migrates from user_version i to i + 1. Append, never edit or reorder.
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (_migrate_v1,)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
_TABLES: Final = frozenset({"runs", "run_sources", "chunks", "item_errors"})


# ---------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One source of a run as the ledger knows it."""

    idx: int
    source: str
    fingerprint: str
    rows_read: int
    rows_rejected: int
    chunks_total: int | None  # None until the source was completely read and chunked
    status: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run's row, with its settings and summary parsed and its sources."""

    run_id: str
    created_at: str
    updated_at: str
    finished_at: str | None
    status: str
    source_key: str
    mapping_hash: str
    chunk_key: str
    shard: str | None
    settings: dict[str, Any]
    base_url: str
    workspace: str
    api_version: str
    summary: dict[str, Any] | None
    sources: tuple[SourceInfo, ...]


_RUN_COLUMNS: Final = (
    "run_id, created_at, updated_at, finished_at, status, source_key, mapping_hash, chunk_key,"
    " shard, settings, base_url, workspace, api_version, summary"
)
_SOURCE_COLUMNS: Final = (
    "run_id, idx, source, fingerprint, rows_read, rows_rejected, chunks_total, status"
)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _z(data: bytes) -> bytes:
    return zlib.compress(data, _ZLEVEL)


@dataclass(frozen=True, slots=True)
class PackedChunk:
    """A chunk's compressed body, rows and ids, as ``record_in_flight`` stores them."""

    body_z: bytes
    rows_z: bytes
    ids_z: bytes


def pack_chunk(chunk: Chunk) -> PackedChunk:
    """Compress a chunk for the ledger; pure, so a reader thread can do it off the event loop."""
    return PackedChunk(
        body_z=_z(chunk.body),
        rows_z=_z(orjson.dumps(chunk.rows)),
        ids_z=_z(orjson.dumps(chunk.distinct_ids)),
    )


def _json(value: object) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _stamp(micros: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _corrupt(path: Path, why: str) -> LedgerCorruptError:
    return LedgerCorruptError(
        f"{path} is not a usable fyno-import ledger: {why}", hint=_CORRUPT_HINT
    )


def _read_header(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(100)
    except IsADirectoryError:
        raise LedgerError(f"the ledger path {path} is a directory", hint="name a file") from None
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------------
# The ledger


class Ledger:
    """An open results ledger; one connection, safe to call from several threads."""

    path: Path

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        """Wrap an already checked connection; use `Ledger.open`."""
        self.path = path
        self._conn = conn
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._last_micros = 0

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Ledger:
        """Open the ledger at `path`, creating it (0600) when missing and `create` is true."""
        path = Path(path)
        created = False
        if create:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                created = True
            except FileExistsError:
                pass
            except OSError as e:
                raise LedgerError(f"cannot create the ledger {path}: {e.strerror}") from None
        elif not path.exists():
            raise LedgerError(
                f"no ledger at {path}",
                hint="pass the ledger of the run with --ledger (run writes one per directory)",
            )

        header = _read_header(path)
        if header:
            if not header.startswith(b"SQLite format 3\x00") or len(header) < 100:
                raise _corrupt(path, "it is not a SQLite database")
            if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
                raise _corrupt(path, "it is a SQLite database of another application")
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
        except sqlite3.Error as e:
            raise LedgerError(f"cannot open the ledger {path}: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if not header:
                cls._initialise(conn)
            cls._check_and_migrate(conn, path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException as e:
            conn.close()
            if created:  # a file we made ourselves and could not finish: leave nothing behind
                with contextlib.suppress(OSError):
                    path.unlink()
            if isinstance(e, sqlite3.OperationalError):  # locked, I/O error, read-only, ...
                raise LedgerError(f"cannot open the ledger {path}: {e}") from None
            if isinstance(e, sqlite3.DatabaseError):  # not a database, malformed
                raise _corrupt(path, str(e)) from None
            raise
        return cls(path, conn)

    @staticmethod
    def _initialise(conn: sqlite3.Connection) -> None:
        """Give an empty (0-byte) file the current schema, in one transaction."""
        # Still in rollback-journal mode here, so the header (application_id) lands in the main
        # file at once and the creation is all-or-nothing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            (count,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if version == 0 and count == 0:  # nobody else initialised it meanwhile
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for migrate in _MIGRATIONS:
                    migrate(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _check_and_migrate(conn: sqlite3.Connection, path: Path) -> None:
        """Refuse a foreign, damaged or newer ledger; bring an older one up to date."""
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        if app_id != APPLICATION_ID:
            raise _corrupt(path, "it is a SQLite database of another application")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"the ledger {path} was written by a newer fyno-import "
                f"(schema {version}; this one knows up to {SCHEMA_VERSION})",
                hint="upgrade fyno-import, or use another --ledger path",
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                for migrate in _MIGRATIONS[version:]:
                    migrate(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if missing := _TABLES - tables:
            raise _corrupt(path, f"tables missing: {', '.join(sorted(missing))}")

    def close(self) -> None:
        """Close the connection and release the run lock, if held."""
        with self._mutex:
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    def __enter__(self) -> Self:
        """Use the ledger as a context manager that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the ledger."""
        self.close()

    # -- locking --------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        """The sidecar file whose flock marks a run in progress."""
        return self.path.with_name(self.path.name + ".lock")

    def lock_for_run(self) -> None:
        """Take the exclusive run lock for this process's lifetime; idempotent."""
        with self._mutex:
            if self._lock_fd is not None:
                return
            lock_path = self.lock_path
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise LedgerError(
                    f"cannot create the lock file {lock_path}: {e.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                try:
                    holder = os.read(fd, 32).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise LedgerError(f"cannot lock {lock_path}: {e.strerror}") from None
                who = f"pid {holder}" if holder.isdigit() else "pid unknown"
                raise LedgerLockedError(
                    f"the ledger {self.path} is in use by another run ({who})",
                    hint="wait for that run to finish, or use another --ledger path",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd

    # -- internals ------------------------------------------------------------------------------

    def _now(self) -> str:
        """Now, strictly later than any earlier stamp of this ledger object (for sent_at order)."""
        with self._mutex:
            micros = max(time.time_ns() // 1000, self._last_micros + 1)
            self._last_micros = micros
        return _stamp(micros)

    def _write_error(self, what: str, e: sqlite3.Error) -> LedgerWriteError:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        damaged = getattr(e, "sqlite_errorcode", 0) & 0xFF in _DAMAGED_CODES
        return LedgerWriteError(
            f"could not write {what} to the ledger {self.path}: {e}",
            hint=(
                "the ledger file is damaged; " + _CORRUPT_HINT
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
        with self._mutex:
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise LedgerError(f"cannot read the ledger {self.path}: {e}") from None

    def _run_exists(self, conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise LedgerError(
                f"no run {run_id} in the ledger {self.path}",
                hint="`fyno-import ledger show` lists the runs",
            )

    def _runs(self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> list[RunInfo]:
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created_at, run_id", params
        ).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        sources: dict[str, list[SourceInfo]] = {i: [] for i in ids}
        for s in conn.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM run_sources"
            f" WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY run_id, idx",
            ids,
        ):
            sources[s[0]].append(SourceInfo(*s[1:]))
        return [
            RunInfo(
                run_id=r[0],
                created_at=r[1],
                updated_at=r[2],
                finished_at=r[3],
                status=r[4],
                source_key=r[5],
                mapping_hash=r[6],
                chunk_key=r[7],
                shard=r[8],
                settings=orjson.loads(r[9]),
                base_url=r[10],
                workspace=r[11],
                api_version=r[12],
                summary=None if r[13] is None else orjson.loads(r[13]),
                sources=tuple(sources[r[0]]),
            )
            for r in rows
        ]

    # -- runs -----------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        source_key: str,
        mapping_hash: str,
        chunk_key: str,
        shard: str | None,
        settings: dict[str, Any],
        base_url: str,
        workspace: str,
        api_version: str,
        sources: list[tuple[str, str]],
    ) -> str:
        """Record a new run (status running) with its (source, fingerprint) pairs; its id."""
        now = self._now()
        stamp = f"{now[:4]}{now[5:7]}{now[8:10]}T{now[11:13]}{now[14:16]}{now[17:19]}Z"
        clean = {k: v for k, v in settings.items() if k.lower() not in _SECRET_SETTINGS}
        with self._writing("a new run") as conn:
            # Two runs in one second share the stamp; the random suffix tells them apart.
            run_id = f"{stamp}-{secrets.token_hex(3)}"
            while conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                run_id = f"{stamp}-{secrets.token_hex(3)}"
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS})"
                " VALUES (?,?,?,NULL,'running',?,?,?,?,?,?,?,?,NULL)",
                (
                    run_id,
                    now,
                    now,
                    source_key,
                    mapping_hash,
                    chunk_key,
                    shard,
                    _json(clean),
                    base_url,
                    workspace,
                    api_version,
                ),
            )
            conn.executemany(
                "INSERT INTO run_sources (run_id, idx, source, fingerprint) VALUES (?,?,?,?)",
                [(run_id, i, src, fp) for i, (src, fp) in enumerate(sources)],
            )
        return run_id

    def get_run(self, run_id: str) -> RunInfo:
        """The run `run_id`; LedgerError naming it when the ledger has no such run."""
        with self._reading() as conn:
            runs = self._runs(conn, "WHERE run_id = ?", (run_id,))
        if not runs:
            raise LedgerError(
                f"no run {run_id} in the ledger {self.path}",
                hint="`fyno-import ledger show` lists the runs",
            )
        return runs[0]

    def list_runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        with self._reading() as conn:
            return self._runs(conn, "", ())

    def find_resumable_run(self, source_key: str) -> RunInfo | None:
        """The latest run of these sources, if it is unfinished or has chunks not accepted."""
        # Only the latest run counts: resuming an older one after a newer (--force) run finished
        # would resend its $add chunks on top of the newer run's.
        with self._reading() as conn:
            row = conn.execute(
                "SELECT run_id, status FROM runs WHERE source_key = ?"
                " ORDER BY created_at DESC, run_id DESC LIMIT 1",
                (source_key,),
            ).fetchone()
            if row is None:
                return None
            run_id, status = row
            if status == "finished":
                open_chunk = conn.execute(
                    "SELECT 1 FROM chunks WHERE run_id = ? AND status != 'accepted' LIMIT 1",
                    (run_id,),
                ).fetchone()
                if open_chunk is None:
                    return None
        return self.get_run(run_id)

    def latest_run_with_failures(self) -> RunInfo | None:
        """The latest run with failed, refused or ambiguous chunks (for `retry` without --run)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM chunks c"
                " WHERE c.run_id = r.run_id AND c.status IN (?,?,?))"
                " ORDER BY r.created_at DESC, r.run_id DESC LIMIT 1",
                _OPEN_FAILURES,
            ).fetchone()
        return None if row is None else self.get_run(row[0])

    def imported_sources(
        self, fingerprints: list[str], *, exclude_run: str | None = None
    ) -> dict[str, str]:
        """Fingerprint → latest run that chunked that source completely and had all accepted."""
        if not fingerprints:
            return {}
        marks = ",".join("?" * len(fingerprints))
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT s.fingerprint, s.run_id FROM run_sources s JOIN runs r USING (run_id)"
                f" WHERE s.fingerprint IN ({marks}) AND s.chunks_total IS NOT NULL"
                " AND s.run_id IS NOT ?"
                " AND s.chunks_total = (SELECT count(*) FROM chunks c WHERE c.run_id = s.run_id"
                "   AND c.source_idx = s.idx AND c.status = 'accepted')"
                " AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.run_id = s.run_id"
                "   AND c.source_idx = s.idx AND c.status != 'accepted')"
                " ORDER BY r.created_at, r.run_id",
                (*fingerprints, exclude_run),
            ).fetchall()
        return {fp: run_id for fp, run_id in rows}  # later runs overwrite earlier ones

    def set_source_counts(
        self,
        run_id: str,
        idx: int,
        *,
        rows_read: int,
        rows_rejected: int,
        chunks_total: int | None,
        skipped: bool = False,
    ) -> None:
        """Record a source's row counts; chunks_total once it is completely chunked."""
        status = "skipped" if skipped else ("pending" if chunks_total is None else "chunked")
        with self._writing("source counts") as conn:
            cur = conn.execute(
                "UPDATE run_sources SET rows_read = ?, rows_rejected = ?, chunks_total = ?,"
                " status = ? WHERE run_id = ? AND idx = ?",
                (rows_read, rows_rejected, chunks_total, status, run_id, idx),
            )
            if cur.rowcount == 0:
                raise LedgerError(f"run {run_id} has no source #{idx} in the ledger {self.path}")
            conn.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (self._now(), run_id))

    def mark_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        """Set a run's status and last summary (None keeps the previous one).

        finished_at is set when the status is finished and cleared otherwise (a resumed run).
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        now = self._now()
        with self._writing("the run's status") as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?,"
                " summary = coalesce(?, summary) WHERE run_id = ?",
                (
                    status,
                    now,
                    now if status == "finished" else None,
                    None if summary is None else _json(summary),
                    run_id,
                ),
            )
            if cur.rowcount == 0:
                self._run_exists(conn, run_id)

    # -- chunks (the hot path) ------------------------------------------------------------------

    def chunk_statuses(self, run_id: str) -> dict[str, ChunkStatus]:
        """chunk_id → status of every chunk of the run the ledger has seen."""
        with self._reading() as conn:
            return {
                cid: ChunkStatus(st)
                for cid, st in conn.execute(
                    "SELECT chunk_id, status FROM chunks WHERE run_id = ?", (run_id,)
                )
            }

    _IN_FLIGHT_SQL: Final = (
        "INSERT INTO chunks (run_id, chunk_id, source_idx, lane, seq, first_row, last_row, items,"
        " bytes, has_add, status, body, rows_z, ids_z, sent_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,'in_flight',?,?,?,?,?)"
        " ON CONFLICT (run_id, chunk_id) DO UPDATE SET status = 'in_flight',"
        " body = excluded.body, rows_z = excluded.rows_z, ids_z = excluded.ids_z,"
        " sent_at = excluded.sent_at, updated_at = excluded.updated_at"
    )

    def _chunk_params(
        self, run_id: str, chunk: Chunk, now: str, packed: PackedChunk | None
    ) -> tuple[Any, ...]:
        rows = chunk.rows
        packed = packed or pack_chunk(chunk)
        return (
            run_id,
            chunk.chunk_id,
            chunk.source_index,
            chunk.lane,
            chunk.seq,
            min(rows) if rows else 0,
            max(rows) if rows else 0,
            len(rows),
            len(chunk.body),
            int(chunk.has_add),
            packed.body_z,
            packed.rows_z,
            packed.ids_z,
            now,
            now,
        )

    def record_in_flight(
        self, run_id: str, chunk: Chunk, *, packed: PackedChunk | None = None
    ) -> None:
        """Commit the chunk as in flight with its body; call before its request is sent.

        ``packed`` is the chunk already compressed by ``pack_chunk`` (e.g. in another thread).
        """
        params = self._chunk_params(run_id, chunk, self._now(), packed)  # outside the lock
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._IN_FLIGHT_SQL, params)
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._write_error(f"chunk {chunk.chunk_id}", e) from None

    _OUTCOME_SQL: Final = (
        "UPDATE chunks SET status = ?1, attempts = attempts + ?2, http_status = ?3,"
        " request_id = ?4, error = ?5, updated_at = ?6,"
        " body = CASE WHEN ?1 = 'accepted' THEN NULL ELSE body END,"
        " rows_z = CASE WHEN ?1 = 'accepted' THEN NULL ELSE rows_z END"
        " WHERE run_id = ?7 AND chunk_id = ?8"
    )

    def record_outcome(self, run_id: str, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Commit the chunk's final answer; an accepted chunk's body and rows are dropped."""
        now = self._now()
        status = str(outcome.status)
        errors = [
            (
                run_id,
                chunk.chunk_id,
                e.index,
                chunk.rows[e.index] if 0 <= e.index < len(chunk.rows) else None,
                chunk.distinct_ids[e.index] if 0 <= e.index < len(chunk.distinct_ids) else None,
                e.operator,
                e.status,
            )
            for e in outcome.item_errors
        ]
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                params = (
                    status,
                    outcome.attempts,
                    outcome.http_status,
                    outcome.request_id,
                    outcome.error,
                    now,
                    run_id,
                    chunk.chunk_id,
                )
                cur = self._conn.execute(self._OUTCOME_SQL, params)
                if cur.rowcount == 0:
                    # Never recorded in flight (a caller's slip): keep the outcome, not lose it.
                    in_flight = self._chunk_params(run_id, chunk, now, None)
                    self._conn.execute(self._IN_FLIGHT_SQL, in_flight)
                    self._conn.execute(self._OUTCOME_SQL, params)
                if errors:
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO item_errors (run_id, chunk_id, item_index,"
                        " source_row, distinct_id, operator, status) VALUES (?,?,?,?,?,?,?)",
                        errors,
                    )
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._write_error(f"the outcome of chunk {chunk.chunk_id}", e) from None

    def mark_ambiguous(self, run_id: str, chunk_id: str, error: str) -> None:
        """Close an in-flight chunk found after a crash as ambiguous (counted as one attempt)."""
        with self._writing(f"chunk {chunk_id}") as conn:
            cur = conn.execute(
                "UPDATE chunks SET status = 'ambiguous', error = ?, attempts = attempts + 1,"
                " updated_at = ? WHERE run_id = ? AND chunk_id = ? AND status = 'in_flight'",
                (error, self._now(), run_id, chunk_id),
            )
            if cur.rowcount == 0:
                status = self._chunk_status(conn, run_id, chunk_id)
                raise LedgerError(
                    f"chunk {chunk_id} of run {run_id} is {status}, not in flight: "
                    "it cannot be marked ambiguous"
                )

    def mark_waiting(self, run_id: str, chunk_id: str, error: str) -> None:
        """An in-flight chunk surely not applied (429, 500, 503, no connection) waits to retry.

        It goes back to ``pending`` with its body kept, so a crash during the wait leaves a chunk
        that may be resent, even one carrying ``$add``. ``record_in_flight`` precedes the retry.
        """
        with self._writing(f"chunk {chunk_id}") as conn:
            conn.execute(
                "UPDATE chunks SET status = 'pending', error = ?, updated_at = ?"
                " WHERE run_id = ? AND chunk_id = ? AND status = 'in_flight'",
                (error, self._now(), run_id, chunk_id),
            )

    def _chunk_status(self, conn: sqlite3.Connection, run_id: str, chunk_id: str) -> str:
        self._run_exists(conn, run_id)
        row = conn.execute(
            "SELECT status FROM chunks WHERE run_id = ? AND chunk_id = ?", (run_id, chunk_id)
        ).fetchone()
        if row is None:
            raise LedgerError(
                f"run {run_id} has no chunk {chunk_id} in the ledger {self.path}",
                hint="`fyno-import ledger export --failures FILE` lists the open chunks",
            )
        return str(row[0])

    def load_chunks(self, run_id: str, statuses: set[ChunkStatus]) -> Iterator[Chunk]:
        """Rebuild the run's chunks in these states from the ledger alone, in sending order."""
        if not statuses:
            return
        marks = ",".join("?" * len(statuses))
        with self._reading() as conn:
            self._run_exists(conn, run_id)
            keys = [
                r[0]
                for r in conn.execute(
                    f"SELECT chunk_id FROM chunks WHERE run_id = ? AND status IN ({marks})"
                    " ORDER BY source_idx, lane, seq, chunk_id",
                    (run_id, *(str(s) for s in statuses)),
                )
            ]
        # One row at a time: bodies stay on disk until needed, and the caller may record
        # outcomes between two chunks without disturbing an open cursor.
        for chunk_id in keys:
            with self._reading() as conn:
                row = conn.execute(
                    "SELECT c.source_idx, s.source, c.lane, c.seq, c.body, c.rows_z, c.ids_z,"
                    " c.has_add, c.status FROM chunks c LEFT JOIN run_sources s"
                    " ON s.run_id = c.run_id AND s.idx = c.source_idx"
                    " WHERE c.run_id = ? AND c.chunk_id = ?",
                    (run_id, chunk_id),
                ).fetchone()
            if row is None:
                continue
            source_idx, source, lane, seq, body, rows_z, ids_z, has_add, status = row
            if body is None or rows_z is None:
                raise LedgerError(
                    f"chunk {chunk_id} of run {run_id} is {status}: its body was dropped "
                    "and it cannot be rebuilt"
                )
            yield Chunk(
                chunk_id=chunk_id,
                source_index=source_idx,
                source=source or "",
                lane=lane,
                seq=seq,
                body=zlib.decompress(body),
                rows=orjson.loads(zlib.decompress(rows_z)),
                distinct_ids=orjson.loads(zlib.decompress(ids_z)),
                has_add=bool(has_add),
            )

    def resolve(self, run_id: str, chunk_id: str, as_status: ChunkStatus) -> None:
        """Close an ambiguous, failed or refused chunk as accepted or abandoned (takes the lock)."""
        as_status = ChunkStatus(as_status)
        if as_status not in _RESOLUTIONS:
            raise LedgerError(
                f"a chunk can be resolved only as accepted or abandoned, not {as_status}"
            )
        self.lock_for_run()
        with self._reading() as conn:  # a damaged ledger is a read error (exit 2), not a write one
            self._chunk_status(conn, run_id, chunk_id)
        with self._writing(f"chunk {chunk_id}") as conn:
            status = self._chunk_status(conn, run_id, chunk_id)
            if status not in _RESOLVABLE:
                raise LedgerError(
                    f"chunk {chunk_id} of run {run_id} is {status}: only ambiguous, failed or "
                    "refused chunks can be resolved"
                )
            dropped = as_status is ChunkStatus.ACCEPTED
            conn.execute(
                "UPDATE chunks SET status = ?, updated_at = ?,"
                " body = CASE WHEN ? THEN NULL ELSE body END,"
                " rows_z = CASE WHEN ? THEN NULL ELSE rows_z END"
                " WHERE run_id = ? AND chunk_id = ?",
                (str(as_status), self._now(), dropped, dropped, run_id, chunk_id),
            )

    def profiles_superseded(self, run_id: str, chunk_ids: list[str]) -> int:
        """Distinct profiles of these chunks that an accepted chunk sent later also carries."""
        if not chunk_ids:
            return 0
        # profile -> earliest sending among the given chunks that carry it
        pending: dict[str, str] = {}
        targets = set(chunk_ids)
        with self._reading() as conn:
            self._run_exists(conn, run_id)
            for chunk_id in targets:
                row = conn.execute(
                    "SELECT ids_z, sent_at FROM chunks WHERE run_id = ? AND chunk_id = ?",
                    (run_id, chunk_id),
                ).fetchone()
                if row is None:
                    raise LedgerError(f"run {run_id} has no chunk {chunk_id} in the ledger")
                ids_z, sent_at = row
                if ids_z is None or sent_at is None:
                    continue
                for pid in orjson.loads(zlib.decompress(ids_z)):
                    if pid not in pending or sent_at < pending[pid]:
                        pending[pid] = sent_at
            if not pending:
                return 0
            superseded = 0
            later = conn.execute(
                "SELECT run_id, chunk_id, ids_z, sent_at FROM chunks"
                " WHERE status = 'accepted' AND sent_at > ? ORDER BY sent_at",
                (min(pending.values()),),
            )
            for other_run, other_chunk, ids_z, sent_at in later:
                if other_run == run_id and other_chunk in targets:
                    continue
                for pid in set(orjson.loads(zlib.decompress(ids_z))):
                    first = pending.get(pid)
                    if first is not None and first < sent_at:
                        superseded += 1
                        del pending[pid]
                if not pending:
                    break
            later.close()
        return superseded

    # -- reports --------------------------------------------------------------------------------

    def run_report(self, run_id: str) -> dict[str, Any]:
        """A JSON-able description of the run for `ledger show` (never a secret)."""
        run = self.get_run(run_id)
        with self._reading() as conn:
            by_status = {str(s): 0 for s in ChunkStatus}
            per_source: dict[int, dict[str, int]] = {}
            items = size = attempts = items_accepted = 0
            for source_idx, status, n, n_items, n_bytes, n_attempts in conn.execute(
                "SELECT source_idx, status, count(*), sum(items), sum(bytes), sum(attempts)"
                " FROM chunks WHERE run_id = ? GROUP BY source_idx, status",
                (run_id,),
            ):
                by_status[status] = by_status.get(status, 0) + n
                per_source.setdefault(source_idx, {})[status] = n
                items += n_items
                size += n_bytes
                attempts += n_attempts
                if status == ChunkStatus.ACCEPTED:
                    items_accepted += n_items
            (item_errors,) = conn.execute(
                "SELECT count(*) FROM item_errors WHERE run_id = ?", (run_id,)
            ).fetchone()
        return {
            "run_id": run.run_id,
            "status": run.status,
            "created_at": run.created_at,
            "updated_at": run.updated_at,
            "finished_at": run.finished_at,
            "source_key": run.source_key,
            "mapping_hash": run.mapping_hash,
            "chunk_key": run.chunk_key,
            "shard": run.shard,
            "base_url": run.base_url,
            "workspace": run.workspace,
            "api_version": run.api_version,
            "settings": run.settings,
            "summary": run.summary,
            "sources": [
                {
                    "idx": s.idx,
                    "source": s.source,
                    "fingerprint": s.fingerprint,
                    "status": s.status,
                    "rows_read": s.rows_read,
                    "rows_rejected": s.rows_rejected,
                    "chunks_total": s.chunks_total,
                    "chunks_accepted": per_source.get(s.idx, {}).get("accepted", 0),
                }
                for s in run.sources
            ],
            "chunks": by_status,
            "chunks_recorded": sum(by_status.values()),
            "items": items,
            "items_accepted": items_accepted,
            "bytes": size,
            "attempts": attempts,
            "item_errors": item_errors,
        }

    def export_failures(self, path: Path, run_id: str | None = None) -> int:
        """Write the CSV of failed, refused and ambiguous items and item errors (0600); lines."""
        path = Path(path)
        where, params = "", tuple[str, ...]()
        if run_id is not None:
            with self._reading() as conn:
                self._run_exists(conn, run_id)
            where, params = " AND c.run_id = ?", (run_id,)
        with self._reading() as conn:
            keys = conn.execute(
                "SELECT c.run_id, c.chunk_id FROM chunks c JOIN runs r USING (run_id)"
                f" WHERE c.status IN (?,?,?){where}"
                " ORDER BY r.created_at, c.run_id, c.source_idx, c.first_row, c.chunk_id",
                (*_OPEN_FAILURES, *params),
            ).fetchall()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as e:
            raise LedgerError(f"cannot write {path}: {e.strerror}") from None
        lines = 0
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(EXPORT_COLUMNS)
            for chunk_run, chunk_id in keys:
                with self._reading() as conn:
                    row = conn.execute(
                        "SELECT s.source, c.status, c.http_status, c.error, c.rows_z, c.ids_z"
                        " FROM chunks c LEFT JOIN run_sources s"
                        " ON s.run_id = c.run_id AND s.idx = c.source_idx"
                        " WHERE c.run_id = ? AND c.chunk_id = ?",
                        (chunk_run, chunk_id),
                    ).fetchone()
                source, status, http_status, error, rows_z, ids_z = row
                rows = orjson.loads(zlib.decompress(rows_z)) if rows_z is not None else []
                ids = orjson.loads(zlib.decompress(ids_z)) if ids_z is not None else []
                head = (chunk_run, chunk_id, source)
                tail = (status, "" if http_status is None else http_status, error or "")
                for item_row, distinct_id in zip(rows, ids, strict=False):
                    out.writerow((*head, item_row, distinct_id, *tail))
                    lines += 1
            with self._reading() as conn:
                for err_row in conn.execute(
                    "SELECT e.run_id, e.chunk_id, s.source, e.source_row, e.distinct_id,"
                    " c.http_status, e.operator, e.status FROM item_errors e"
                    " JOIN chunks c ON c.run_id = e.run_id AND c.chunk_id = e.chunk_id"
                    " JOIN runs r ON r.run_id = e.run_id"
                    " LEFT JOIN run_sources s ON s.run_id = c.run_id AND s.idx = c.source_idx"
                    f" WHERE 1{where.replace('c.run_id', 'e.run_id')}"
                    " ORDER BY r.created_at, e.run_id, c.source_idx, e.source_row, e.item_index",
                    params,
                ).fetchall():
                    er, cid, source, item_row, distinct_id, http_status, op, st = err_row
                    out.writerow(
                        (
                            er,
                            cid,
                            source,
                            "" if item_row is None else item_row,
                            distinct_id or "",
                            "item_error",
                            "" if http_status is None else http_status,
                            f"{op}: {st}",
                        )
                    )
                    lines += 1
        return lines
