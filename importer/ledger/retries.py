"""Retries: a row per `retry` of a run, what became of the chunks it sent, and the run kept in step.

A retry records its row (``running``) before it sends anything, and closes it when it ends,
however it ends short of ``kill -9``; then, in the same transaction, the run's stored summary is
refreshed (``summaries``) so that the run's history line, its report and its summary agree. A retry
killed with -9 stays ``running`` here and reads as interrupted once the run lock is free, as a run
does (``runs.Liveness``).

The chunks a retry sent are the run's chunks written since it started (the run lock keeps any
other writer away meanwhile); its requests are the attempts added to the run's chunks.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Final

import orjson

from importer.ledger.runs import Liveness, RunsMixin
from importer.ledger.store import to_json
from importer.ledger.summaries import refresh_summary
from importer.model import ChunkStatus, RunStatus

_RETRY_COLUMNS: Final = (
    "retry_id, run_id, started_at, ended_at, status, include_ambiguous, chunks, accepted,"
    " failed, ambiguous, requests, summary"
)
# What a retry adds to its run's summary, from its own summary (each counted once per chunk).
_ADDED: Final = ("items_sent", "bytes_sent", "item_errors")


@dataclass(frozen=True, slots=True)
class RetryStarted:
    """A retry under way, as ``finish_retry`` needs it."""

    retry_id: int
    run_id: str
    started_at: str
    attempts_before: int  # requests made for the run's chunks before this retry


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """One retry of a run, as recorded."""

    retry_id: int
    run_id: str
    started_at: str
    ended_at: str | None  # None while it runs, or when it was killed with -9
    status: RunStatus  # as stored
    effective_status: RunStatus  # a killed retry reads as interrupted
    include_ambiguous: bool
    chunks: int  # chunks it set out to resend
    accepted: int  # of those it sent: accepted, failed (refused included), ambiguous
    failed: int
    ambiguous: int
    requests: int
    summary: dict[str, Any] | None  # its own --json summary


def _attempts(conn: sqlite3.Connection, run_id: str) -> int:
    (total,) = conn.execute(
        "SELECT coalesce(sum(attempts), 0) FROM chunks WHERE run_id = ?", (run_id,)
    ).fetchone()
    return int(total)


class RetriesMixin(RunsMixin):
    """The ``retries`` table."""

    def start_retry(self, run_id: str, *, chunks: int, include_ambiguous: bool) -> RetryStarted:
        """Record a retry of the run (running) before it sends its first request."""
        self.lock_for_run()
        now = self._now()
        with self._writing("the start of a retry") as conn:
            self._run_exists(conn, run_id)
            before = _attempts(conn, run_id)
            cursor = conn.execute(
                "INSERT INTO retries (run_id, started_at, status, include_ambiguous, chunks)"
                " VALUES (?,?,?,?,?)",
                (run_id, now, RunStatus.RUNNING.value, int(include_ambiguous), chunks),
            )
            retry_id = int(cursor.lastrowid or 0)
        return RetryStarted(retry_id, run_id, now, before)

    def finish_retry(self, retry: RetryStarted, status: RunStatus, summary: dict[str, Any]) -> None:
        """Close the retry with what became of its chunks, and refresh its run's summary.

        ``summary`` is the retry's own ``--json`` summary.
        """
        now = self._now()
        with self._writing("the end of a retry") as conn:
            counts = dict(
                conn.execute(
                    "SELECT status, count(*) FROM chunks WHERE run_id = ? AND updated_at >= ?"
                    " GROUP BY status",
                    (retry.run_id, retry.started_at),
                ).fetchall()
            )
            requests = _attempts(conn, retry.run_id) - retry.attempts_before
            conn.execute(
                "UPDATE retries SET ended_at = ?, status = ?, accepted = ?, failed = ?,"
                " ambiguous = ?, requests = ?, summary = ? WHERE retry_id = ?",
                (
                    now,
                    RunStatus(status).value,
                    counts.get(ChunkStatus.ACCEPTED, 0),
                    counts.get(ChunkStatus.FAILED, 0) + counts.get(ChunkStatus.REFUSED, 0),
                    counts.get(ChunkStatus.AMBIGUOUS, 0),
                    requests,
                    to_json(summary),
                    retry.retry_id,
                ),
            )
            added = {key: int(summary.get(key) or 0) for key in _ADDED}
            # every request of a retry resends a chunk the run sent before
            refresh_summary(conn, retry.run_id, {**added, "retries": requests})

    def list_retries(self, run_ids: list[str] | None = None, *, limit: int = -1) -> list[RetryInfo]:
        """The retries of these runs (of every run when None), newest first, at most ``limit``."""
        where, params = "", tuple(run_ids or ())
        if run_ids is not None:
            where = f"WHERE run_id IN ({','.join('?' * len(run_ids))})"
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_RETRY_COLUMNS} FROM retries {where}"
                " ORDER BY started_at DESC, retry_id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            running = any(r[4] == RunStatus.RUNNING for r in rows)
            liveness = self.liveness(conn) if running else Liveness(known=False)
        return [_retry_info(row, liveness) for row in rows]


def _retry_info(row: tuple[Any, ...], liveness: Liveness) -> RetryInfo:
    """A retries row (in ``_RETRY_COLUMNS`` order) as a RetryInfo."""
    retry_id, run_id, started_at, ended_at, status = row[:5]
    include_ambiguous, chunks, accepted, failed, ambiguous, requests, summary = row[5:]
    return RetryInfo(
        retry_id=retry_id,
        run_id=run_id,
        started_at=started_at,
        ended_at=ended_at,
        status=RunStatus(status),
        effective_status=liveness.retry_status(retry_id, RunStatus(status)),
        include_ambiguous=bool(include_ambiguous),
        chunks=chunks,
        accepted=accepted,
        failed=failed,
        ambiguous=ambiguous,
        requests=requests,
        summary=None if summary is None else orjson.loads(summary),
    )
