"""A run's stored summary kept in step with its chunks after the run ended.

The ``runs.summary`` column holds the run's ``--json`` summary as the run ended. `retry` and
`ledger resolve` change the statuses of that run's chunks later, so they refresh it: its chunk
counts become the ledger's, a retry's sends are added to it, and its exit code is worked out again
(unless the run ended on an error, which a retry does not undo). Its keys stay the contract's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from importer.ledger.store import to_json
from importer.model import ChunkStatus

# What makes a finished run exit 1 (contract: "The summary", "Exit codes").
_PROBLEMS = ("rows_rejected", "chunks_failed", "chunks_ambiguous", "item_errors")


def chunk_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """Status → how many of the run's chunks have it (statuses without chunks left out)."""
    rows = conn.execute(
        "SELECT status, count(*) FROM chunks WHERE run_id = ? GROUP BY status", (run_id,)
    )
    return {status: int(count) for status, count in rows}


def summary_with(
    summary: Mapping[str, Any], counts: Mapping[str, int], added: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """``summary`` with the ledger's chunk ``counts`` and ``added`` (a retry's sends) in it."""
    out = dict(summary)
    for key, value in (added or {}).items():
        out[key] = int(out.get(key) or 0) + value
    refused = counts.get(ChunkStatus.REFUSED, 0)
    accepted = counts.get(ChunkStatus.ACCEPTED, 0)
    # chunks_skipped were accepted by an earlier try of the run; chunks_accepted are the rest
    out["chunks_accepted"] = max(0, accepted - int(out.get("chunks_skipped") or 0))
    out["chunks_failed"] = counts.get(ChunkStatus.FAILED, 0) + refused
    out["chunks_refused"] = refused
    out["chunks_ambiguous"] = counts.get(ChunkStatus.AMBIGUOUS, 0)
    if out.get("error") is None:
        out["exit_code"] = 1 if any(out.get(key) for key in _PROBLEMS) else 0
    return out


def refresh_summary(
    conn: sqlite3.Connection, run_id: str, added: Mapping[str, int] | None = None
) -> None:
    """Rewrite the run's stored summary from its chunks (inside the caller's transaction).

    A run without a stored summary (killed before it wrote one) keeps none: its report and
    history line are read from the chunks themselves.
    """
    row = conn.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None or row[0] is None:
        return
    summary = summary_with(orjson.loads(row[0]), chunk_counts(conn, run_id), added)
    conn.execute("UPDATE runs SET summary = ? WHERE run_id = ?", (to_json(summary), run_id))
