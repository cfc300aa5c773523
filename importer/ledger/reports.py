"""What `ledger show` and `ledger export` read: a run's report, and the failures CSV.

Both only read (no lock, safe while a run is going on); the CSV is created owner-only, since it
holds profile ids and source rows.

A run's report (``run_report``) is plain data: the run's row, its sources (each with whether it
is imported, as ``imported_sources`` decides it), its chunk counts, and what a person needs the
morning after: its history (the run's line, then one per retry: ``history``), its failures
grouped by cause and its ambiguous chunks (``failures``).
"""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from typing import IO, Any, Final, cast

from importer.errors import LedgerError
from importer.files import open_private
from importer.ledger.failures import ambiguous_chunks, chunk_failures, item_failures
from importer.ledger.history import HistoryMixin, retry_line, run_kind, run_line, run_totals
from importer.ledger.runs import ALL_ACCEPTED, RunInfo, SourceInfo
from importer.ledger.store import decode_z, sql_list
from importer.model import ChunkStatus, SourceStatus

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
_FAILURES: Final = sql_list(s for s in ChunkStatus if s.is_failure)
_ITEM_ERROR_STATUS: Final = "item_error"  # the status column of an item error's line


def _only_run(column: str, run_id: str | None) -> tuple[str, tuple[str, ...]]:
    """An SQL condition that ``column`` is the run, with its parameters; none for every run."""
    # Only when asked: `? IS NULL OR …` would keep SQLite from the run_id index.
    return ("", ()) if run_id is None else (f" AND {column} = ?", (run_id,))


def _blank(value: object) -> object:
    """NULL as an empty CSV cell."""
    return "" if value is None else value


