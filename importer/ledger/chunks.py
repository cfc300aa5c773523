"""Chunks, the hot path: in flight before sending, outcomes after, and what resume and retry read.

A chunk's row is committed as ``in_flight`` with its compressed body *before* its request is
sent, so after any crash the ledger knows every chunk that may have reached the API; the body is
dropped once the chunk is accepted. ``record_in_flight`` and ``record_outcome`` run once per
request: they build their parameters outside the mutex and write one short transaction each.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from typing import Any, Final

import orjson

from importer.errors import LedgerError
from importer.ledger.store import (
    Store,
    compress,
    compress_body,
    decode_z,
    decompress_body,
    sql_list,
)
from importer.ledger.summaries import refresh_summary
from importer.model import Chunk, ChunkOutcome, ChunkStatus, PackedChunk

_IN_FLIGHT: Final = ChunkStatus.IN_FLIGHT.value
_ACCEPTED: Final = ChunkStatus.ACCEPTED.value
_AMBIGUOUS: Final = ChunkStatus.AMBIGUOUS.value
_MIN_PREFIX: Final = 8  # the shortest chunk id prefix `ledger resolve` takes

_IN_FLIGHT_SQL: Final = (
    "INSERT INTO chunks (run_id, chunk_id, source_idx, last_source, lane, seq, first_row,"
    " last_row, items, bytes, has_add, status, body, rows_z, ids_z, sources_z, sent_at,"
    f" updated_at) VALUES (?,?,?,?,0,?,?,?,?,?,?,'{_IN_FLIGHT}',?,?,?,?,?,?)"
    f" ON CONFLICT (run_id, chunk_id) DO UPDATE SET status = '{_IN_FLIGHT}',"
    " body = excluded.body, rows_z = excluded.rows_z, ids_z = excluded.ids_z,"
    " sent_at = excluded.sent_at, updated_at = excluded.updated_at"
)
_OUTCOME_SQL: Final = (
    "UPDATE chunks SET status = ?1, attempts = attempts + ?2, http_status = ?3,"
    " request_id = ?4, error = ?5, updated_at = ?6,"
    f" body = CASE WHEN ?1 = '{_ACCEPTED}' THEN NULL ELSE body END,"
    f" rows_z = CASE WHEN ?1 = '{_ACCEPTED}' THEN NULL ELSE rows_z END"
    " WHERE run_id = ?7 AND chunk_id = ?8"
)
_ITEM_ERROR_SQL: Final = (
    "INSERT OR REPLACE INTO item_errors (run_id, chunk_id, item_index, source_idx,"
    " source_row, distinct_id, operator, status) VALUES (?,?,?,?,?,?,?,?)"
)
# An in-flight chunk found after a crash becomes ambiguous, counted as one attempt.
_AMBIGUOUS_SQL: Final = (
    f"UPDATE chunks SET status = '{_AMBIGUOUS}', error = ?, attempts = attempts + 1,"
    f" updated_at = ? WHERE run_id = ? AND status = '{_IN_FLIGHT}'"
)


def pack_chunk(chunk: Chunk) -> PackedChunk:
    """Compress a chunk for the ledger; pure, so a reader thread can do it off the event loop."""
    return PackedChunk(
        body_z=compress_body(chunk.body),
        rows_z=compress(chunk.rows_json),
        ids_z=compress(chunk.ids_json),
    )


def _chunk_params(
    run_id: str, chunk: Chunk, now: str, packed: PackedChunk | None
) -> tuple[Any, ...]:
    packed = packed or pack_chunk(chunk)
    # a chunk of one source (the usual) needs no map of its items' sources
    sources_z = compress(orjson.dumps(chunk.sources)) if len(chunk.sources) > 1 else None
    return (
        run_id,
        chunk.chunk_id,
        chunk.first_source,
        chunk.last_source,
        chunk.seq,
        chunk.first_row,
        chunk.last_row,
        chunk.items,
        len(chunk.body),
        int(chunk.has_add),
        packed.body_z,
        packed.rows_z,
        packed.ids_z,
        sources_z,
        now,
        now,
    )


def _item_errors(run_id: str, chunk: Chunk, outcome: ChunkOutcome) -> list[tuple[Any, ...]]:
    """item_errors rows of an outcome, each with its item's source, row and distinct_id."""
    if not outcome.item_errors:
        return []
    rows, ids, sources = chunk.rows(), chunk.distinct_ids(), chunk.item_sources()

    def at(values: list[Any], index: int) -> Any:
        return values[index] if 0 <= index < len(values) else None

    return [
        (
            run_id,
            chunk.chunk_id,
            e.index,
            at(sources, e.index),
            at(rows, e.index),
            at(ids, e.index),
            e.operator,
            e.status,
        )
        for e in outcome.item_errors
    ]


