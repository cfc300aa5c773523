"""Tests of the SQLite results ledger (the importer/ledger/ package)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import itertools
import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from importer.errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerLockedError,
    LedgerSchemaError,
    LedgerWriteError,
)
from importer.ledger import SCHEMA_VERSION, Ledger
from importer.ledger.lock import acquire
from importer.ledger.schema import probe_btrees
from importer.model import Chunk, ChunkOutcome, ChunkStatus, ItemError, RunStatus

ACCEPTED = ChunkOutcome(status=ChunkStatus.ACCEPTED, attempts=1, http_status=202, request_id="r1")
FAILED = ChunkOutcome(
    status=ChunkStatus.FAILED, attempts=7, http_status=503, error="503 Service Unavailable"
)
_ids = itertools.count()


def make_chunk(
    *,
    distinct_ids: list[str] | None = None,
    rows: list[int] | None = None,
    source_index: int = 0,
    source: str = "s0.csv",
    seq: int = 0,
    has_add: bool = False,
    chunk_id: str | None = None,
    sources: tuple[tuple[int, int], ...] | None = None,
) -> Chunk:
    """A chunk whose body is the JSON batch of its distinct_ids (all of ``source_index`` unless
    ``sources`` gives its runs of (source, items))."""
    ids = distinct_ids if distinct_ids is not None else ["u1", "u2", "u3"]
    rows = rows if rows is not None else list(range(1, len(ids) + 1))
    op = "$add" if has_add else "$set"
    body = orjson.dumps({"batch": [{"distinct_id": d, "action": {op: {"n": 1}}} for d in ids]})
    return Chunk.of(
        chunk_id=chunk_id or f"chunk-{next(_ids):04d}",
        seq=seq,
        body=body,
        rows=rows,
        distinct_ids=ids,
        sources=sources or ((source_index, len(ids)),),
        source=source,
        has_add=has_add,
    )


def new_run(ledger: Ledger, *, source_key: str = "sk", sources: int = 1) -> str:
    """A run with `sources` sources named s0.csv, s1.csv, … (fingerprints fp0, fp1, …)."""
    return ledger.create_run(
        source_key=source_key,
        mapping_hash="mh",
        chunk_key="ck",
        shard=None,
        settings={"batch_size": 500, "concurrency": 8},
        base_url="https://api.fyno.io",
        workspace="WS1",
        api_version="live",
        sources=[(f"s{i}.csv", f"fp{i}") for i in range(sources)],
    )


def sent(ledger: Ledger, run_id: str, chunk: Chunk, outcome: ChunkOutcome) -> None:
    """Record a chunk as in flight, then its outcome, as the sender does."""
    ledger.record_in_flight(run_id, chunk)
    ledger.record_outcome(run_id, chunk, outcome)


def raw(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Query the ledger file the way a user with the sqlite3 shell would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Where the test's ledger lives."""
    return tmp_path / "fyno-import.ledger.db"


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[Ledger]:
    """A fresh ledger, closed after the test."""
    with Ledger.open(ledger_path) as led:
        yield led


# -- chunks ------------------------------------------------------------------------------------


def test_in_flight_chunk_round_trips_from_the_ledger_alone(ledger: Ledger) -> None:
    """A chunk recorded in flight is rebuilt byte for byte, with its rows, ids, sources and $add."""
    run = new_run(ledger, sources=2)
    chunk = make_chunk(
        distinct_ids=["a", "b", "a"],
        rows=[7, 1, 2],
        source_index=0,
        source="s0.csv",
        seq=5,
        has_add=True,
        sources=((0, 1), (1, 2)),  # it spans both sources
    )
    ledger.record_in_flight(run, chunk)

    (loaded,) = ledger.load_chunks(run, {ChunkStatus.IN_FLIGHT})
    assert loaded == chunk
    assert loaded.body == chunk.body and loaded.source == "s0.csv" and loaded.has_add
    assert loaded.item_sources() == [0, 1, 1] and loaded.rows() == [7, 1, 2]
    assert ledger.chunk_statuses(run) == {chunk.chunk_id: ChunkStatus.IN_FLIGHT}


def test_load_chunks_keeps_sending_order_and_filters_by_status(ledger: Ledger) -> None:
    """Chunks come back in sending order (their position), only those in the asked states."""
    run = new_run(ledger, sources=2)
    order = [(1, 4), (0, 1), (0, 3), (0, 0), (1, 5)]
    chunks = [make_chunk(source_index=s, seq=q) for s, q in order]
    for c in chunks:
        sent(ledger, run, c, FAILED)
    done = make_chunk(source_index=0, seq=2)
    sent(ledger, run, done, ACCEPTED)

    loaded = list(ledger.load_chunks(run, {ChunkStatus.FAILED, ChunkStatus.AMBIGUOUS}))
    assert [c.seq for c in loaded] == [0, 1, 3, 4, 5]
    assert list(ledger.load_chunks(run, set())) == []


def test_accepted_chunk_drops_body_and_rows_but_keeps_ids(ledger: Ledger) -> None:
    """Once accepted, the body and row map are gone from the file; ids and counts stay."""
    run = new_run(ledger)
    chunk = make_chunk()
    ledger.record_in_flight(run, chunk)
    ledger.record_outcome(run, chunk, FAILED)
    ledger.record_in_flight(run, chunk)
    ledger.record_outcome(run, chunk, ACCEPTED)
    ledger.flush()  # an outcome is committed with the next write; another reader waits for it

    ((body, rows_z, ids_z, status, attempts, items, size),) = raw(
        ledger.path,
        "SELECT body, rows_z, ids_z, status, attempts, items, bytes FROM chunks WHERE chunk_id=?",
        chunk.chunk_id,
    )
    assert body is None and rows_z is None
    assert ids_z is not None and status == "accepted"
    assert attempts == FAILED.attempts + ACCEPTED.attempts  # cumulative over both tries
    assert (items, size) == (3, len(chunk.body))
    with pytest.raises(LedgerError, match="body was dropped"):
        list(ledger.load_chunks(run, {ChunkStatus.ACCEPTED}))


