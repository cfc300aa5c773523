"""Full requests whatever the file layout, end to end against the emulator over a real socket.

Requests follow the items, not the files: one file, 100 part files or 1,000 part files of the
same rows make the same number of full requests; a profile whose rows repeat within and across
files never has two requests in flight and ends exactly as the rows say; and a many-file import
killed with -9, resumed, or retried after its directory is gone ends exact.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    cli,
    cli_env,
    count_status,
    emulator,
    emulator_profiles,
    expected_items,
    explain_state,
    ledger_chunks,
    make_rows,
    one_json,
    port_of,
    profile_diff,
    reference_profiles,
    requests_total,
    run_cli,
    start_cli,
    stop_process,
    wait_for,
    write_csv,
    write_mapping,
)


def _parts(folder: Path, rows: list[dict[str, str]], files: int) -> Path:
    """The rows written as ``files`` part files of (nearly) equal size, in name order."""
    folder.mkdir()
    size = math.ceil(len(rows) / files)
    for k in range(files):
        write_csv(folder / f"part-{k:04d}.csv", rows[k * size : (k + 1) * size])
    (folder / "_SUCCESS").write_text("")
    return folder


def _run(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(source),
        "-m",
        str(write_mapping(tmp_path / "mapping.yaml")),
        "--ledger",
        str(tmp_path / "run.ledger.db"),
        "--rejects",
        str(tmp_path / "rejects.csv"),
        "--json",
        "--no-progress",
        *extra,
    ]


def _check_profiles(server: Any, rows: list[dict[str, str]]) -> None:
    expected = reference_profiles(expected_items(rows))
    actual = emulator_profiles(server, sorted(expected))
    assert actual == expected, "\n".join(profile_diff(actual, expected))


@pytest.mark.parametrize("files", [1, 100, 1000])
def test_requests_follow_the_items_not_the_files(tmp_path: Path, files: int) -> None:
    """3,000 one-item rows make 6 full requests of 500, as one file or 100 or 1,000 part files."""
    rows = make_rows(3000, profiles=3000, seed=11, single_item=True)
    rows = [{**row, "user_id": f"u-{n}"} for n, row in enumerate(rows)]  # one row per profile
    source = _parts(tmp_path / "export", rows, files)
    with emulator() as (server, _):
        result = cli(_run(tmp_path, source), base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert summary["items_sent"] == len(rows) == 3000
        assert summary["chunks_total"] == summary["chunks_accepted"] == 6
        assert requests_total(server.stats()) == 6
        assert all(c.items == 500 for c in ledger_chunks(tmp_path / "run.ledger.db"))
        _check_profiles(server, rows)


def test_ids_repeating_within_and_across_files_keep_order_and_the_bound(tmp_path: Path) -> None:
    """Rows of 40 profiles spread over 30 files, at concurrency 8: at most ceil(I/B)*1.02+2
    requests, never two in flight for one profile, and every profile exactly as the rows say."""
    rows = make_rows(3000, profiles=40, seed=12)
    source = _parts(tmp_path / "export", rows, 30)
    items = len(expected_items(rows))
    with emulator(latency_ms=(1, 5), seed=12) as (server, _):
        result = cli(
            _run(tmp_path, source, "--batch-size", "100", "--concurrency", "8"),
            base_url=server.url,
        )
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        stats = server.stats()
        assert summary["items_sent"] == items
        assert requests_total(stats) <= math.ceil(items / 100) * 1.02 + 2
        assert stats["max_in_flight_per_distinct_id"] == 1
        _check_profiles(server, rows)


def test_a_chunk_spans_files_and_the_export_names_each_items_file(tmp_path: Path) -> None:
    """A failed chunk carrying rows of two files: `ledger export --failures` names each item's
    own file and row."""
    rows = make_rows(30, profiles=30, seed=13, single_item=True)
    source = _parts(tmp_path / "export", rows, 3)
    with emulator(fail_rate=1.0) as (server, _):
        result = cli(
            _run(tmp_path, source, "--batch-size", "25", "--max-retries", "0"), base_url=server.url
        )
        assert result.exit_code == 1, result.stderr
    failures = tmp_path / "failures.csv"
    exported = cli(
        [
            "ledger",
            "export",
            "--ledger",
            str(tmp_path / "run.ledger.db"),
            "--failures",
            str(failures),
        ]
    )
    assert exported.exit_code == 0, exported.stderr
    with failures.open(encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 30
    expected = [(str(source / f"part-{n // 10:04d}.csv"), str(n % 10 + 1)) for n in range(30)]
    assert [(line["source"], line["row"]) for line in lines] == expected
    assert [line["distinct_id"] for line in lines] == [r["user_id"] for r in rows]
    assert len({line["chunk_id"] for line in lines}) == 2  # the first chunk spans all three files


def test_sources_sharing_a_chunk_are_imported_only_once_it_is_accepted(tmp_path: Path) -> None:
    """Two files whose rows share a chunk: once everything is accepted, a second run exits 2
    naming the run; a run of both plus a new file sends only the new one's rows."""
    rows = make_rows(60, profiles=60, seed=14, single_item=True)
    first = write_csv(tmp_path / "a.csv", rows[:25])
    second = write_csv(tmp_path / "b.csv", rows[25:50])
    third = write_csv(tmp_path / "c.csv", rows[50:])
    mapping = str(write_mapping(tmp_path / "mapping.yaml"))
    ledger = str(tmp_path / "run.ledger.db")
    args = ["-m", mapping, "--ledger", ledger, "--json", "--batch-size", "20"]
    with emulator() as (server, _):
        done = cli(["run", str(first), str(second), *args], base_url=server.url)
        assert done.exit_code == 0, done.stderr
        again = cli(["run", str(first), str(second), *args], base_url=server.url)
        assert again.exit_code == 2 and "already imported" in one_json(again.stdout)["error"]
        more = cli(["run", str(first), str(second), str(third), *args], base_url=server.url)
        summary = one_json(more.stdout)
        assert more.exit_code == 0, more.stderr
        assert summary["sources_skipped"] == 2 and summary["items_sent"] == 10
        _check_profiles(server, rows)