class ChunksMixin(Store):
    """The ``chunks`` and ``item_errors`` tables."""

    def chunk_statuses(self, run_id: str) -> dict[str, ChunkStatus]:
        """chunk_id → status of every chunk of the run the ledger has seen."""
        with self._reading() as conn:
            return {
                cid: ChunkStatus(st)
                for cid, st in conn.execute(
                    "SELECT chunk_id, status FROM chunks WHERE run_id = ?", (run_id,)
                )
            }

    def record_in_flight(
        self, run_id: str, chunk: Chunk, *, packed: PackedChunk | None = None
    ) -> None:
        """Commit the chunk as in flight with its body; call before its request is sent.

        ``packed`` is the chunk already compressed by ``pack_chunk`` (e.g. in another thread).
        The outcomes recorded since the last commit are written in the same transaction.
        """
        params = _chunk_params(run_id, chunk, self._now(), packed)  # outside the lock
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._run_deferred(self._conn)
                self._conn.execute(_IN_FLIGHT_SQL, params)
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._write_error(f"chunk {chunk.chunk_id}", e) from None

    def record_outcome(self, run_id: str, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Record the chunk's final answer; an accepted chunk's body and rows are dropped.

        It is committed with the next write (the next chunk's in-flight record, the run's end)
        or before the next read, not on its own: one commit per chunk instead of two on the
        sending path. A crash in between leaves the chunk in flight in the ledger, which is what
        it was before the answer: a resume resends it if it is idempotent, and calls it
        ambiguous if it carries $add, as for any chunk whose answer was not recorded.
        """
        now = self._now()
        params = (
            str(outcome.status),
            outcome.attempts,
            outcome.http_status,
            outcome.request_id,
            outcome.error,
            now,
            run_id,
            chunk.chunk_id,
        )
        errors = _item_errors(run_id, chunk, outcome)

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute(_OUTCOME_SQL, params).rowcount == 0:
                # Never recorded in flight (a caller's slip): keep the outcome, not lose it.
                conn.execute(_IN_FLIGHT_SQL, _chunk_params(run_id, chunk, now, None))
                conn.execute(_OUTCOME_SQL, params)
            if errors:
                conn.executemany(_ITEM_ERROR_SQL, errors)

        with self._mutex:
            self._deferred.append(write)

    def mark_ambiguous(self, run_id: str, chunk_id: str, error: str) -> None:
        """Close an in-flight chunk found after a crash as ambiguous (counted as one attempt)."""
        with self._writing(f"chunk {chunk_id}") as conn:
            cur = conn.execute(
                _AMBIGUOUS_SQL + " AND chunk_id = ?", (error, self._now(), run_id, chunk_id)
            )
            if cur.rowcount == 0:
                status = self._chunk_status(conn, run_id, chunk_id)
                raise LedgerError(
                    f"chunk {chunk_id} of run {run_id} is {status}, not in flight: "
                    "it cannot be marked ambiguous"
                )

    def settle_stranded(self, run_id: str, reason: str) -> int:
        """Make every in-flight ``$add`` chunk of the run ambiguous, in one transaction; how many.

        For chunks a killed process left in flight: it takes the run lock first (a no-op for
        the run holding it), so no live process is sending them. A ``$add`` one may have been
        applied, so it is never resent blindly (one attempt counted, ``error`` = ``reason``);
        idempotent chunks stay in flight, to be resent.
        """
        self.lock_for_run()
        with self._writing(f"the stranded chunks of run {run_id}") as conn:
            settled = conn.execute(
                _AMBIGUOUS_SQL + " AND has_add = 1", (reason, self._now(), run_id)
            ).rowcount
            if settled == 0:
                self._run_exists(conn, run_id)
        return int(settled)

    def mark_waiting(self, run_id: str, chunk_id: str, error: str) -> None:
        """An in-flight chunk surely not applied (429, 500, 503, no connection) waits to retry.

        It goes back to ``pending`` with its body kept, so a crash during the wait leaves a chunk
        that may be resent, even one carrying ``$add``. ``record_in_flight`` precedes the retry.
        """
        with self._writing(f"chunk {chunk_id}") as conn:
            conn.execute(
                "UPDATE chunks SET status = ?, error = ?, updated_at = ?"
                " WHERE run_id = ? AND chunk_id = ? AND status = ?",
                (ChunkStatus.PENDING.value, error, self._now(), run_id, chunk_id, _IN_FLIGHT),
            )

    def load_chunks(self, run_id: str, statuses: set[ChunkStatus]) -> Iterator[Chunk]:
        """Rebuild the run's chunks in these states from the ledger alone, in sending order."""
        if not statuses:
            return
        with self._reading() as conn:
            self._run_exists(conn, run_id)
            keys = [
                r[0]
                for r in conn.execute(
                    f"SELECT chunk_id FROM chunks WHERE run_id = ? AND status IN"
                    f" {sql_list(ChunkStatus(s) for s in statuses)}"
                    " ORDER BY source_idx, lane, seq, chunk_id",
                    (run_id,),
                )
            ]
        # One row at a time: bodies stay on disk until needed, and the caller may record
        # outcomes between two chunks without disturbing an open cursor.
        for chunk_id in keys:
            chunk = self._load_chunk(run_id, chunk_id)
            if chunk is not None:
                yield chunk

    def _load_chunk(self, run_id: str, chunk_id: str) -> Chunk | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT c.source_idx, s.source, c.seq, c.items, c.first_row, c.last_row, c.body,"
                " c.rows_z, c.ids_z, c.sources_z, c.has_add, c.status FROM chunks c"
                " LEFT JOIN run_sources s ON s.run_id = c.run_id AND s.idx = c.source_idx"
                " WHERE c.run_id = ? AND c.chunk_id = ?",
                (run_id, chunk_id),
            ).fetchone()
        if row is None:
            return None
        source_idx, source, seq, items, first_row, last_row, body, rows_z, ids_z = row[:9]
        sources_z, has_add, status = row[9:]
        if body is None or rows_z is None:
            raise LedgerError(
                f"chunk {chunk_id} of run {run_id} is {status}: its body was dropped "
                "and it cannot be rebuilt"
            )
        ids_json = zlib.decompress(ids_z)
        runs = decode_z(sources_z) if sources_z is not None else [(source_idx, items)]
        return Chunk(
            chunk_id=chunk_id,
            seq=seq,
            body=decompress_body(body),
            items=items,
            rows_json=zlib.decompress(rows_z),
            ids_json=ids_json,
            sources=tuple((int(index), int(count)) for index, count in runs),
            source=source or "",
            first_row=first_row,
            last_row=last_row,
            has_add=bool(has_add),
            id_keys=frozenset(hash(i) for i in orjson.loads(ids_json)),
        )

    def resolve(self, run_id: str, chunk_id: str, as_status: ChunkStatus) -> str:
        """Close an ambiguous, failed or refused chunk as accepted or abandoned (takes the lock).

        ``chunk_id`` may be a unique prefix of at least 8 characters (``ledger show`` prints 12);
        returns the full id. The run's stored summary is refreshed to match.
        """
        as_status = ChunkStatus(as_status)
        if not as_status.is_resolution:
            raise LedgerError(
                f"a chunk can be resolved only as accepted or abandoned, not {as_status}"
            )
        self.lock_for_run()
        with self._reading() as conn:  # a damaged ledger is a read error (exit 2), not a write one
            chunk_id = self._full_chunk_id(conn, run_id, chunk_id)
            self._chunk_status(conn, run_id, chunk_id)
        with self._writing(f"chunk {chunk_id}") as conn:
            status = self._chunk_status(conn, run_id, chunk_id)
            if not status.is_resolvable:
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
                (as_status.value, self._now(), dropped, dropped, run_id, chunk_id),
            )
            refresh_summary(conn, run_id)
        return chunk_id

    def _full_chunk_id(self, conn: sqlite3.Connection, run_id: str, given: str) -> str:
        """The chunk id ``given`` names: itself, or the one chunk of the run it is a prefix of."""
        exact = conn.execute(
            "SELECT 1 FROM chunks WHERE run_id = ? AND chunk_id = ?", (run_id, given)
        ).fetchone()
        if exact is not None or len(given) < _MIN_PREFIX:
            return given
        # a range of the primary key: every id that starts with `given` sorts in it
        matches = [
            row[0]
            for row in conn.execute(
                "SELECT chunk_id FROM chunks WHERE run_id = ? AND chunk_id >= ? AND chunk_id < ?"
                " ORDER BY chunk_id LIMIT 2",
                (run_id, given, given + "\uffff"),
            )
        ]
        if len(matches) > 1:
            raise LedgerError(
                f"{given} is the start of several chunk ids of run {run_id}",
                hint="give more of the id (`fyno-import ledger export --failures FILE` lists them)",
            )
        return matches[0] if matches else given

    def profiles_superseded(self, run_id: str, chunk_ids: list[str]) -> int:
        """Distinct profiles of these chunks that an accepted chunk sent later also carries."""
        if not chunk_ids:
            return 0
        targets = set(chunk_ids)
        with self._reading() as conn:
            self._run_exists(conn, run_id)
            pending = self._first_sendings(conn, run_id, targets)
            if not pending:
                return 0
            superseded = 0
            later = conn.execute(
                "SELECT run_id, chunk_id, ids_z, sent_at FROM chunks"
                " WHERE status = ? AND sent_at > ? ORDER BY sent_at",
                (_ACCEPTED, min(pending.values())),
            )
            for other_run, other_chunk, ids_z, sent_at in later:
                if other_run == run_id and other_chunk in targets:
                    continue
                for pid in set(decode_z(ids_z)):
                    first = pending.get(pid)
                    if first is not None and first < sent_at:
                        superseded += 1
                        del pending[pid]
                if not pending:
                    break
            later.close()
        return superseded

    def _first_sendings(
        self, conn: sqlite3.Connection, run_id: str, chunk_ids: set[str]
    ) -> dict[str, str]:
        """Profile → earliest sending among these chunks that carry it."""
        first: dict[str, str] = {}
        for chunk_id in chunk_ids:
            row = conn.execute(
                "SELECT ids_z, sent_at FROM chunks WHERE run_id = ? AND chunk_id = ?",
                (run_id, chunk_id),
            ).fetchone()
            if row is None:
                raise LedgerError(f"run {run_id} has no chunk {chunk_id} in the ledger")
            ids_z, sent_at = row
            if ids_z is None or sent_at is None:
                continue
            for pid in decode_z(ids_z):
                if pid not in first or sent_at < first[pid]:
                    first[pid] = sent_at
        return first

    def ids_not_accepted(self, run_id: str) -> Iterator[list[str]]:
        """The distinct_ids of each chunk of the run that was not accepted, chunk by chunk."""
        with self._reading() as conn:
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT chunk_id FROM chunks WHERE run_id = ? AND status != ?",
                    (run_id, _ACCEPTED),
                )
            ]
        for chunk_id in keys:
            with self._reading() as conn:
                row = conn.execute(
                    "SELECT ids_z FROM chunks WHERE run_id = ? AND chunk_id = ?",
                    (run_id, chunk_id),
                ).fetchone()
            if row is not None and row[0] is not None:
                yield list(decode_z(row[0]))

    def _chunk_status(self, conn: sqlite3.Connection, run_id: str, chunk_id: str) -> ChunkStatus:
        self._run_exists(conn, run_id)
        row = conn.execute(
            "SELECT status FROM chunks WHERE run_id = ? AND chunk_id = ?", (run_id, chunk_id)
        ).fetchone()
        if row is None:
            raise LedgerError(
                f"run {run_id} has no chunk {chunk_id} in the ledger {self.path}",
                hint="`fyno-import ledger export --failures FILE` lists the open chunks",
            )
        return ChunkStatus(row[0])