def test_an_outcome_is_committed_with_the_next_write(ledger: Ledger) -> None:
    """An outcome needs no commit of its own: this process reads it at once, the file holds it
    once the next chunk is recorded in flight (one commit per chunk on the sending path)."""
    run = new_run(ledger)
    first, second = make_chunk(), make_chunk()
    sent(ledger, run, first, ACCEPTED)
    assert ledger.chunk_statuses(run)[first.chunk_id] is ChunkStatus.ACCEPTED
    third = make_chunk()
    sent(ledger, run, third, FAILED)
    assert raw(ledger.path, "SELECT status FROM chunks WHERE chunk_id=?", third.chunk_id) == [
        ("in_flight",)
    ]  # a reader elsewhere sees the chunk as it was before its answer
    ledger.record_in_flight(run, second)
    assert raw(ledger.path, "SELECT status FROM chunks WHERE chunk_id=?", third.chunk_id) == [
        ("failed",)
    ]


def test_failed_chunk_keeps_its_body_and_last_answer(ledger: Ledger) -> None:
    """A failed chunk keeps its body for retry, with the last HTTP status and error text."""
    run = new_run(ledger)
    chunk = make_chunk()
    sent(ledger, run, chunk, FAILED)
    ledger.flush()

    ((http_status, error, attempts),) = raw(
        ledger.path,
        "SELECT http_status, error, attempts FROM chunks WHERE chunk_id=?",
        chunk.chunk_id,
    )
    assert (http_status, error, attempts) == (503, "503 Service Unavailable", 7)
    (loaded,) = ledger.load_chunks(run, {ChunkStatus.FAILED})
    assert loaded.body == chunk.body


def test_outcome_without_in_flight_record_is_not_lost(ledger: Ledger) -> None:
    """An outcome for a chunk never recorded in flight is still stored, with its body."""
    run = new_run(ledger)
    chunk = make_chunk()
    ledger.record_outcome(run, chunk, FAILED)
    assert ledger.chunk_statuses(run) == {chunk.chunk_id: ChunkStatus.FAILED}
    assert next(ledger.load_chunks(run, {ChunkStatus.FAILED})) == chunk


def test_a_chunk_waiting_for_its_retry_is_pending_with_its_body(ledger: Ledger) -> None:
    """A $add chunk surely not applied and waiting to retry is pending: resendable after a crash."""
    run = new_run(ledger)
    chunk = make_chunk(has_add=True)
    ledger.record_in_flight(run, chunk)
    ledger.mark_waiting(run, chunk.chunk_id, "HTTP 503: retrying")
    assert ledger.chunk_statuses(run)[chunk.chunk_id] is ChunkStatus.PENDING
    assert next(ledger.load_chunks(run, {ChunkStatus.PENDING})) == chunk
    ledger.record_in_flight(run, chunk)  # the retry
    assert ledger.chunk_statuses(run)[chunk.chunk_id] is ChunkStatus.IN_FLIGHT


def test_mark_ambiguous_closes_only_in_flight_chunks(ledger: Ledger) -> None:
    """After a crash an in-flight $add chunk becomes ambiguous; an accepted one cannot."""
    run = new_run(ledger)
    maybe = make_chunk(has_add=True)
    done = make_chunk(has_add=True)
    ledger.record_in_flight(run, maybe)
    sent(ledger, run, done, ACCEPTED)

    ledger.mark_ambiguous(run, maybe.chunk_id, "in flight when the previous run stopped")
    assert ledger.chunk_statuses(run)[maybe.chunk_id] is ChunkStatus.AMBIGUOUS
    assert next(ledger.load_chunks(run, {ChunkStatus.AMBIGUOUS})) == maybe
    with pytest.raises(LedgerError, match="is accepted, not in flight"):
        ledger.mark_ambiguous(run, done.chunk_id, "x")


def test_settle_stranded_makes_every_in_flight_add_chunk_of_the_run_ambiguous(
    ledger: Ledger,
) -> None:
    """After a kill, the run's in-flight $add chunks become ambiguous (one attempt, the reason
    as error, body kept); idempotent, settled and other runs' chunks are left as they are."""
    run, other = new_run(ledger), new_run(ledger)
    stranded = [make_chunk(has_add=True), make_chunk(has_add=True)]
    idempotent, theirs = make_chunk(), make_chunk(has_add=True)
    for chunk in (*stranded, idempotent):
        ledger.record_in_flight(run, chunk)
    ledger.record_in_flight(other, theirs)
    settled = {s: leave_chunk(ledger, run, s).chunk_id for s in ChunkStatus if s.is_settled}

    reason = "was in flight when an earlier try stopped"
    assert ledger.settle_stranded(run, reason) == 2

    assert ledger.chunk_statuses(run) == {
        **{c.chunk_id: ChunkStatus.AMBIGUOUS for c in stranded},
        idempotent.chunk_id: ChunkStatus.IN_FLIGHT,
        **{chunk_id: status for status, chunk_id in settled.items()},
    }
    marks = ",".join("?" * len(stranded))
    assert raw(
        ledger.path,
        f"SELECT attempts, error FROM chunks WHERE chunk_id IN ({marks})",
        *(c.chunk_id for c in stranded),
    ) == [(1, reason)] * len(stranded)
    ambiguous = {c.chunk_id: c for c in ledger.load_chunks(run, {ChunkStatus.AMBIGUOUS})}
    assert all(ambiguous[c.chunk_id] == c for c in stranded)  # bodies kept, for a person
    assert ledger.chunk_statuses(other) == {theirs.chunk_id: ChunkStatus.IN_FLIGHT}
    assert ledger.settle_stranded(run, reason) == 0  # nothing left to settle
    with pytest.raises(LedgerError, match="no run run-nope"):
        ledger.settle_stranded("run-nope", reason)


