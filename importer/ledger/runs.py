"""Runs and their sources: creating, finding (to resume, to retry), counting, marking.

A run's stored ``status`` is what its process last wrote. A process killed with ``kill -9``
writes nothing more, so its run stays ``running``; the run lock tells the truth (the kernel
drops it with the process), and ``RunInfo.effective_status`` is the status read with it.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

import orjson

from importer.errors import LedgerError
from importer.ledger.store import Store, sql_list, to_json
from importer.model import ChunkStatus, RunStatus, SourceStatus

# Belt and braces: callers never pass the key, but a settings dict must not carry one either.
_SECRET_SETTINGS: Final = frozenset({"api_key", "key", "token", "password", "authorization"})
_ACCEPTED: Final = ChunkStatus.ACCEPTED.value
_OPEN: Final = sql_list(s for s in ChunkStatus if s.is_open)
_RUN_COLUMNS: Final = (
    "run_id, created_at, updated_at, finished_at, status, source_key, mapping_hash, chunk_key,"
    " shard, settings, base_url, workspace, api_version, summary"
)
# A run_sources row `s` whose chunks were all accepted: schema 2 knows the range of chunk
# positions carrying its rows; a schema-1 row counts the chunks of its own source index.
ALL_ACCEPTED: Final = (
    "(CASE WHEN s.first_chunk IS NOT NULL THEN"
    " (SELECT count(*) FROM chunks c WHERE c.run_id = s.run_id"
    f"   AND c.seq BETWEEN s.first_chunk AND s.last_chunk AND c.status = '{_ACCEPTED}')"
    " = s.last_chunk - s.first_chunk + 1"
    " ELSE s.chunks_total = (SELECT count(*) FROM chunks c WHERE c.run_id = s.run_id"
    f"   AND c.source_idx = s.idx AND c.status = '{_ACCEPTED}')"
    " AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.run_id = s.run_id"
    f"   AND c.source_idx = s.idx AND c.status != '{_ACCEPTED}') END)"
)
_SOURCE_COLUMNS: Final = (
    "run_id, idx, source, fingerprint, rows_read, rows_rejected, chunks_total, status,"
    " first_chunk, last_chunk"
)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One source of a run as the ledger knows it."""

    idx: int
    source: str
    fingerprint: str
    rows_read: int
    rows_rejected: int
    chunks_total: int | None  # None until the source was completely read and chunked
    status: SourceStatus
    # positions of the chunks holding its first and last item (schema 2; None without items)
    first_chunk: int | None = None
    last_chunk: int | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run's row, with its settings and summary parsed and its sources."""

    run_id: str
    created_at: str
    updated_at: str
    finished_at: str | None
    status: RunStatus  # as stored: what the run's process last wrote
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
    # As a reader should see it: a stored "running" whose process is gone (no process holds
    # the run lock, or a later run took it) is interrupted; otherwise the stored status.
    effective_status: RunStatus