class ReportsMixin(HistoryMixin):
    """Reports over runs and chunks."""

    def run_report(self, run_id: str) -> dict[str, Any]:
        """A JSON-able description of the run for `ledger show` (never a secret)."""
        run = self.get_run(run_id)
        with self._reading() as conn:
            by_status = {s.value: 0 for s in ChunkStatus}
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
            "status": run.effective_status,  # a killed run reads as interrupted, not running
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
            "sources": self._sources(run, per_source),
            "chunks": by_status,
            "chunks_recorded": sum(by_status.values()),
            "items": items,
            "items_accepted": items_accepted,
            "bytes": size,
            "attempts": attempts,
            "item_errors": item_errors,
            **self._looking_back(run),
        }

    def _sources(
        self, run: RunInfo, by_first_source: dict[int, dict[str, int]]
    ) -> list[dict[str, Any]]:
        """The report's part on each source of the run."""
        with self._reading() as conn:
            imported = self._imported_here(conn, run.run_id)
        imported_by = self.imported_sources([s.fingerprint for s in run.sources])
        return [
            {
                "idx": s.idx,
                "source": s.source,
                "fingerprint": s.fingerprint,
                "status": s.status,
                "rows_read": s.rows_read,
                "rows_rejected": s.rows_rejected,
                "chunks_total": s.chunks_total,
                "chunks_accepted": self._source_accepted(run.run_id, s, by_first_source),
                "imported": imported.get(s.idx, False),
                # the latest run that imported this content: this one, or another
                "imported_by": imported_by.get(s.fingerprint),
            }
            for s in run.sources
        ]

    def _looking_back(self, run: RunInfo) -> dict[str, Any]:
        """The report's parts for a person: kind, duration, history, failures, ambiguous."""
        with self._reading() as conn:
            line = run_line(run, run_totals(conn, [run.run_id])[run.run_id])
            names = {s.idx: s.source for s in run.sources}
            failures = chunk_failures(conn, run.run_id, names)
            failures += item_failures(conn, run.run_id, names)
            ambiguous = ambiguous_chunks(conn, run.run_id, names)
        retries = reversed(self.list_retries([run.run_id]))  # oldest first: the run's story
        return {
            "kind": run_kind(run.settings),
            "duration_s": line["duration_s"],
            "history": [line, *(retry_line(r, len(run.sources)) for r in retries)],
            "failures": failures,
            "ambiguous": ambiguous,
        }

    def _imported_here(self, conn: sqlite3.Connection, run_id: str) -> dict[int, bool]:
        """Source index → whether this run imported it (every chunk of its rows accepted)."""
        rows = conn.execute(
            "SELECT s.idx, s.chunks_total IS NOT NULL"
            f" AND s.status != '{SourceStatus.SKIPPED.value}'"
            f" AND {ALL_ACCEPTED} FROM run_sources s WHERE s.run_id = ?",
            (run_id,),
        )
        return {idx: bool(imported) for idx, imported in rows}

    def _source_accepted(
        self, run_id: str, source: SourceInfo, by_first_source: dict[int, dict[str, int]]
    ) -> int:
        """Accepted chunks carrying the source's rows (schema 2: its range of positions)."""
        if source.first_chunk is None or source.last_chunk is None:
            return by_first_source.get(source.idx, {}).get(ChunkStatus.ACCEPTED, 0)
        with self._reading() as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM chunks WHERE run_id = ? AND seq BETWEEN ? AND ?"
                " AND status = ?",
                (run_id, source.first_chunk, source.last_chunk, ChunkStatus.ACCEPTED.value),
            ).fetchone()
        return int(count)

    def export_failures(self, path: Path, run_id: str | None = None) -> int:
        """Write the CSV of failed, refused and ambiguous items and item errors (0600); lines."""
        path = Path(path)
        where, params = _only_run("c.run_id", run_id)
        with self._reading() as conn:
            if run_id is not None:
                self._run_exists(conn, run_id)
            keys = conn.execute(
                "SELECT c.run_id, c.chunk_id FROM chunks c JOIN runs r USING (run_id)"
                f" WHERE c.status IN {_FAILURES}{where}"
                " ORDER BY r.created_at, c.run_id, c.source_idx, c.seq, c.first_row, c.chunk_id",
                params,
            ).fetchall()
        try:
            handle = cast(IO[str], open_private(path, "w"))
        except OSError as e:
            raise LedgerError(f"cannot write {path}: {e.strerror}") from None
        with handle:
            out = csv.writer(handle, lineterminator="\n")
            out.writerow(EXPORT_COLUMNS)
            lines = sum(self._write_chunk_items(out, chunk_run, cid) for chunk_run, cid in keys)
            with self._reading() as conn:
                lines += _write_item_errors(out, conn, run_id)
        return lines

    def _write_chunk_items(self, out: Any, run_id: str, chunk_id: str) -> int:
        """One line per item of a failed chunk, naming the item's own source; how many."""
        # One chunk at a time, so a big export holds one chunk's rows in memory, not all.
        with self._reading() as conn:
            source_idx, items, status, http_status, error, rows_z, ids_z, sources_z = conn.execute(
                "SELECT source_idx, items, status, http_status, error, rows_z, ids_z, sources_z"
                " FROM chunks WHERE run_id = ? AND chunk_id = ?",
                (run_id, chunk_id),
            ).fetchone()
            names = dict(
                conn.execute("SELECT idx, source FROM run_sources WHERE run_id = ?", (run_id,))
            )
        rows = decode_z(rows_z) if rows_z is not None else []
        ids = decode_z(ids_z) if ids_z is not None else []
        runs = decode_z(sources_z) if sources_z is not None else [(source_idx, items)]
        sources = [names.get(index) for index, count in runs for _ in range(count)]
        tail = (status, _blank(http_status), error or "")
        lines = list(zip(sources, rows, ids, strict=False))  # all in body order, one per item
        out.writerows((run_id, chunk_id, *line, *tail) for line in lines)
        return len(lines)


def _write_item_errors(out: Any, conn: sqlite3.Connection, run_id: str | None) -> int:
    """One line per item error of an accepted chunk (of one run, or of all); how many."""
    where, params = _only_run("e.run_id", run_id)
    lines = 0
    for er, cid, source, item_row, distinct_id, http_status, op, st in conn.execute(
        "SELECT e.run_id, e.chunk_id, s.source, e.source_row, e.distinct_id,"
        " c.http_status, e.operator, e.status FROM item_errors e"
        " JOIN chunks c ON c.run_id = e.run_id AND c.chunk_id = e.chunk_id"
        " JOIN runs r ON r.run_id = e.run_id"
        " LEFT JOIN run_sources s ON s.run_id = c.run_id"
        "  AND s.idx = coalesce(e.source_idx, c.source_idx)"
        f" WHERE 1{where}"
        " ORDER BY r.created_at, e.run_id, c.source_idx, e.source_row, e.item_index",
        params,
    ).fetchall():
        row = (er, cid, source, _blank(item_row), distinct_id or "", _ITEM_ERROR_STATUS)
        out.writerow((*row, _blank(http_status), f"{op}: {st}"))
        lines += 1
    return lines
