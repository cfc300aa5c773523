"""Tests of what the ledger remembers after a run ends: its retries (schema 3), the history of
runs and retries, failures grouped by cause, and the run's stored summary kept in step."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ledger import ACCEPTED, FAILED, make_chunk, new_run, raw, sent

from importer.errors import LedgerError
from importer.ledger import SCHEMA_VERSION, Ledger
from importer.ledger.schema import _MIGRATIONS, APPLICATION_ID
from importer.model import ChunkOutcome, ChunkStatus, ItemError, RunStatus

REFUSED = ChunkOutcome(
    status=ChunkStatus.REFUSED, attempts=1, http_status=400, error="distinct_id is required"
)
DROPPED = ChunkOutcome(
    status=ChunkStatus.AMBIGUOUS,
    attempts=1,
    error="connection dropped without an answer: may have been applied; $add is not resent",
)


def failed_after(tries: int) -> ChunkOutcome:
    """A chunk that met 503s until its tries ran out, worded as the sender words it."""
    return ChunkOutcome(
        status=ChunkStatus.FAILED,
        attempts=tries,
        http_status=503,
        error=f"gave up after {tries} tries: HTTP 503: Service unavailable",
    )


def summary_of(run_id: str, **counts: Any) -> dict[str, Any]:
    """A run's JSON summary as `run` stores it, with these counts."""
    base = {
        "run_id": run_id,
        "exit_code": 1,
        "error": None,
        "rows_read": 6,
        "rows_valid": 6,
        "rows_rejected": 0,
        "items_sent": 3,
        "bytes_sent": 100,
        "chunks_total": 2,
        "chunks_accepted": 1,
        "chunks_failed": 1,
        "chunks_refused": 0,
        "chunks_ambiguous": 0,
        "chunks_skipped": 0,
        "item_errors": 0,
        "retries": 0,
        "sources_skipped": 0,
        "elapsed_s": 1.0,
        "ledger": "l.db",
        "rejects": "r.csv",
        "sources": [{"source": "s0.csv", "rows_read": 6, "rows_rejected": 0, "skipped": False}],
    }
    return base | counts


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger, closed after the test."""
    with Ledger.open(tmp_path / "fyno-import.ledger.db") as led:
        yield led


def finished_run_with_a_failure(ledger: Ledger) -> tuple[str, Any, Any]:
    """A finished run of two chunks: one accepted, one failed (so exit 1); its id and chunks."""
    run = new_run(ledger)
    good, bad = make_chunk(seq=0), make_chunk(distinct_ids=["x", "y", "z"], seq=1)
    sent(ledger, run, good, ACCEPTED)
    sent(ledger, run, bad, failed_after(1))
    ledger.set_source_counts(run, 0, rows_read=6, rows_rejected=0, first_chunk=0, last_chunk=1)
    ledger.mark_run(run, RunStatus.FINISHED, summary_of(run))
    return run, good, bad


# -- schema 3 ------------------------------------------------------------------------------------


def test_a_schema_2_ledger_gains_the_retries_table_and_keeps_its_runs(tmp_path: Path) -> None:
    """Opening a ledger of schema 2 migrates it to 3: its runs stay, retries can be recorded."""
    path = tmp_path / "old.ledger.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for migrate in _MIGRATIONS[:2]:
            migrate(conn)
        conn.execute("PRAGMA user_version = 2")
    with Ledger.open(path) as old:
        run = new_run(old)
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
    with Ledger.open(path, create=False) as led:
        started = led.start_retry(run, chunks=0, include_ambiguous=False)
        led.finish_retry(started, RunStatus.FINISHED, {"items_sent": 0})
        assert [r.run_id for r in led.list_runs()] == [run]
        assert [(r.run_id, r.status) for r in led.list_retries()] == [(run, RunStatus.FINISHED)]


# -- retries -------------------------------------------------------------------------------------


def test_a_retry_records_what_its_chunks_became_and_brings_the_run_summary_up_to_date(
    ledger: Ledger,
) -> None:
    """After a retry that lands the failed chunk, the run's stored summary counts it accepted,
    adds the retry's items and requests, and exits 0; the retry's row says what it did."""
    run, _, bad = finished_run_with_a_failure(ledger)
    started = ledger.start_retry(run, chunks=1, include_ambiguous=False)
    sent(ledger, run, bad, ACCEPTED)
    ledger.finish_retry(started, RunStatus.FINISHED, {"items_sent": 3, "bytes_sent": 50})

    (retry,) = ledger.list_retries([run])
    assert (retry.chunks, retry.accepted, retry.failed, retry.ambiguous) == (1, 1, 0, 0)
    assert retry.requests == 1 and retry.ended_at is not None
    assert retry.effective_status is RunStatus.FINISHED
    summary = ledger.get_run(run).summary
    assert summary is not None
    assert (summary["chunks_accepted"], summary["chunks_failed"], summary["exit_code"]) == (2, 0, 0)
    assert (summary["items_sent"], summary["bytes_sent"], summary["retries"]) == (6, 150, 1)
    assert summary["rows_read"] == 6 and summary["error"] is None


def test_a_retry_that_fails_again_keeps_the_run_at_exit_1(ledger: Ledger) -> None:
    """A retry whose chunk fails again: the summary still counts one failed chunk, exit 1, and
    its requests are added to the run's retries."""
    run, _, bad = finished_run_with_a_failure(ledger)
    started = ledger.start_retry(run, chunks=1, include_ambiguous=True)
    sent(ledger, run, bad, failed_after(3))
    ledger.finish_retry(started, RunStatus.FINISHED, {"items_sent": 0})
    summary = ledger.get_run(run).summary
    assert summary is not None
    assert (summary["chunks_failed"], summary["exit_code"], summary["retries"]) == (1, 1, 3)
    (retry,) = ledger.list_retries()
    assert (retry.failed, retry.requests, retry.include_ambiguous) == (1, 3, True)