def _source_info(row: tuple[Any, ...]) -> SourceInfo:
    """A run_sources row (in ``_SOURCE_COLUMNS`` order) as a SourceInfo."""
    _, idx, source, fingerprint, rows_read, rows_rejected, chunks_total, status = row[:8]
    return SourceInfo(
        idx=idx,
        source=source,
        fingerprint=fingerprint,
        rows_read=rows_read,
        rows_rejected=rows_rejected,
        chunks_total=chunks_total,
        status=SourceStatus(status),
        first_chunk=row[8],
        last_chunk=row[9],
    )


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the run lock tells about which stored "running" run or retry is alive."""

    known: bool  # False when the lock could not be probed: stored statuses stand
    live_run: str | None = None  # the run a live lock holder is running, if any
    live_retry: int | None = None  # or the retry it is making

    def status(self, run_id: str, stored: RunStatus) -> RunStatus:
        """The effective status of a run stored with ``stored``."""
        return self._effective(stored, alive=run_id == self.live_run)

    def retry_status(self, retry_id: int, stored: RunStatus) -> RunStatus:
        """The effective status of a retry stored with ``stored``."""
        return self._effective(stored, alive=retry_id == self.live_retry)

    def _effective(self, stored: RunStatus, *, alive: bool) -> RunStatus:
        if stored is not RunStatus.RUNNING or not self.known or alive:
            return stored
        return RunStatus.INTERRUPTED


class RunsMixin(Store):
    """The ``runs`` and ``run_sources`` tables."""

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
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,NULL,?,?,?,?,?,?,?,?,?,NULL)",
                (
                    run_id,
                    now,
                    now,
                    RunStatus.RUNNING.value,
                    source_key,
                    mapping_hash,
                    chunk_key,
                    shard,
                    to_json(clean),
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
            raise self._no_run(run_id)
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
            if RunStatus(status).is_finished:
                open_chunk = conn.execute(
                    f"SELECT 1 FROM chunks WHERE run_id = ? AND status != '{_ACCEPTED}' LIMIT 1",
                    (run_id,),
                ).fetchone()
                if open_chunk is None:
                    return None
        return self.get_run(run_id)

    def latest_run_to_retry(self) -> RunInfo | None:
        """The latest run with an open chunk (``ChunkStatus.is_open``): `retry` without --run.

        In flight and pending count: a `retry` killed with -9 leaves its chunks so, and they
        must not fall out of sight.
        """
        with self._reading() as conn:
            # Through chunks_by_status: only the open chunks are read, however big the ledger.
            row = conn.execute(
                "SELECT run_id FROM runs WHERE run_id IN"
                f" (SELECT run_id FROM chunks WHERE status IN {_OPEN})"
                " ORDER BY created_at DESC, run_id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else self.get_run(row[0])

    def imported_sources(
        self, fingerprints: list[str], *, exclude_run: str | None = None
    ) -> dict[str, str]:
        """Fingerprint → latest run that chunked that source completely and had every chunk
        carrying its rows accepted (a chunk may carry rows of the sources beside it)."""
        if not fingerprints:
            return {}
        marks = ",".join("?" * len(fingerprints))
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT s.fingerprint, s.run_id FROM run_sources s JOIN runs r USING (run_id)"
                f" WHERE s.fingerprint IN ({marks}) AND s.chunks_total IS NOT NULL"
                f" AND s.run_id IS NOT ? AND {ALL_ACCEPTED} ORDER BY r.created_at, r.run_id",
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
        first_chunk: int | None = None,
        last_chunk: int | None = None,
        chunked: bool = True,
        skipped: bool = False,
    ) -> None:
        """Record a source's row counts and, once it is completely chunked, its chunk range
        (the positions of the chunks holding its first and last item; None without items)."""
        if skipped:
            status = SourceStatus.SKIPPED
        else:
            status = SourceStatus.CHUNKED if chunked else SourceStatus.PENDING
        total = None
        if chunked:
            total = 0 if first_chunk is None or last_chunk is None else last_chunk - first_chunk + 1
        with self._writing("source counts") as conn:
            cur = conn.execute(
                "UPDATE run_sources SET rows_read = ?, rows_rejected = ?, chunks_total = ?,"
                " first_chunk = ?, last_chunk = ?, status = ? WHERE run_id = ? AND idx = ?",
                (
                    rows_read,
                    rows_rejected,
                    total,
                    first_chunk,
                    last_chunk,
                    status.value,
                    run_id,
                    idx,
                ),
            )
            if cur.rowcount == 0:
                raise LedgerError(f"run {run_id} has no source #{idx} in the ledger {self.path}")
            conn.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (self._now(), run_id))

    def mark_run(
        self, run_id: str, status: RunStatus | str, summary: dict[str, Any] | None = None
    ) -> None:
        """Set a run's status and last summary (None keeps the previous one).

        finished_at is set when the status is finished and cleared otherwise (a resumed run).
        """
        try:
            status = RunStatus(status)
        except ValueError:
            raise ValueError(f"unknown run status {status!r}") from None
        now = self._now()
        with self._writing("the run's status") as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?,"
                " summary = coalesce(?, summary) WHERE run_id = ?",
                (
                    status.value,
                    now,
                    now if status.is_finished else None,
                    None if summary is None else to_json(summary),
                    run_id,
                ),
            )
            if cur.rowcount == 0:
                self._run_exists(conn, run_id)

    # -- internals ------------------------------------------------------------------------------

    def liveness(self, conn: sqlite3.Connection) -> Liveness:
        """Which stored "running" run or retry, if any, a live process holds the lock for."""
        held = self.run_lock_held()
        if not held:
            return Liveness(known=held is not None)
        # The holder wrote its start after any process that died holding the lock before it:
        # a run marks itself running, a retry records its row. So the latest of those is the
        # live one; older ones are stale.
        running = RunStatus.RUNNING.value
        run = conn.execute(
            "SELECT run_id, updated_at FROM runs WHERE status = ?"
            " ORDER BY updated_at DESC, run_id DESC LIMIT 1",
            (running,),
        ).fetchone()
        retry = conn.execute(
            "SELECT retry_id, started_at FROM retries WHERE status = ?"
            " ORDER BY started_at DESC, retry_id DESC LIMIT 1",
            (running,),
        ).fetchone()
        if retry is not None and (run is None or retry[1] > run[1]):
            return Liveness(known=True, live_retry=retry[0])
        return Liveness(known=True, live_run=None if run is None else run[0])

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
            sources[s[0]].append(_source_info(s))
        running = any(r[4] == RunStatus.RUNNING for r in rows)
        # Probe the lock only when a stored status could be stale.
        liveness = self.liveness(conn) if running else Liveness(known=False)
        return [
            RunInfo(
                run_id=r[0],
                created_at=r[1],
                updated_at=r[2],
                finished_at=r[3],
                status=RunStatus(r[4]),
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
                effective_status=liveness.status(r[0], RunStatus(r[4])),
            )
            for r in rows
        ]