def test_kill_9_in_a_many_file_import_then_resume_is_exact(tmp_path: Path) -> None:
    """kill -9 halfway through 40 part files, then the same command: nothing lost, and no $add
    applied twice (only chunks in flight at the kill are of unknown fate)."""
    rows = make_rows(800, profiles=150, seed=15, single_item=True)
    source = _parts(tmp_path / "export", rows, 40)
    ledger = tmp_path / "run.ledger.db"
    with emulator(latency_ms=(20, 40), seed=15, log=True) as (server, arrivals):
        assert arrivals is not None
        env = cli_env(server.url)
        args = _run(tmp_path, source, "--batch-size", "20", "--concurrency", "4")
        proc = start_cli(args, cwd=tmp_path, env=env)
        try:
            wait_for(
                lambda: count_status(ledger_chunks(ledger), "accepted") >= 8,
                timeout=60,
                what="8 accepted chunks",
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        in_flight = {c.chunk_id for c in ledger_chunks(ledger) if c.status == "in_flight"}
        # the requests the dead importer left behind still get applied (or never arrived)
        wait_for(lambda: arrivals.in_flight == 0, timeout=5, what="the emulator to go idle")
        second = run_cli(args, cwd=tmp_path, env=env)
        summary = one_json(second.stdout)
        assert second.returncode in (0, 1), second.stderr
        assert summary["chunks_skipped"] >= 8
        after = ledger_chunks(ledger)
        assert {c.status for c in after} <= {"accepted", "ambiguous"}
        assert {c.chunk_id for c in after if c.status == "ambiguous"} <= in_flight
        assert sum(c.items for c in after) == len(rows)
        actual = emulator_profiles(server, sorted({r["user_id"] for r in rows}))
        unknown = {c.chunk_id for c in after if c.status == "ambiguous"}
        offsets = [20 * k for k in range(40)]  # 800 rows in 40 files of 20
        explain_state(rows, after, actual, unknown=unknown, offsets=offsets)


def test_retry_after_the_source_directory_is_deleted_is_exact(tmp_path: Path) -> None:
    """Every chunk of a 20-file import fails; the directory is deleted; `retry` lands them all
    and the profiles are exactly as the rows say."""
    rows = make_rows(400, profiles=60, seed=16)
    source = _parts(tmp_path / "export", rows, 20)
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        result = cli(
            _run(tmp_path, source, "--batch-size", "30", "--max-retries", "0"), base_url=server.url
        )
        summary = one_json(result.stdout)
        assert result.exit_code == 1 and summary["chunks_failed"] == summary["chunks_total"]
    shutil.rmtree(source)
    with emulator(port=port) as (healthy, _):
        result = cli(["retry", "--ledger", str(tmp_path / "run.ledger.db"), "--json"])
        retried = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert retried["chunks_accepted"] == summary["chunks_total"]
        assert healthy.stats()["max_in_flight_per_distinct_id"] == 1
        _check_profiles(healthy, rows)


def test_preview_shows_the_first_full_requests_of_a_many_file_import(tmp_path: Path) -> None:
    """`preview -n 2` over 50 small files shows two requests of 500 items each."""
    rows = make_rows(1200, profiles=1200, seed=17, single_item=True)
    source = _parts(tmp_path / "export", rows, 50)
    mapping = str(write_mapping(tmp_path / "mapping.yaml"))
    result = cli(["preview", str(source), "-m", mapping, "-n", "2"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("500 items") == 2


def test_part_files_of_different_types_are_each_checked_by_their_own(tmp_path: Path) -> None:
    """Part files usually share one schema (and one set of checks); one whose column has
    another type is checked by its own: an integer property reads Int64 values as they are and
    rejects a text part's non-numbers, naming file and row."""
    import polars as pl

    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(3):  # three parts of one schema
        pl.DataFrame({"id": [f"u{k}a", f"u{k}b"], "logins": [k, k + 1]}).write_parquet(
            folder / f"part-{k}.parquet"
        )
    pl.DataFrame({"id": ["t1", "t2"], "logins": ["7", "many"]}).write_parquet(
        folder / "part-3.parquet"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "distinct_id: id\nproperties:\n  - {column: logins, op: set, type: integer}\n",
        encoding="utf-8",
    )
    args = ["run", str(folder), "-m", str(mapping), "--dry-run", "--json"]
    result = cli([*args, "--rejects", str(tmp_path / "rejects.csv")])
    summary = one_json(result.stdout)
    assert summary["rows_read"] == 8 and summary["rows_rejected"] == 1, summary
    with (tmp_path / "rejects.csv").open(encoding="utf-8") as handle:
        (reject,) = list(csv.DictReader(handle))
    assert reject["source"].endswith("part-3.parquet") and reject["row"] == "2", reject
    assert "logins" in reject["column"] + reject["reason"], reject
