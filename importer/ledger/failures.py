"""What went wrong in a run, grouped by cause, and its ambiguous chunks one by one.

A **cause** is what the API or the connection said, the same for every chunk it hit: the HTTP
status and the API's message, or the transport error. The sender's words about how many tries it
made (``gave up after 7 tries: …``) are left out, so one outage is one cause however many tries
each chunk got. Three kinds of group:

    failed      transient failures until retries ran out: `retry` resends them
    refused     the API answered 400 (or another 4xx): resending cannot help; fix the data
    item_error  items of accepted chunks that the API did not mark "ok", by operator and status

Each group carries its chunk and item counts and its first few rows (source, row, distinct_id).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Final

from importer.ledger.store import decode_z
from importer.model import ChunkStatus

EXAMPLES: Final = 3  # rows shown per group
_TRIES: Final = re.compile(r"^gave up after \d+ tr(?:y|ies): ")


def cause(http_status: int | None, error: str | None) -> str:
    """One wording for a cause: ``HTTP 503: <message>``, or the transport error."""
    text = _TRIES.sub("", (error or "").strip()) or "no message"
    if http_status is not None and f"HTTP {http_status}" not in text:
        text = f"HTTP {http_status}: {text}"
    return text


def _examples(
    conn: sqlite3.Connection, run_id: str, seq: int, names: dict[int, str]
) -> list[dict[str, Any]]:
    """The first rows of the chunk at position ``seq``, while its rows are kept."""
    row = conn.execute(
        "SELECT source_idx, items, rows_z, ids_z, sources_z FROM chunks"
        " WHERE run_id = ? AND seq = ?",
        (run_id, seq),
    ).fetchone()
    if row is None or row[2] is None or row[3] is None:
        return []
    source_idx, items, rows_z, ids_z, sources_z = row
    runs = decode_z(sources_z) if sources_z is not None else [(source_idx, items)]
    sources = [index for index, count in runs for _ in range(count)][:EXAMPLES]
    rows, ids = decode_z(rows_z)[:EXAMPLES], decode_z(ids_z)[:EXAMPLES]
    return [
        {"source": names.get(index), "row": source_row, "distinct_id": distinct_id}
        for index, source_row, distinct_id in zip(sources, rows, ids, strict=False)
    ]


def chunk_failures(
    conn: sqlite3.Connection, run_id: str, names: dict[int, str]
) -> list[dict[str, Any]]:
    """The run's failed and refused chunks grouped by kind and cause, the biggest first."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for status, http_status, error, chunks, items, first_seq in conn.execute(
        "SELECT status, http_status, error, count(*), sum(items), min(seq) FROM chunks"
        " WHERE run_id = ? AND status IN (?, ?) GROUP BY status, http_status, error",
        (run_id, ChunkStatus.FAILED.value, ChunkStatus.REFUSED.value),
    ):
        key = (status, cause(http_status, error))
        group = groups.setdefault(
            key,
            {
                "kind": status,
                "cause": key[1],
                "http_status": http_status,
                "chunks": 0,
                "items": 0,
                "resendable": status == ChunkStatus.FAILED,
                "first_seq": first_seq,
            },
        )
        group["chunks"] += chunks
        group["items"] += items
        group["first_seq"] = min(group["first_seq"], first_seq)
    out = []
    for group in groups.values():
        group["examples"] = _examples(conn, run_id, group.pop("first_seq"), names)
        out.append(group)
    return sorted(out, key=lambda g: (-g["items"], g["kind"], g["cause"]))


def item_failures(
    conn: sqlite3.Connection, run_id: str, names: dict[int, str]
) -> list[dict[str, Any]]:
    """The run's item errors (in accepted chunks) grouped by operator and status."""
    out = []
    for operator, status, chunks, items in conn.execute(
        "SELECT operator, status, count(DISTINCT chunk_id), count(*) FROM item_errors"
        " WHERE run_id = ? GROUP BY operator, status ORDER BY count(*) DESC, operator, status",
        (run_id,),
    ).fetchall():
        examples = conn.execute(
            "SELECT coalesce(e.source_idx, c.source_idx), e.source_row, e.distinct_id"
            " FROM item_errors e JOIN chunks c ON c.run_id = e.run_id AND c.chunk_id = e.chunk_id"
            " WHERE e.run_id = ? AND e.operator = ? AND e.status = ?"
            " ORDER BY c.seq, e.item_index LIMIT ?",
            (run_id, operator, status, EXAMPLES),
        ).fetchall()
        out.append(
            {
                "kind": "item_error",
                "cause": f"{operator}: {status}",
                "http_status": None,
                "chunks": chunks,
                "items": items,
                "resendable": False,
                "examples": [
                    {"source": names.get(index), "row": row, "distinct_id": distinct_id}
                    for index, row, distinct_id in examples
                ],
            }
        )
    return out


def ambiguous_chunks(
    conn: sqlite3.Connection, run_id: str, names: dict[int, str]
) -> list[dict[str, Any]]:
    """Every ambiguous chunk of the run, in sending order, with the rows it carries."""
    out = []
    for row in conn.execute(
        "SELECT chunk_id, items, source_idx, coalesce(last_source, source_idx), first_row,"
        " last_row, attempts, http_status, error FROM chunks WHERE run_id = ? AND status = ?"
        " ORDER BY seq",
        (run_id, ChunkStatus.AMBIGUOUS.value),
    ).fetchall():
        chunk_id, items, first_source, last_source, first_row, last_row = row[:6]
        attempts, http_status, error = row[6:]
        out.append(
            {
                "chunk_id": chunk_id,
                "items": items,
                "first": {"source": names.get(first_source), "row": first_row},
                "last": {"source": names.get(last_source), "row": last_row},
                "attempts": attempts,
                "cause": cause(http_status, error),
            }
        )
    return out