def test_a_run_that_ended_on_an_error_keeps_it_after_a_retry(ledger: Ledger) -> None:
    """An interrupted run's summary keeps its error and exit 3; only its counts move."""
    run, _, bad = finished_run_with_a_failure(ledger)
    ledger.mark_run(run, RunStatus.INTERRUPTED, summary_of(run, exit_code=3, error="interrupted"))
    started = ledger.start_retry(run, chunks=1, include_ambiguous=False)
    sent(ledger, run, bad, ACCEPTED)
    ledger.finish_retry(started, RunStatus.FINISHED, {"items_sent": 3})
    summary = ledger.get_run(run).summary
    assert summary is not None
    assert (summary["exit_code"], summary["error"]) == (3, "interrupted")
    assert summary["chunks_failed"] == 0


def test_a_retry_left_running_reads_as_interrupted_once_the_lock_is_free(tmp_path: Path) -> None:
    """A retry whose process died stays running in its row, and reads as interrupted; while a
    later run holds the lock the stale retry still reads as interrupted."""
    path = tmp_path / "fyno-import.ledger.db"
    with Ledger.open(path) as killed:
        run = new_run(killed)
        killed.start_retry(run, chunks=2, include_ambiguous=False)  # never finished
    with Ledger.open(path, create=False) as reader:
        (retry,) = reader.list_retries()
        assert (retry.status, retry.effective_status) == (RunStatus.RUNNING, RunStatus.INTERRUPTED)
        assert retry.ended_at is None
    with Ledger.open(path) as live, Ledger.open(path, create=False) as reader:
        live.lock_for_run()
        current = new_run(live)
        (retry,) = reader.list_retries()
        assert retry.effective_status is RunStatus.INTERRUPTED
        assert reader.get_run(current).effective_status is RunStatus.RUNNING
        live.start_retry(current, chunks=1, include_ambiguous=False)
        statuses = [r.effective_status for r in reader.list_retries()]
        assert statuses == [RunStatus.RUNNING, RunStatus.INTERRUPTED]  # newest first