def test_settle_stranded_waits_for_no_live_run(ledger_path: Path) -> None:
    """While another run holds the lock, its in-flight chunks are its own: not settled."""
    with Ledger.open(ledger_path) as live, Ledger.open(ledger_path) as other:
        live.lock_for_run()
        run = new_run(live)
        live.record_in_flight(run, make_chunk(has_add=True))
        with pytest.raises(LedgerLockedError, match="in use by another run"):
            other.settle_stranded(run, "x")
        assert set(other.chunk_statuses(run).values()) == {ChunkStatus.IN_FLIGHT}


# -- runs and sources --------------------------------------------------------------------------


def test_run_is_found_for_resume_by_source_key_until_all_accepted(ledger: Ledger) -> None:
    """An interrupted run is resumed by its source key; a finished, all-accepted one is not."""
    run = new_run(ledger, source_key="key-A")
    chunk = make_chunk()
    ledger.record_in_flight(run, chunk)
    ledger.mark_run(run, "interrupted")

    found = ledger.find_resumable_run("key-A")
    assert found is not None and found.run_id == run and found.status == "interrupted"
    assert found.settings == {"batch_size": 500, "concurrency": 8}
    assert [s.source for s in found.sources] == ["s0.csv"]
    assert ledger.find_resumable_run("key-B") is None

    ledger.record_outcome(run, chunk, FAILED)
    ledger.mark_run(run, "finished", {"chunks_failed": 1})
    assert ledger.find_resumable_run("key-A") is not None  # finished, but a chunk failed

    sent(ledger, run, chunk, ACCEPTED)
    ledger.mark_run(run, "finished", {"chunks_failed": 0})
    assert ledger.find_resumable_run("key-A") is None
    info = ledger.get_run(run)
    assert info.finished_at is not None and info.summary == {"chunks_failed": 0}


def test_only_the_latest_run_of_a_source_key_is_resumed(ledger: Ledger) -> None:
    """An old unfinished run is not resumed once a newer run of the same sources finished."""
    old = new_run(ledger, source_key="k")
    ledger.mark_run(old, "interrupted")
    newer = new_run(ledger, source_key="k")
    ledger.mark_run(newer, "finished")
    assert ledger.find_resumable_run("k") is None
    assert [r.run_id for r in ledger.list_runs()] == [old, newer]


def test_get_and_mark_unknown_run_name_it(ledger: Ledger) -> None:
    """An unknown run id is an error that names it."""
    with pytest.raises(LedgerError, match="no run 2020-nope"):
        ledger.get_run("2020-nope")
    with pytest.raises(LedgerError, match="no run 2020-nope"):
        ledger.mark_run("2020-nope", "finished")


def test_mark_run_takes_the_enum_or_its_text(ledger: Ledger) -> None:
    """The old callers' plain strings still work; an unknown status is refused."""
    run = new_run(ledger)
    ledger.mark_run(run, "interrupted")
    assert ledger.get_run(run).status is RunStatus.INTERRUPTED
    ledger.mark_run(run, RunStatus.FINISHED)
    assert ledger.get_run(run).status is RunStatus.FINISHED
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        ledger.mark_run(run, "done")


def test_run_ids_are_time_stamped_unique_and_listed_in_creation_order(ledger: Ledger) -> None:
    """Run ids look like 20261129T234500Z-1a2b3c; list_runs gives them oldest first."""
    ids = [new_run(ledger) for _ in range(5)]
    assert len(set(ids)) == 5
    assert all(len(i) == 23 and i[8] == "T" and i[15:17] == "Z-" for i in ids)
    assert [r.run_id for r in ledger.list_runs()] == ids
    created = [r.created_at for r in ledger.list_runs()]
    assert created == sorted(created)
    compact = [f"{c[:4]}{c[5:7]}{c[8:10]}T{c[11:13]}{c[14:16]}{c[17:19]}Z" for c in created]
    assert [i[:16] for i in ids] == compact


def test_source_is_imported_only_when_complete_and_all_accepted(ledger: Ledger) -> None:
    """imported_sources names a source only once fully chunked with every chunk carrying its
    rows accepted, including a chunk it shares with the next source."""
    run = new_run(ledger, sources=3)
    sent(ledger, run, make_chunk(source_index=0, seq=0), ACCEPTED)
    shared = make_chunk(source_index=0, seq=1, distinct_ids=["a", "b"], sources=((0, 1), (1, 1)))
    sent(ledger, run, shared, ACCEPTED)
    sent(ledger, run, make_chunk(source_index=1, seq=2), ACCEPTED)
    sent(ledger, run, make_chunk(source_index=2, seq=3), FAILED)
    fps = ["fp0", "fp1", "fp2", "fp-unknown"]

    assert ledger.imported_sources(fps) == {}  # nothing completely chunked yet
    ledger.set_source_counts(run, 0, rows_read=10, rows_rejected=1, first_chunk=0, last_chunk=1)
    ledger.set_source_counts(run, 1, rows_read=10, rows_rejected=0, chunked=False)
    ledger.set_source_counts(run, 2, rows_read=10, rows_rejected=0, first_chunk=3, last_chunk=3)
    assert ledger.imported_sources(fps) == {"fp0": run}
    assert ledger.imported_sources(fps, exclude_run=run) == {}
    ledger.set_source_counts(run, 1, rows_read=10, rows_rejected=0, first_chunk=1, last_chunk=2)
    assert ledger.imported_sources(fps) == {"fp0": run, "fp1": run}
    ledger.set_source_counts(run, 0, rows_read=10, rows_rejected=1, first_chunk=0, last_chunk=4)
    assert ledger.imported_sources(fps) == {"fp1": run}  # a chunk of it never got recorded


