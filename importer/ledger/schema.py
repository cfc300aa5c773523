"""Opening a ledger file: refuse what is not ours or is damaged, create, migrate, switch to WAL.

Nothing here writes to an existing file before it has been checked: the header (SQLite's magic,
our ``application_id``, ``user_version``), the tables, and one read of every b-tree's root page
(``probe_btrees``). Only then may a migration run and the journal mode become WAL, which in a
file copied in rollback-journal mode (``VACUUM INTO``, ``.backup``) rewrites the header.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from importer.errors import LedgerCorruptError, LedgerError, LedgerSchemaError
from importer.files import create_private
from importer.ledger.store import CORRUPT_HINT

APPLICATION_ID: Final = 0x46594E4F  # "FYNO" in the SQLite header: tells our file from others
_BUSY_TIMEOUT_MS: Final = 10_000
_HEADER_BYTES: Final = 100


# The first schema: runs, run_sources, chunks, item_errors. Frozen, as every migration is once
# released, to the byte (sqlite_master keeps this text, indentation included); RunStatus must
# stay within the CHECK of runs.status.
_SCHEMA_V1: Final = (
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
)


# Schema 2: chunks are cut over the whole import, so one may carry rows of several sources.
# A chunk records the range of sources it spans and which source each item came from; a
# source records the positions (seq) of its first and last chunk, and is imported once every
# chunk in that range was accepted. Schema-1 rows keep their meaning (their NULLs say "as in 1").
_SCHEMA_V2: Final = (
    "ALTER TABLE chunks ADD COLUMN last_source INTEGER",
    "ALTER TABLE chunks ADD COLUMN sources_z BLOB",
    "ALTER TABLE run_sources ADD COLUMN first_chunk INTEGER",
    "ALTER TABLE run_sources ADD COLUMN last_chunk INTEGER",
    "ALTER TABLE item_errors ADD COLUMN source_idx INTEGER",
    "CREATE INDEX chunks_by_seq ON chunks (run_id, seq)",
)


# Schema 3: a row per `retry` of a run, so the run's report can list what each retry did, and a
# retry killed mid-way is still seen. The chunk counts are those of the chunks the retry sent.
_SCHEMA_V3: Final = (
    """CREATE TABLE retries (
            retry_id          INTEGER PRIMARY KEY,
            run_id            TEXT NOT NULL REFERENCES runs (run_id),
            started_at        TEXT NOT NULL,
            ended_at          TEXT,
            status            TEXT NOT NULL
                              CHECK (status IN ('running','finished','interrupted','aborted')),
            include_ambiguous INTEGER NOT NULL,
            chunks            INTEGER NOT NULL,
            accepted          INTEGER NOT NULL DEFAULT 0,
            failed            INTEGER NOT NULL DEFAULT 0,
            ambiguous         INTEGER NOT NULL DEFAULT 0,
            requests          INTEGER NOT NULL DEFAULT 0,
            summary           TEXT
        )""",
    "CREATE INDEX retries_by_run ON retries (run_id, started_at)",
)


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Create the first schema."""
    for statement in _SCHEMA_V1:
        conn.execute(statement)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Let chunks span sources."""
    for statement in _SCHEMA_V2:
        conn.execute(statement)


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Record each retry of a run."""
    for statement in _SCHEMA_V3:
        conn.execute(statement)


# Index i migrates from user_version i to i + 1. Append, never edit or reorder.
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _migrate_v1,
    _migrate_v2,
    _migrate_v3,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
TABLES: Final = frozenset({"runs", "run_sources", "chunks", "item_errors", "retries"})


def corrupt(path: Path, why: str) -> LedgerCorruptError:
    """The error for a file that is not a usable ledger, with the never-overwrite hint."""
    return LedgerCorruptError(
        f"{path} is not a usable fyno-import ledger: {why}", hint=CORRUPT_HINT
    )