def test_resolve_brings_the_run_summary_up_to_date(ledger: Ledger) -> None:
    """Closing the failed chunk as abandoned takes it out of the summary's failures: exit 0."""
    run, _, bad = finished_run_with_a_failure(ledger)
    ledger.resolve(run, bad.chunk_id, ChunkStatus.ABANDONED)
    summary = ledger.get_run(run).summary
    assert summary is not None
    assert (summary["chunks_failed"], summary["exit_code"]) == (0, 0)


def test_resolve_takes_the_start_of_a_chunk_id_when_it_names_one_chunk(ledger: Ledger) -> None:
    """A unique prefix of 8 or more characters names the chunk; a shared one, or a shorter one,
    is refused, naming what to do."""
    run = new_run(ledger)
    for index, chunk_id in enumerate(("1b13eb88b64f0001", "1b13eb88b64f0002", "d0d2629cae9d0003")):
        chunk = make_chunk(chunk_id=chunk_id, seq=index, has_add=True)
        sent(ledger, run, chunk, DROPPED)
    assert ledger.resolve(run, "d0d2629cae9d", ChunkStatus.ACCEPTED) == "d0d2629cae9d0003"
    assert ledger.chunk_statuses(run)["d0d2629cae9d0003"] is ChunkStatus.ACCEPTED
    with pytest.raises(LedgerError, match="start of several chunk ids") as info:
        ledger.resolve(run, "1b13eb88b64f", ChunkStatus.ACCEPTED)
    assert "give more of the id" in str(info.value)
    with pytest.raises(LedgerError, match="has no chunk 1b13eb8 "):
        ledger.resolve(run, "1b13eb8", ChunkStatus.ACCEPTED)
    assert ledger.resolve(run, "1b13eb88b64f0002", ChunkStatus.ABANDONED) == "1b13eb88b64f0002"


# -- the history ---------------------------------------------------------------------------------


def test_the_history_lists_runs_and_retries_newest_first(ledger: Ledger) -> None:
    """Runs and retries in one list, newest first; a run's line counts its chunks as they are
    now (after its retry), a retry's line what it sent; --all-less history is cut at the limit."""
    first, _, bad = finished_run_with_a_failure(ledger)
    started = ledger.start_retry(first, chunks=1, include_ambiguous=False)
    sent(ledger, first, bad, ACCEPTED)
    ledger.finish_retry(started, RunStatus.FINISHED, {"items_sent": 3})
    second = ledger.create_run(
        source_key="other",
        mapping_hash="mh",
        chunk_key="ck",
        shard=None,
        settings={"changed_only": True},
        base_url="https://api.fyno.io",
        workspace="WS1",
        api_version="live",
        sources=[("a.csv", "fa"), ("b.csv", "fb")],
    )
    lines = ledger.history()
    assert [(line["kind"], line["run_id"]) for line in lines] == [
        ("changed-only", second),
        ("retry", first),
        ("run", first),
    ]
    changed, retry, run = lines
    # this ledger object holds the run lock (the retry took it) and started the run last
    assert changed["sources"] == 2 and changed["status"] == "running"
    assert changed["ended_at"] is None and changed["duration_s"] is None
    assert (retry["chunks_total"], retry["chunks_accepted"], retry["items_sent"]) == (1, 1, 3)
    assert retry["rows_read"] is None and retry["requests"] == 1
    assert (run["chunks_accepted"], run["chunks_failed"], run["items_sent"]) == (2, 0, 6)
    assert run["rows_read"] == 6 and run["duration_s"] is not None
    assert ledger.history(2) == lines[:2] and ledger.history_size() == 3