def test_a_source_sharing_a_failed_chunk_is_not_imported(ledger: Ledger) -> None:
    """Two sources sharing one chunk: when it fails, neither is imported."""
    run = new_run(ledger, sources=2)
    shared = make_chunk(source_index=0, seq=0, distinct_ids=["a", "b"], sources=((0, 1), (1, 1)))
    sent(ledger, run, shared, FAILED)
    ledger.set_source_counts(run, 0, rows_read=1, rows_rejected=0, first_chunk=0, last_chunk=0)
    ledger.set_source_counts(run, 1, rows_read=1, rows_rejected=0, first_chunk=0, last_chunk=0)
    assert ledger.imported_sources(["fp0", "fp1"]) == {}


def test_source_with_no_chunks_counts_as_imported(ledger: Ledger) -> None:
    """A completely read source that yielded no chunk (all rows rejected) is imported."""
    run = new_run(ledger)
    ledger.set_source_counts(run, 0, rows_read=4, rows_rejected=4)
    assert ledger.imported_sources(["fp0"]) == {"fp0": run}


def leave_chunk(ledger: Ledger, run_id: str, status: ChunkStatus) -> Chunk:
    """A chunk of the run left in ``status`` the way the sender (or a crash, or a person) does."""
    chunk = make_chunk(has_add=status is ChunkStatus.AMBIGUOUS)
    ledger.record_in_flight(run_id, chunk)
    if status is ChunkStatus.PENDING:
        ledger.mark_waiting(run_id, chunk.chunk_id, "HTTP 503: retrying")
    elif status is ChunkStatus.AMBIGUOUS:
        ledger.mark_ambiguous(run_id, chunk.chunk_id, "HTTP 504")
    elif status is ChunkStatus.ABANDONED:
        ledger.record_outcome(run_id, chunk, FAILED)
        ledger.resolve(run_id, chunk.chunk_id, ChunkStatus.ABANDONED)
    elif status is not ChunkStatus.IN_FLIGHT:
        ledger.record_outcome(run_id, chunk, ChunkOutcome(status=status, attempts=1))
    assert ledger.chunk_statuses(run_id)[chunk.chunk_id] is status
    return chunk


@pytest.mark.parametrize("status", list(ChunkStatus), ids=str)
def test_latest_run_to_retry_is_the_latest_with_an_open_chunk(
    ledger: Ledger, status: ChunkStatus
) -> None:
    """Without --run, retry takes the latest run with an open chunk: failed, refused, ambiguous,
    or left in flight or pending (as a retry killed with -9 leaves them); a run whose chunks
    are all accepted or abandoned is passed over."""
    assert ledger.latest_run_to_retry() is None
    older = new_run(ledger)
    sent(ledger, older, make_chunk(), FAILED)
    newer = new_run(ledger)
    sent(ledger, newer, make_chunk(), ACCEPTED)
    leave_chunk(ledger, newer, status)

    found = ledger.latest_run_to_retry()
    assert found is not None
    assert found.run_id == (newer if status.is_open else older)
    assert not hasattr(ledger, "latest_run_with_failures")  # one rule, not two


def test_settings_never_store_a_key(ledger_path: Path) -> None:
    """A settings entry named like a secret never reaches the ledger file."""
    with Ledger.open(ledger_path) as led:
        led.create_run(
            source_key="k",
            mapping_hash="m",
            chunk_key="c",
            shard="1/2",
            settings={"api_key": "sk-SECRET-123", "timeout": 30},
            base_url="http://127.0.0.1:1",
            workspace="W",
            api_version="test",
            sources=[],
        )
    assert b"sk-SECRET-123" not in ledger_path.read_bytes()
    assert raw(ledger_path, "SELECT settings, shard FROM runs") == [('{"timeout":30}', "1/2")]


def test_run_report_counts_chunks_items_and_errors(ledger: Ledger) -> None:
    """ledger show's report has per-status chunk counts, totals and is JSON-serialisable."""
    run = new_run(ledger)
    a, b = make_chunk(seq=0), make_chunk(distinct_ids=["x", "y"], seq=1)
    with_errors = ChunkOutcome(
        status=ChunkStatus.ACCEPTED,
        attempts=1,
        http_status=202,
        item_errors=(ItemError(index=1, operator="$add", status="invalid"),),
    )
    sent(ledger, run, a, with_errors)
    sent(ledger, run, b, FAILED)
    ledger.set_source_counts(run, 0, rows_read=6, rows_rejected=1, first_chunk=0, last_chunk=1)

    report = ledger.run_report(run)
    json.dumps(report)
    assert report["chunks"]["accepted"] == 1 and report["chunks"]["failed"] == 1
    assert report["chunks"]["ambiguous"] == 0
    assert (report["items"], report["items_accepted"], report["item_errors"]) == (5, 3, 1)
    assert report["bytes"] == len(a.body) + len(b.body)
    assert report["attempts"] == 8
    assert report["sources"] == [
        {
            "idx": 0,
            "source": "s0.csv",
            "fingerprint": "fp0",
            "status": "chunked",
            "rows_read": 6,
            "rows_rejected": 1,
            "chunks_total": 2,
            "chunks_accepted": 1,
            "imported": False,
            "imported_by": None,
        }
    ]