def open_connection(path: Path, *, create: bool) -> sqlite3.Connection:
    """A checked, migrated connection in WAL mode to the ledger at ``path`` (created 0600)."""
    created = _create_or_find(path, create=create)
    header = _read_header(path)
    _check_header(path, header)
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=64
        )
    except sqlite3.Error as e:
        raise LedgerError(f"cannot open the ledger {path}: {e}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not header:
            _initialise(conn)
        _check_and_migrate(conn, path)
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
            raise corrupt(path, str(e)) from None
        raise
    return conn


def _create_or_find(path: Path, *, create: bool) -> bool:
    """Create an empty owner-only file when asked and missing; True when this call made it."""
    if create:
        try:
            return create_private(path)
        except OSError as e:
            raise LedgerError(f"cannot create the ledger {path}: {e.strerror}") from None
    if not path.exists():
        raise LedgerError(
            f"no ledger at {path}",
            hint="pass the ledger of the run with --ledger (run writes one per directory)",
        )
    return False


def _read_header(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(_HEADER_BYTES)
    except IsADirectoryError:
        raise LedgerError(f"the ledger path {path} is a directory", hint="name a file") from None
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror}") from None


def _check_header(path: Path, header: bytes) -> None:
    """Refuse, before SQLite opens it, a file that is not a SQLite database of ours."""
    if not header:
        return  # 0 bytes: a new ledger, or one left by a crash while creating it
    if not header.startswith(b"SQLite format 3\x00") or len(header) < _HEADER_BYTES:
        raise corrupt(path, "it is not a SQLite database")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise corrupt(path, "it is a SQLite database of another application")


def _initialise(conn: sqlite3.Connection) -> None:
    """Give an empty (0-byte) file the current schema, in one transaction."""
    # Still in rollback-journal mode here, so the header (application_id) lands in the main
    # file at once and the creation is all-or-nothing.
    with _transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (count,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if version == 0 and count == 0:  # nobody else initialised it meanwhile
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for migrate in _MIGRATIONS:
                migrate(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _check_and_migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a foreign, damaged or newer ledger; then bring an older one up to date."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id != APPLICATION_ID:
        raise corrupt(path, "it is a SQLite database of another application")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"the ledger {path} was written by a newer fyno-import "
            f"(schema {version}; this one knows up to {SCHEMA_VERSION})",
            hint="upgrade fyno-import, or use another --ledger path",
        )
    probe_btrees(conn)
    if version < SCHEMA_VERSION:
        _migrate(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if missing := TABLES - tables:
        raise corrupt(path, f"tables missing: {', '.join(sorted(missing))}")


def probe_btrees(conn: sqlite3.Connection) -> int:
    """Read the root page of every table and index (and the first leaf below it); how many.

    Damage that leaves page 1 whole (zeroed or overwritten pages) goes unseen by the header
    and schema checks; SQLite reports it only once a query reads a
    damaged page. This reads each b-tree's root and its leftmost path: a few pages per b-tree
    whatever the ledger's size (about 80 µs for the 11 b-trees of schema 1), where
    ``PRAGMA quick_check`` reads every page (0.5 to 1.5 s for a 185 MB ledger, on every open).
    A damaged page deeper in a b-tree is still found only by the first query that reads it,
    and so is a partial index (none in schema 1), which ``INDEXED BY`` cannot scan whole.
    """
    trees = conn.execute(
        "SELECT m.type, m.name, m.tbl_name FROM sqlite_master m"
        " WHERE m.type IN ('table', 'index') AND m.rootpage > 0 AND NOT EXISTS"
        " (SELECT 1 FROM pragma_index_list(m.tbl_name) i WHERE i.name = m.name AND i.partial)"
    ).fetchall()
    for kind, name, table in trees:
        scan = "NOT INDEXED" if kind == "table" else f'INDEXED BY "{_quoted(name)}"'
        conn.execute(f'SELECT 1 FROM "{_quoted(table)}" {scan} LIMIT 1').fetchall()
    return len(trees)


def _quoted(identifier: str) -> str:
    return identifier.replace('"', '""')


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file lacks, in one transaction."""
    with _transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for migrate in _MIGRATIONS[version:]:
            migrate(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