def test_an_empty_ledger_has_an_empty_history(ledger: Ledger) -> None:
    """No runs: no lines, size 0."""
    assert ledger.history() == [] and ledger.history_size() == 0


# -- the report's failures -----------------------------------------------------------------------


def test_failures_are_grouped_by_cause_whatever_the_number_of_tries(ledger: Ledger) -> None:
    """Two chunks that met the same 503 after different numbers of tries are one cause; a 400
    and the item errors are causes of their own, each with its first rows."""
    run = new_run(ledger, sources=2)
    sent(ledger, run, make_chunk(distinct_ids=["a", "b"], rows=[1, 2], seq=0), failed_after(1))
    sent(ledger, run, make_chunk(distinct_ids=["c"], rows=[3], seq=1), failed_after(7))
    refused = make_chunk(distinct_ids=["d"], rows=[9], seq=2, source_index=1, source="s1.csv")
    sent(ledger, run, refused, REFUSED)
    partly = ChunkOutcome(
        status=ChunkStatus.ACCEPTED,
        attempts=1,
        http_status=202,
        item_errors=(ItemError(index=1, operator="$add", status="not a number"),),
    )
    sent(ledger, run, make_chunk(distinct_ids=["e", "f"], rows=[4, 5], seq=3), partly)

    failures = ledger.run_report(run)["failures"]
    assert [(g["kind"], g["cause"], g["chunks"], g["items"]) for g in failures] == [
        ("failed", "HTTP 503: Service unavailable", 2, 3),
        ("refused", "HTTP 400: distinct_id is required", 1, 1),
        ("item_error", "$add: not a number", 1, 1),
    ]
    assert failures[0]["resendable"] and not failures[1]["resendable"]
    assert failures[0]["examples"] == [
        {"source": "s0.csv", "row": 1, "distinct_id": "a"},
        {"source": "s0.csv", "row": 2, "distinct_id": "b"},
    ]
    assert failures[1]["examples"] == [{"source": "s1.csv", "row": 9, "distinct_id": "d"}]
    assert failures[2]["examples"] == [{"source": "s0.csv", "row": 5, "distinct_id": "f"}]


def test_the_report_lists_each_ambiguous_chunk_with_the_rows_it_carries(ledger: Ledger) -> None:
    """An ambiguous chunk spanning two sources names its first and last row in each."""
    run = new_run(ledger, sources=2)
    chunk = make_chunk(
        distinct_ids=["p", "q", "r"], rows=[7, 8, 1], sources=((0, 2), (1, 1)), has_add=True
    )
    sent(ledger, run, chunk, DROPPED)
    (ambiguous,) = ledger.run_report(run)["ambiguous"]
    assert ambiguous["chunk_id"] == chunk.chunk_id and ambiguous["items"] == 3
    assert ambiguous["first"] == {"source": "s0.csv", "row": 7}
    assert ambiguous["last"] == {"source": "s1.csv", "row": 1}
    assert ambiguous["cause"].startswith("connection dropped without an answer")


def test_the_report_says_which_run_imported_each_source(ledger: Ledger) -> None:
    """A source whose chunks were all accepted is imported by this run; a later run of the same
    content that failed is not, and names the run that did."""
    done = new_run(ledger)
    sent(ledger, done, make_chunk(seq=0), ACCEPTED)
    ledger.set_source_counts(done, 0, rows_read=3, rows_rejected=0, first_chunk=0, last_chunk=0)
    again = new_run(ledger, source_key="sk2")
    sent(ledger, again, make_chunk(seq=0), FAILED)
    ledger.set_source_counts(again, 0, rows_read=3, rows_rejected=0, first_chunk=0, last_chunk=0)
    (source,) = ledger.run_report(done)["sources"]
    assert (source["imported"], source["imported_by"]) == (True, done)
    (source,) = ledger.run_report(again)["sources"]
    assert (source["imported"], source["imported_by"]) == (False, done)