# -- export ------------------------------------------------------------------------------------


def test_export_failures_writes_failed_items_and_item_errors(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The failures CSV has the exact columns, a line per failed item and per item error."""
    run = new_run(ledger, sources=2)
    failed = make_chunk(distinct_ids=["p1", "p2"], rows=[4, 5], source_index=1, source="s1.csv")
    sent(ledger, run, failed, FAILED)
    partly = make_chunk(distinct_ids=["q1", "q2", "q3"], rows=[1, 2, 3])
    sent(
        ledger,
        run,
        partly,
        ChunkOutcome(
            status=ChunkStatus.ACCEPTED,
            attempts=1,
            http_status=202,
            item_errors=(ItemError(index=2, operator="$add", status="not_a_number"),),
        ),
    )
    sent(ledger, run, make_chunk(), ACCEPTED)  # fully accepted: not exported

    out = tmp_path / "failures.csv"
    assert ledger.export_failures(out, run) == 3
    fid, pid = failed.chunk_id, partly.chunk_id
    assert out.read_text().splitlines() == [
        "run_id,chunk_id,source,row,distinct_id,status,http_status,error",
        f"{run},{fid},s1.csv,4,p1,failed,503,503 Service Unavailable",
        f"{run},{fid},s1.csv,5,p2,failed,503,503 Service Unavailable",
        f"{run},{pid},s0.csv,3,q3,item_error,202,$add: not_a_number",
    ]
    assert mode(out) == 0o600


def test_export_failures_quotes_awkward_ids_and_covers_all_runs(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Without a run, every run's open chunks are exported; commas and newlines survive."""
    first, second = new_run(ledger), new_run(ledger)
    sent(ledger, first, make_chunk(distinct_ids=['a,"b"\nc']), FAILED)
    maybe = make_chunk(distinct_ids=["z"], has_add=True)
    ledger.record_in_flight(second, maybe)
    ledger.mark_ambiguous(second, maybe.chunk_id, "dropped connection")
    out = tmp_path / "all.csv"
    assert ledger.export_failures(out) == 2
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run_id"], r["distinct_id"], r["status"]) for r in rows] == [
        (first, 'a,"b"\nc', "failed"),
        (second, "z", "ambiguous"),
    ]
    with pytest.raises(LedgerError, match="no run nope"):
        ledger.export_failures(out, "nope")


# -- resolve -----------------------------------------------------------------------------------


def test_resolve_closes_ambiguous_failed_and_refused_chunks(ledger: Ledger) -> None:
    """Ambiguous, failed or refused chunks resolve as accepted or abandoned, nothing else."""
    run = new_run(ledger)
    ambiguous, failed, accepted = make_chunk(has_add=True), make_chunk(), make_chunk()
    ledger.record_in_flight(run, ambiguous)
    ledger.mark_ambiguous(run, ambiguous.chunk_id, "502")
    sent(ledger, run, failed, FAILED)
    sent(ledger, run, accepted, ACCEPTED)

    ledger.resolve(run, ambiguous.chunk_id, ChunkStatus.ACCEPTED)
    ledger.resolve(run, failed.chunk_id, ChunkStatus.ABANDONED)
    statuses = ledger.chunk_statuses(run)
    assert statuses[ambiguous.chunk_id] is ChunkStatus.ACCEPTED
    assert statuses[failed.chunk_id] is ChunkStatus.ABANDONED
    assert raw(ledger.path, "SELECT body FROM chunks WHERE chunk_id=?", ambiguous.chunk_id) == [
        (None,)
    ]

    with pytest.raises(LedgerError, match=f"chunk {accepted.chunk_id} of run {run} is accepted"):
        ledger.resolve(run, accepted.chunk_id, ChunkStatus.ABANDONED)
    with pytest.raises(LedgerError, match="only as accepted or abandoned"):
        ledger.resolve(run, failed.chunk_id, ChunkStatus.FAILED)
    with pytest.raises(LedgerError, match="has no chunk nope"):
        ledger.resolve(run, "nope", ChunkStatus.ACCEPTED)
    with pytest.raises(LedgerError, match="no run run-nope"):
        ledger.resolve("run-nope", failed.chunk_id, ChunkStatus.ACCEPTED)
    assert ledger.lock_path.exists()  # resolve takes the run lock


# -- profiles_superseded -----------------------------------------------------------------------


def test_profiles_superseded_counts_later_accepted_updates_only(ledger: Ledger) -> None:
    """A failed chunk's profile updated later by an accepted chunk counts; the others don't."""
    run = new_run(ledger)
    failed = make_chunk(distinct_ids=["alice", "bob", "carol", "alice"])
    sent(ledger, run, failed, FAILED)
    earlier_run_later = new_run(ledger)
    sent(ledger, earlier_run_later, make_chunk(distinct_ids=["alice", "zed"]), ACCEPTED)
    sent(ledger, run, make_chunk(distinct_ids=["bob"]), FAILED)  # later but not accepted

    assert ledger.profiles_superseded(run, [failed.chunk_id]) == 1  # alice only

    sent(ledger, run, make_chunk(distinct_ids=["bob", "alice"]), ACCEPTED)
    assert ledger.profiles_superseded(run, [failed.chunk_id]) == 2
    assert ledger.profiles_superseded(run, []) == 0


