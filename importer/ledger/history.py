"""The history: one line per run and per retry, newest first, as ``ledger show`` lists them.

A line is plain data (a dict, the same keys for both kinds):

    kind              run | changed-only (a run with ``changed_only`` in its settings) | retry
    run_id            the run (for a retry: the run it resent)
    retry_id          None for a run
    started_at, ended_at, duration_s   ended_at is None while it runs (or for a retry killed
                      with -9); a run's end is its finished_at, else its last record
    status            the effective status (a run or retry killed with -9 reads as interrupted)
    sources           how many sources the run has
    rows_read, rows_rejected           None for a retry (it reads no rows), and while not known
                      (a run still reading, or killed before it recorded them)
    items_sent        items in accepted chunks (a run: over all its tries and retries)
    chunks_total      a run: its chunks in the ledger; a retry: the chunks it set out to resend
    chunks_accepted, chunks_failed (refused included), chunks_ambiguous
                      a run: its chunks now, retries included; a retry: the chunks it sent
    requests          requests sent: a run's over all tries, a retry's own
    include_ambiguous None for a run
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from importer.ledger.retries import RetriesMixin, RetryInfo
from importer.ledger.runs import RunInfo
from importer.model import ChunkStatus, RunStatus, SourceStatus

_STAMP: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_stamp(stamp: str) -> datetime:
    """A ledger timestamp as an aware UTC datetime."""
    return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)


def run_kind(settings: dict[str, Any]) -> str:
    """``changed-only`` for an incremental run, else ``run``."""
    return "changed-only" if settings.get("changed_only") else "run"


def _seconds(start: str, end: str | None) -> float | None:
    if end is None:
        return None
    return round((parse_stamp(end) - parse_stamp(start)).total_seconds(), 3)


def run_totals(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """Run → chunk counts by status, plus ``items_accepted`` and ``requests``."""
    totals: dict[str, dict[str, int]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return totals
    for run_id, status, count, items, attempts in conn.execute(
        "SELECT run_id, status, count(*), sum(items), sum(attempts) FROM chunks"
        f" WHERE run_id IN ({','.join('?' * len(run_ids))}) GROUP BY run_id, status",
        run_ids,
    ):
        counts = totals[run_id]
        counts[status] = int(count)
        counts["requests"] = counts.get("requests", 0) + int(attempts)
        if status == ChunkStatus.ACCEPTED:
            counts["items_accepted"] = int(items)
    return totals


def source_rows(run: RunInfo) -> list[tuple[int, int] | None]:
    """(rows read, rows rejected) of each source of the run; None where not known yet.

    A source's row counts reach ``run_sources`` once it is chunked while sending; for one that
    is not (a run stopped early), they are the run's stored summary's, from its validation, and
    unknown when it has none (a run still going, or killed before it wrote one).
    """
    validated = (run.summary or {}).get("sources") or []
    if len(validated) != len(run.sources):
        validated = [None] * len(run.sources)
    return [
        (s.rows_read, s.rows_rejected)
        if s.status is not SourceStatus.PENDING
        else None
        if v is None
        else (int(v.get("rows_read") or 0), int(v.get("rows_rejected") or 0))
        for s, v in zip(run.sources, validated, strict=True)
    ]


def run_line(run: RunInfo, counts: dict[str, int]) -> dict[str, Any]:
    """The history line of a run, from its chunk counts (``run_totals``)."""
    alive = run.effective_status is RunStatus.RUNNING
    ended = None if alive else (run.finished_at or run.updated_at)
    statuses = {s.value: counts.get(s.value, 0) for s in ChunkStatus}
    rows = source_rows(run)
    known = [counts for counts in rows if counts is not None]
    unknown = len(known) < len(rows)
    return {
        "kind": run_kind(run.settings),
        "run_id": run.run_id,
        "retry_id": None,
        "started_at": run.created_at,
        "ended_at": ended,
        "duration_s": _seconds(run.created_at, ended),
        "status": run.effective_status.value,
        "sources": len(run.sources),
        "rows_read": None if unknown else sum(read for read, _ in known),
        "rows_rejected": None if unknown else sum(rejected for _, rejected in known),
        "items_sent": counts.get("items_accepted", 0),
        "chunks_total": sum(statuses.values()),
        "chunks_accepted": statuses[ChunkStatus.ACCEPTED],
        "chunks_failed": statuses[ChunkStatus.FAILED] + statuses[ChunkStatus.REFUSED],
        "chunks_ambiguous": statuses[ChunkStatus.AMBIGUOUS],
        "requests": counts.get("requests", 0),
        "include_ambiguous": None,
    }


def retry_line(retry: RetryInfo, sources: int) -> dict[str, Any]:
    """The history line of a retry of a run with ``sources`` sources."""
    summary = retry.summary or {}
    return {
        "kind": "retry",
        "run_id": retry.run_id,
        "retry_id": retry.retry_id,
        "started_at": retry.started_at,
        "ended_at": retry.ended_at,
        "duration_s": _seconds(retry.started_at, retry.ended_at),
        "status": retry.effective_status.value,
        "sources": sources,
        "rows_read": None,
        "rows_rejected": None,
        "items_sent": int(summary.get("items_sent") or 0),
        "chunks_total": retry.chunks,
        "chunks_accepted": retry.accepted,
        "chunks_failed": retry.failed,
        "chunks_ambiguous": retry.ambiguous,
        "requests": retry.requests,
        "include_ambiguous": retry.include_ambiguous,
    }


class HistoryMixin(RetriesMixin):
    """The history of the ledger: its runs and retries."""

    def history(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """The latest ``limit`` runs and retries (every one when None), newest first."""
        count = -1 if limit is None else limit  # SQLite's LIMIT -1: no limit
        with self._reading() as conn:
            runs = self._runs(
                conn,
                "WHERE run_id IN (SELECT run_id FROM runs"
                " ORDER BY created_at DESC, run_id DESC LIMIT ?)",
                (count,),
            )
            totals = run_totals(conn, [r.run_id for r in runs])
        retries = self.list_retries(limit=count)
        sources = self._source_counts({r.run_id for r in retries})
        lines = [run_line(run, totals[run.run_id]) for run in runs]
        lines += [retry_line(retry, sources.get(retry.run_id, 0)) for retry in retries]
        # newest first; a retry after its run when both start in one microsecond (never, really)
        lines.sort(key=lambda line: (line["started_at"], line["retry_id"] or 0), reverse=True)
        return lines if limit is None else lines[:limit]

    def history_size(self) -> int:
        """How many lines the whole history has: runs and retries."""
        with self._reading() as conn:
            (size,) = conn.execute(
                "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM retries)"
            ).fetchone()
        return int(size)

    def _source_counts(self, run_ids: set[str]) -> dict[str, int]:
        if not run_ids:
            return {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT run_id, count(*) FROM run_sources"
                f" WHERE run_id IN ({','.join('?' * len(run_ids))}) GROUP BY run_id",
                sorted(run_ids),
            ).fetchall()
        return {run_id: int(count) for run_id, count in rows}
