"""The SQLite results ledger: runs, their sources, chunks, attempts and outcomes.

The ledger is what makes a run resumable and `retry` possible without the source files: before a
chunk's request is sent its row is committed as ``in_flight`` together with its (compressed)
body, so after any crash the ledger knows every chunk that may have reached the API.

What this package owns, and what it must not know
-------------------------------------------------
It owns the file (its format, its checks, its migrations), the run lock, and every query over
the tables below. It knows chunks and outcomes only as the value objects of ``importer.model``,
and statuses only through their enums, whose predicates (``ChunkStatus.is_open``, …) say which
status counts as what. It must not know HTTP or the sender, polars or the sources, the terminal
(it never prints; errors carry a hint, and the CLI shows them), or the pipeline's order of calls.

    schema.py   header checks, migrations, opening and creating the file, WAL
    lock.py     the flock run lock, and the probe that tells readers whether a run is alive
    store.py    what the parts share: the connection, its mutex, the clock, transactions
    runs.py     runs and run_sources: create, resume, retry pick, mark; RunInfo, SourceInfo
    chunks.py   the hot path: in flight, outcomes, waiting, load, resolve, stranded chunks
    retries.py  a row per `retry`: start_retry, finish_retry, list_retries; RetryInfo
    summaries.py  the run's stored summary brought up to date after `retry` or `resolve`
    history.py  the history: one line per run and per retry, newest first (``ledger show``)
    failures.py a run's failures grouped by cause, and its ambiguous chunks
    reports.py  run_report (``ledger show --run``) and export_failures (``ledger export``)

The file
--------
One SQLite database (``fyno-import.ledger.db`` by default) in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed (``kill -9``); an OS crash or
power loss may lose the last few commits. The file is created readable and writable by its owner
only (0600); SQLite gives its ``-wal`` and ``-shm`` sidecars the same mode. Its header carries
``PRAGMA application_id`` = 0x46594E4F ("FYNO") and the schema version in ``PRAGMA user_version``.
A file that is not such a database, or is damaged, is never written to, overwritten or
"repaired": opening checks the header, the tables and every b-tree's root page before its first
write (a migration, or the switch to WAL of a copy made in rollback-journal mode).

A run (``run``, ``retry``, ``ledger resolve``) holds an exclusive ``flock`` on the sidecar
``<ledger>.lock`` (0600, holding the owner's pid) for its whole duration; the kernel releases it
when the process ends, however it ends. Readers (``ledger show``/``export``) take no lock; to
tell a live run from one killed while ``running``, they may probe it with a shared lock held for
an instant, which a starting run waits out instead of failing (see ``lock.py``).

Tables (schema version 3), for querying with ``sqlite3``
--------------------------------------------------------
Timestamps are UTC ISO 8601 text with microseconds (``2026-11-29T23:45:00.123456Z``), so they
sort as text. JSON columns are text; ``*_z`` columns are zlib-compressed, ``body`` is zstd
(zlib in ledgers written by fyno-import 0.1).

``runs`` — one row per run (a resumed run keeps its row)
    run_id        text, time-sortable: ``20261129T234500Z-1a2b3c``
    created_at, updated_at, finished_at (NULL unless status is finished); updated_at is the
                  run's own last write (a retry has its row in ``retries``)
    status        running | finished | interrupted | aborted (a run killed with -9 stays
                  running here; ``ledger show`` reads it as interrupted once its lock is gone)
    source_key    hash of the ordered source fingerprints and the shard: finds the run to resume
    mapping_hash  hash of the mapping (without ``settings:``)
    chunk_key     hash of the chunk settings (batch size, max batch bytes, shard, cutting rule)
    shard         ``K/N`` or NULL
    settings      JSON: every run option (never the API key)
    base_url, workspace, api_version   where the chunks were sent; ``retry`` sends there again
    summary       JSON: the run's ``--json`` summary as it ended, or NULL; ``retry`` and
                  ``ledger resolve`` bring its chunk counts (and exit code) up to date, and a
                  retry adds its sends to items_sent, bytes_sent, item_errors and retries

``run_sources`` — one row per source of a run, primary key (run_id, idx)
    idx           position of the source in the run, from 0
    source        the source as the user named it (path or URL)
    fingerprint   hash of its content (local) or ETag and size (remote)
    rows_read, rows_rejected
    chunks_total  NULL until the source was completely read and chunked; then how many chunks
                  carry its rows
    first_chunk, last_chunk   the positions (``chunks.seq``) of the chunks holding its first and
                  last item, NULL without items; it is imported once every chunk between them
                  was accepted (a chunk may carry rows of the sources beside it)
    status        pending | chunked | skipped (already imported by another run)

``chunks`` — one row per chunk that was ever sent, primary key (run_id, chunk_id)
    seq           its position among the run's chunks, from 0: the order they are sent in
    source_idx, last_source   the sources (``run_sources.idx``) of its first and last item
    lane          always 0 in schema 2 (schema 1 cut the chunks per source and per lane)
    first_row, last_row   the source rows (1-based data records) of its first and last item
    items, bytes  item count, body size
    has_add       1 when it carries ``$add`` (never resent blindly)
    status        pending | in_flight | accepted | failed | refused | ambiguous | abandoned
    attempts      requests sent for it, over all tries
    http_status, request_id, error     of its last answer (error is a short, key-free text)
    body          zstd: the exact request body; NULL once accepted
    rows_z        zlib: JSON array, the source row of each item in body order; NULL once accepted
    ids_z         zlib: JSON array, the distinct_id of each item in body order; kept
    sources_z     zlib: JSON array of [source_idx, items] runs in body order, when the chunk
                  spans sources; NULL when every item is from source_idx
    sent_at       when its request was last recorded as in flight
    updated_at

``retries`` — one row per ``retry`` that resent something (schema 3), written before its first
request and closed when it ends
    retry_id      integer, in the order retries were made
    run_id        the run whose chunks it resent
    started_at, ended_at (NULL while it runs, or when it was killed with -9)
    status        running | finished | interrupted | aborted, as for runs (a retry killed with
                  -9 stays running here and reads as interrupted once its lock is gone)
    include_ambiguous   1 with ``--include-ambiguous``
    chunks        the chunks it set out to resend
    accepted, failed, ambiguous   what became of the chunks it sent (failed: refused too)
    requests      requests it sent
    summary       JSON: the retry's own ``--json`` summary

``item_errors`` — per-operator statuses other than "ok" in a 202 answer
    run_id, chunk_id, item_index (position in the body), source_idx and source_row (the
    item's own source and row), distinct_id, operator (``$add``, …), status (what the API said
    instead of "ok")

For example, the rows of failed chunks:
``SELECT chunk_id, first_row, last_row, http_status, error FROM chunks WHERE status='failed'``.

A schema change is one more function appended to ``schema._MIGRATIONS``; ``user_version`` is the
number of migrations applied. A ledger with a higher version than this code knows is refused.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from importer.ledger.chunks import ChunksMixin, pack_chunk
from importer.ledger.reports import EXPORT_COLUMNS, ReportsMixin
from importer.ledger.retries import RetryInfo, RetryStarted
from importer.ledger.runs import RunInfo, SourceInfo
from importer.ledger.schema import SCHEMA_VERSION, open_connection
from importer.model import PackedChunk, RunStatus, SourceStatus

__all__ = [
    "EXPORT_COLUMNS",
    "SCHEMA_VERSION",
    "Ledger",
    "PackedChunk",
    "RetryInfo",
    "RetryStarted",
    "RunInfo",
    "RunStatus",
    "SourceInfo",
    "SourceStatus",
    "pack_chunk",
]


class Ledger(ChunksMixin, ReportsMixin):
    """An open results ledger; one connection, safe to call from several threads.

    Its methods come from the parts: runs (``runs.py``), chunks (``chunks.py``), reports
    (``reports.py``), and the connection, clock and run lock they share (``store.py``).
    """

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> Ledger:
        """Open the ledger at `path`, creating it (0600) when missing and `create` is true."""
        path = Path(path)
        return cls(path, open_connection(path, create=create))

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