def test_profiles_superseded_ignores_updates_sent_before_the_chunk(ledger: Ledger) -> None:
    """An accepted chunk sent before the failed chunk's last sending does not count."""
    run = new_run(ledger)
    sent(ledger, run, make_chunk(distinct_ids=["dana"]), ACCEPTED)
    failed = make_chunk(distinct_ids=["dana"])
    sent(ledger, run, failed, FAILED)
    assert ledger.profiles_superseded(run, [failed.chunk_id]) == 0
    with pytest.raises(LedgerError, match="no chunk ghost"):
        ledger.profiles_superseded(run, ["ghost"])


# -- the file ----------------------------------------------------------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Run the test under a permissive umask (022), as many shells have."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_ledger_lock_and_sidecars_are_owner_only(ledger_path: Path) -> None:
    """The ledger, its -wal/-shm sidecars and the lock file are created 0600."""
    with Ledger.open(ledger_path) as led:
        led.lock_for_run()
        sent(led, new_run(led), make_chunk(), FAILED)
        wal, shm = Path(f"{ledger_path}-wal"), Path(f"{ledger_path}-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: mode(p) for p in (ledger_path, wal, shm, led.lock_path)} == {
            p.name: 0o600 for p in (ledger_path, wal, shm, led.lock_path)
        }


def test_ledger_survives_reopen(ledger_path: Path) -> None:
    """Runs and chunks written before close are there after reopening."""
    with Ledger.open(ledger_path) as led:
        run = new_run(led)
        chunk = make_chunk()
        sent(led, run, chunk, FAILED)
    with Ledger.open(ledger_path, create=False) as led:
        assert led.chunk_statuses(run) == {chunk.chunk_id: ChunkStatus.FAILED}
    assert raw(ledger_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_missing_ledger_without_create_is_an_error(tmp_path: Path) -> None:
    """Reading commands on a missing ledger say so, and create nothing."""
    path = tmp_path / "nothing.db"
    with pytest.raises(LedgerError, match=f"no ledger at {path}"):
        Ledger.open(path, create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"SQLite format 3\x00short", b"id,email\n1,a@example.com\n"],
    ids=["random-bytes", "truncated-header", "csv"],
)
def test_non_sqlite_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    """A file that is not a SQLite database is refused with a hint, byte for byte unchanged."""
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(LedgerCorruptError, match="not a SQLite database") as info:
        Ledger.open(path)
    assert str(path) in str(info.value) and "use another --ledger path" in str(info.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_empty_file_becomes_a_ledger(tmp_path: Path) -> None:
    """A 0-byte file (such as one left by a crash while creating) is initialised."""
    path = tmp_path / "empty.db"
    path.touch()
    with Ledger.open(path) as led:
        assert led.list_runs() == []


def test_other_applications_sqlite_db_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A SQLite database of another application is refused, unchanged, no journal mode set."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER)")
    conn.execute("INSERT INTO runs VALUES (1)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(LedgerCorruptError, match="another application") as info:
        Ledger.open(path)
    assert "never overwrites" in str(info.value)
    assert digest(path) == before
    assert raw(path, "PRAGMA journal_mode") == [("delete",)]


def test_newer_schema_is_refused_and_left_alone(ledger_path: Path) -> None:
    """A ledger written by a newer fyno-import is refused with 'upgrade', unchanged."""
    with Ledger.open(ledger_path) as led:
        new_run(led)
    conn = sqlite3.connect(ledger_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = digest(ledger_path)
    with pytest.raises(LedgerSchemaError, match="newer fyno-import") as info:
        Ledger.open(ledger_path)
    assert "upgrade" in str(info.value)
    assert digest(ledger_path) == before


def rollback_journal_copy(path: Path) -> None:
    """Leave a ledger as `VACUUM INTO` or `.backup` copies are: one file, rollback journal."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")


def test_rollback_journal_ledger_is_switched_to_wal_on_open(ledger_path: Path) -> None:
    """A sound ledger copied in rollback-journal mode opens as usual and is WAL from then on."""
    with Ledger.open(ledger_path) as led:
        run = new_run(led)
        sent(led, run, make_chunk(), FAILED)
    rollback_journal_copy(ledger_path)
    assert raw(ledger_path, "PRAGMA journal_mode") == [("delete",)]
    with Ledger.open(ledger_path) as led:
        assert led.latest_run_to_retry() is not None
    assert raw(ledger_path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("tree", ["chunks", "chunks_by_status", "sqlite_autoindex_item_errors_1"])
def test_damaged_root_page_is_refused_before_the_switch_to_wal(
    ledger_path: Path, tree: str
) -> None:
    """A rollback-journal ledger whose table or index root page is damaged (page 1 whole) is
    refused as malformed and left byte for byte as it was: the switch to WAL never happens."""
    with Ledger.open(ledger_path) as led:
        run = new_run(led)
        for _ in range(3):
            sent(led, run, make_chunk(), ACCEPTED)
    rollback_journal_copy(ledger_path)
    ((root,),) = raw(ledger_path, "SELECT rootpage FROM sqlite_master WHERE name = ?", tree)
    ((page_size,),) = raw(ledger_path, "PRAGMA page_size")
    data = bytearray(ledger_path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = bytes(page_size)
    ledger_path.write_bytes(bytes(data))

    with pytest.raises(LedgerCorruptError, match="malformed") as info:
        Ledger.open(ledger_path)
    assert "never overwrites" in str(info.value)
    assert ledger_path.read_bytes() == data
    assert not Path(f"{ledger_path}-wal").exists()


def test_the_root_page_probe_reads_every_b_tree_it_can_scan() -> None:
    """Tables, plain and expression indexes are probed; a partial index is left alone, since
    INDEXED BY cannot scan it (probing it would refuse every sound ledger that had one)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (a, b)")
        conn.execute("CREATE INDEX plain ON t (a)")
        conn.execute("CREATE INDEX expression ON t (a + b)")
        conn.execute("CREATE INDEX partial ON t (a) WHERE b > 1")
        conn.execute("CREATE TABLE w (a PRIMARY KEY, b) WITHOUT ROWID")
        assert probe_btrees(conn) == 4


# -- locking -----------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from importer.ledger import Ledger
    from importer.model import Chunk
    led = Ledger.open(Path(sys.argv[1]))
    led.lock_for_run()
    run = led.create_run(source_key="k", mapping_hash="m", chunk_key="c", shard=None,
        settings={}, base_url="http://127.0.0.1:9", workspace="W", api_version="live",
        sources=[("s.csv", "fp")])
    led.record_in_flight(run, Chunk.of(chunk_id="c1", seq=0, body=b'{"batch":[]}',
        rows=[1], distinct_ids=["u"], source="s.csv", has_add=True))
    print(run, flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def python_process(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Another Python process running ``script`` (this tree importable); killed afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def holder(ledger_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Another process that holds the run lock with a chunk in flight; killed afterwards."""
    with python_process(HOLDER, str(ledger_path)) as proc:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert run_id, "the lock-holding process did not start"
        yield proc, run_id


def test_lock_held_by_another_process_then_released_by_kill_9(
    ledger_path: Path, holder: tuple[subprocess.Popen[str], str]
) -> None:
    """A second run is refused naming the holder's pid; after kill -9 it can take the lock."""
    proc, run_id = holder
    with Ledger.open(ledger_path) as led:
        with pytest.raises(LedgerLockedError, match=f"in use by another run \\(pid {proc.pid}\\)"):
            led.lock_for_run()
        # read-only commands need no lock, and see the holder's committed in-flight record
        assert led.chunk_statuses(run_id) == {"c1": ChunkStatus.IN_FLIGHT}

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        led.lock_for_run()
        led.lock_for_run()  # idempotent within the process
        (chunk,) = led.load_chunks(run_id, {ChunkStatus.IN_FLIGHT})
        assert chunk.body == b'{"batch":[]}' and chunk.has_add
    assert mode(ledger_path.with_name(ledger_path.name + ".lock")) == 0o600


def test_a_run_killed_holding_the_lock_reads_as_interrupted(
    ledger_path: Path, holder: tuple[subprocess.Popen[str], str]
) -> None:
    """While its process holds the run lock a run reads as running; once that process is
    killed with -9 it reads as interrupted, though its stored status still says running."""
    proc, run_id = holder
    with Ledger.open(ledger_path, create=False) as reader:
        assert reader.run_lock_held() is True
        assert reader.get_run(run_id).effective_status is RunStatus.RUNNING
        assert [r.effective_status for r in reader.list_runs()] == [RunStatus.RUNNING]
        assert reader.run_report(run_id)["status"] == "running"

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        assert reader.run_lock_held() is False
        run = reader.get_run(run_id)
        assert (run.status, run.effective_status) == (RunStatus.RUNNING, RunStatus.INTERRUPTED)
        assert [r.effective_status for r in reader.list_runs()] == [RunStatus.INTERRUPTED]
        assert reader.run_report(run_id)["status"] == "interrupted"
    assert raw(ledger_path, "SELECT status FROM runs") == [("running",)]  # stored: untouched


def test_readers_create_no_lock_file(ledger_path: Path) -> None:
    """A ledger never locked has no lock file; reading it leaves none, and its run is stale."""
    with Ledger.open(ledger_path) as led:
        run = new_run(led)
    with Ledger.open(ledger_path, create=False) as reader:
        assert reader.get_run(run).effective_status is RunStatus.INTERRUPTED
        assert reader.run_report(run)["status"] == "interrupted"
    assert not Path(f"{ledger_path}.lock").exists()


def test_a_lock_file_that_cannot_be_read_leaves_the_stored_status(ledger_path: Path) -> None:
    """When the probe cannot open the lock file (here a symlink loop) nothing is guessed."""
    with Ledger.open(ledger_path) as led:
        run = new_run(led)
    Path(f"{ledger_path}.lock").symlink_to(f"{ledger_path.name}.lock")
    with Ledger.open(ledger_path, create=False) as reader:
        assert reader.run_lock_held() is None
        assert reader.get_run(run).effective_status is RunStatus.RUNNING


def test_only_the_latest_running_run_is_alive_while_the_lock_is_held(ledger_path: Path) -> None:
    """A run killed earlier stays interrupted while a later run holds the lock."""
    with Ledger.open(ledger_path) as killed_earlier:
        stale = new_run(killed_earlier)  # its process "died" without marking it
    with Ledger.open(ledger_path) as live, Ledger.open(ledger_path, create=False) as reader:
        live.lock_for_run()
        current = new_run(live)
        for book in (live, reader):
            assert {r.run_id: r.effective_status for r in book.list_runs()} == {
                stale: RunStatus.INTERRUPTED,
                current: RunStatus.RUNNING,
            }
        live.mark_run(current, RunStatus.FINISHED)
        assert reader.get_run(current).effective_status is RunStatus.FINISHED


def test_a_probe_holding_the_lock_delays_a_starting_run_but_never_fails_it(
    ledger_path: Path,
) -> None:
    """A reader's probe caught holding its shared lock is waited out; a shared holder that
    stays is refused after the patience, naming the lock file."""
    lock_path = Path(f"{ledger_path}.lock")
    lock_path.touch()
    with open(lock_path) as frozen:
        fcntl.flock(frozen, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe, stopped mid-instant
        thaw = threading.Timer(0.3, fcntl.flock, (frozen, fcntl.LOCK_UN))
        thaw.start()
        try:
            started = time.monotonic()
            with Ledger.open(ledger_path) as led:
                led.lock_for_run()
                assert time.monotonic() - started >= 0.25
                assert led.run_lock_held() is True
        finally:
            thaw.cancel()
            thaw.join()
    with open(lock_path) as stays:
        fcntl.flock(stays, fcntl.LOCK_SH)
        with pytest.raises(LedgerLockedError, match=r"held shared for over 0\.2 s"):
            acquire(lock_path, ledger_path, patience_s=0.2)


PROBER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from importer.ledger.lock import probe
    lock, seen, end = Path(sys.argv[1]), set(), time.monotonic() + float(sys.argv[2])
    print("ready", flush=True)
    while time.monotonic() < end:
        seen.add(probe(lock))
    print(" ".join(sorted(map(str, seen))), flush=True)
    """
)


def test_probes_in_a_tight_loop_never_make_a_run_fail_to_lock(ledger_path: Path) -> None:
    """Another process probing without pause: a bare non-blocking flock does lose to it, but
    taking the run lock never fails, over hundreds of runs starting and ending."""
    lock_path = Path(f"{ledger_path}.lock")
    lock_path.touch()
    with python_process(PROBER, str(lock_path), "2.5") as prober:
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        collisions = 0
        with open(lock_path) as bare:  # what lock_for_run did before: one try, no second look
            deadline = time.monotonic() + 2
            while collisions == 0 and time.monotonic() < deadline:
                try:
                    fcntl.flock(bare, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(bare, fcntl.LOCK_UN)
                except BlockingIOError:
                    collisions += 1
        assert collisions, "the prober never held the lock: the test proves nothing"
        runs = 0
        while prober.poll() is None:
            os.close(acquire(lock_path, ledger_path))  # raises LedgerLockedError on a failure
            runs += 1
        seen = prober.stdout.read().split()
    assert runs >= 200
    assert seen == ["False", "True"]  # the probes saw the runs, and the gaps between them


# -- write failures ----------------------------------------------------------------------------


def test_full_database_raises_ledger_write_error_and_recovers(ledger: Ledger) -> None:
    """When SQLite reports the disk full, recording fails with LedgerWriteError, not silently."""
    run = new_run(ledger)
    ok = make_chunk()
    ledger.record_in_flight(run, ok)
    # max_page_count makes SQLite itself answer SQLITE_FULL, as on a full disk (no public knob).
    (pages,) = ledger._conn.execute("PRAGMA page_count").fetchone()
    ledger._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = make_chunk(distinct_ids=[os.urandom(40).hex() for _ in range(2000)])

    with pytest.raises(LedgerWriteError) as info:
        ledger.record_in_flight(run, big)
    message = str(info.value)
    assert str(ledger.path) in message and "full" in message
    assert big.distinct_ids()[0] not in message
    assert big.chunk_id not in ledger.chunk_statuses(run)  # nothing half-written

    ledger._conn.execute("PRAGMA max_page_count = 1073741823")
    ledger.record_in_flight(run, big)  # the ledger is usable again once there is space
    assert ledger.chunk_statuses(run)[big.chunk_id] is ChunkStatus.IN_FLIGHT


def test_file_size_limit_io_error_raises_ledger_write_error(ledger: Ledger) -> None:
    """A real write() failure (EFBIG from RLIMIT_FSIZE) surfaces as LedgerWriteError."""
    run = new_run(ledger)
    sent(ledger, run, make_chunk(), ACCEPTED)
    big = make_chunk(distinct_ids=[os.urandom(40).hex() for _ in range(3000)])
    wal = Path(f"{ledger.path}-wal")
    limit = max(ledger.path.stat().st_size, wal.stat().st_size) + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(LedgerWriteError, match="could not write chunk"):
            ledger.record_in_flight(run, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    ledger.record_in_flight(run, big)
    assert ledger.chunk_statuses(run)[big.chunk_id] is ChunkStatus.IN_FLIGHT


# -- property ----------------------------------------------------------------------------------


def test_any_body_and_ids_round_trip_exactly(ledger: Ledger) -> None:
    """Arbitrary bodies and unicode ids (newlines, NUL, astral) come back byte for byte."""
    run = new_run(ledger, sources=2)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        body=st.binary(max_size=5000),
        ids=st.lists(st.text(max_size=40), min_size=1, max_size=60),
        first_row=st.integers(min_value=1, max_value=2**53),
        seq=st.integers(min_value=0, max_value=2**40),
        has_add=st.booleans(),
        source_index=st.sampled_from([0, 1]),
    )
    @example(
        body=b"\x00\n\r\xff",
        ids=["nul\x00inside", "line\nbreak", "crlf\r\n", "😀", "", " padded "],
        first_row=1,
        seq=0,
        has_add=True,
        source_index=0,
    )
    def check(
        body: bytes, ids: list[str], first_row: int, seq: int, has_add: bool, source_index: int
    ) -> None:
        chunk = Chunk.of(
            chunk_id=f"h-{next(_ids)}",
            seq=seq,
            body=body,
            rows=[first_row + i for i in range(len(ids))],
            distinct_ids=ids,
            sources=((source_index, len(ids)),),
            source=f"s{source_index}.csv",
            has_add=has_add,
        )
        ledger.record_in_flight(run, chunk)
        ledger.record_outcome(run, chunk, FAILED)
        assert list(ledger.load_chunks(run, {ChunkStatus.FAILED})) == [chunk]
        ledger.resolve(run, chunk.chunk_id, ChunkStatus.ABANDONED)  # keep the next lookup small

    check()
