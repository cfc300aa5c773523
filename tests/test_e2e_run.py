"""Issue 4's acceptance: `fyno-import run` / `retry` / `ledger` against the emulator over a socket.

Every test drives the real command line (in-process through CliRunner, or as a subprocess where
it must be killed or signalled) against an emulator on 127.0.0.1, and checks what a user would
check: the profiles in the emulator, the exit code, the JSON summary and the ledger.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    EXPORT_COLUMNS,
    WORKSPACE,
    LedgerChunk,
    add_totals,
    check_summary,
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
    shard_of,
    start_cli,
    stop_process,
    wait_for,
    write_csv,
    write_mapping,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.emulator import EmulatorConfig, EmulatorServer


@pytest.fixture(autouse=True)
def _work_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default files (rejects, ledger) land in the test's directory, never in the repository."""
    monkeypatch.chdir(tmp_path)


# --- shared set-up -------------------------------------------------------------------------------


def _files(tmp_path: Path, rows: list[dict[str, str]], name: str = "users.csv") -> dict[str, Path]:
    return {
        "source": write_csv(tmp_path / name, rows),
        "mapping": write_mapping(tmp_path / "mapping.yaml"),
        "ledger": tmp_path / "run.ledger.db",
        "rejects": tmp_path / "rejects.csv",
    }


def _run_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "run",
        str(files["source"]),
        "-m",
        str(files["mapping"]),
        "--ledger",
        str(files["ledger"]),
        "--rejects",
        str(files["rejects"]),
        "--json",
        *extra,
    ]


def _ledger_show(ledger: Path, run_id: str | None = None) -> Any:
    args = ["ledger", "show", "--ledger", str(ledger), "--json"]
    if run_id:
        args += ["--run", run_id]
    result = cli(args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _assert_profiles(server: EmulatorServer, expected: dict[str, dict[str, Any]]) -> None:
    actual = emulator_profiles(server, sorted(expected))
    assert actual == expected, "\n".join(profile_diff(actual, expected))


def _assert_ledger_agrees(summary: dict[str, Any], ledger: Path) -> list[LedgerChunk]:
    """Every chunk is accepted, failed or ambiguous, and the summary counts the same."""
    report = _ledger_show(ledger, summary["run_id"])
    chunks = ledger_chunks(ledger, summary["run_id"])
    statuses = {c.status for c in chunks}
    assert statuses <= {"accepted", "failed", "refused", "ambiguous"}, statuses
    by_status = report["chunks"]
    assert by_status["in_flight"] == 0 and by_status["pending"] == 0, by_status
    assert len(chunks) == summary["chunks_total"], (len(chunks), summary["chunks_total"])
    assert by_status["accepted"] == summary["chunks_accepted"] + summary["chunks_skipped"]
    assert by_status["failed"] + by_status["refused"] == summary["chunks_failed"]
    assert by_status["ambiguous"] == summary["chunks_ambiguous"]
    problems = summary["chunks_failed"] or summary["chunks_ambiguous"] or summary["rows_rejected"]
    assert summary["exit_code"] == (1 if problems else 0), summary
    return chunks


# --- a clean run ---------------------------------------------------------------------------------


def test_clean_run_lands_every_valid_row_as_the_mapping_implies(tmp_path: Path) -> None:
    """A clean run exits 0 and leaves every profile exactly as the mapping's operators imply."""
    rows = make_rows(1200, profiles=150, seed=1)
    files = _files(tmp_path, rows)
    items = expected_items(rows)
    with emulator() as (server, _):
        result = cli(_run_args(files, "--batch-size", "37"), base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        check_summary(summary)
        assert summary["rows_read"] == summary["rows_valid"] == 1200
        assert summary["items_sent"] == len(items)
        assert summary["chunks_accepted"] == summary["chunks_total"] > 1
        _assert_profiles(server, reference_profiles(items))
        stats = server.stats()
        assert stats["items_applied"] == len(items)
        assert requests_total(stats) == summary["chunks_total"]  # each chunk sent exactly once
    _assert_ledger_agrees(summary, files["ledger"])


def test_rejected_rows_are_in_the_rejects_file_and_the_rest_lands(tmp_path: Path) -> None:
    """Invalid rows go to the rejects file with reasons (exit 1); every valid row still lands."""
    rows = make_rows(300, profiles=40, seed=2)
    bad = {5: "1,234", 77: "many", 150: "2.5"}  # thousands separator, text, not an integer
    for index, value in bad.items():
        rows[index - 1]["logins"] = value
    files = _files(tmp_path, rows)
    with emulator() as (server, _):
        result = cli(_run_args(files), base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 1, result.stderr
        assert summary["rows_rejected"] == 3 and summary["rows_valid"] == 297
        good = [r for i, r in enumerate(rows, start=1) if i not in bad]
        _assert_profiles(server, reference_profiles(expected_items(good)))
    with files["rejects"].open(encoding="utf-8", newline="") as handle:
        rejected = list(csv.DictReader(handle))
    assert [int(r["row"]) for r in rejected] == sorted(bad)
    assert {r["column"] for r in rejected} == {"logins"}
    assert "thousands separators" in rejected[0]["reason"]
    assert json.loads(rejected[1]["values"])["logins"] == "many"


# --- faults --------------------------------------------------------------------------------------


def test_run_survives_503_429_latency_and_dropped_answers_without_double_add(
    tmp_path: Path,
) -> None:
    """With every fault on, the run finishes, no $add lands twice, and ledger and summary agree."""
    rows = make_rows(1500, profiles=120, seed=3)
    files = _files(tmp_path, rows)
    items = expected_items(rows)
    # 120 profiles over 1,500 rows: most chunks share a profile with the one before, so they go
    # one after another; a bucket of 20 requests/s is still exceeded
    faults = dict(fail_rate=0.15, drop_rate=0.08, rate_limit=20, latency_ms=(1, 15), seed=3)
    with emulator(**faults) as (server, _):
        result = cli(
            _run_args(files, "--batch-size", "20", "--concurrency", "8", "--max-retries", "12"),
            base_url=server.url,
        )
        summary = one_json(result.stdout)
        assert result.exit_code in (0, 1), result.stderr
        stats = server.stats()
        by_status = stats["requests_by_status"]
        # the faults really happened
        assert by_status.get("503", 0) > 0 and by_status.get("dropped", 0) > 0, by_status
        assert by_status.get("429", 0) > 0, by_status
        chunks = _assert_ledger_agrees(summary, files["ledger"])
        assert count_status(chunks, "failed") == 0, "12 retries should outlast these faults"
        # a dropped answer is applied by the emulator: nothing may be missing, nothing doubled
        assert stats["ops_applied"]["$add"] == sum(1 for _, a in items if "$add" in a)
        expected = reference_profiles(items)
        actual = emulator_profiles(server, sorted(expected))
        for distinct_id, name in add_totals(items):
            got, want = actual[distinct_id].get(name), expected[distinct_id].get(name)
            assert got == want, (distinct_id, name, got, want)
        assert actual == expected, "\n".join(profile_diff(actual, expected))
        # every ambiguous chunk carries $add and was left alone: resent ones would show above
        ambiguous = [c for c in chunks if c.status == "ambiguous"]
        assert all(c.has_add for c in ambiguous)
        assert summary["chunks_ambiguous"] == len(ambiguous) > 0
        assert summary["retries"] > 0


def test_one_profile_in_many_rows_ends_with_the_last_rows_values(tmp_path: Path) -> None:
    """Concurrency 16, random latency: each profile ends with its last row; never 2 in flight."""
    rows = []
    for i in range(600):
        distinct_id = f"same-{i % 3}"
        rows.append(
            {
                "user_id": distinct_id,
                "name": f"name-{i}",
                "plan": f"plan-{i}",
                "first_source": f"src-{i}",
                "logins": "1",
                "credits": "",
                "tags": f"t{i % 4}",
                "removed_tags": f"t{(i + 1) % 4}",
                "churned": "",
            }
        )
    files = _files(tmp_path, rows)
    with emulator(latency_ms=(0, 8), seed=4) as (server, _):
        result = cli(
            _run_args(files, "--batch-size", "5", "--concurrency", "16"), base_url=server.url
        )
        assert result.exit_code == 0, result.stderr
        for k in range(3):
            last = max(i for i in range(600) if i % 3 == k)
            profile = server.profile(f"same-{k}", workspace=WORKSPACE)
            assert profile is not None
            assert profile["name"] == f"name-{last}" and profile["plan"] == f"plan-{last}"
            assert profile["first_source"] == f"src-{k}"  # $once: the first row's value
            assert profile["logins"] == 200
        assert server.stats()["max_in_flight_per_distinct_id"] == 1
        _assert_profiles(server, reference_profiles(expected_items(rows)))


# --- kill -9 and resume --------------------------------------------------------------------------


def test_sigkill_halfway_then_the_same_command_finishes_without_resending(tmp_path: Path) -> None:
    """kill -9 mid-run, same command again: accepted chunks skipped, in-flight $add not resent."""
    rows = make_rows(400, profiles=120, seed=5, single_item=True)
    files = _files(tmp_path, rows)
    assert len(expected_items(rows)) == len(rows)
    with emulator(latency_ms=(30, 60), seed=5, log=True) as (server, arrivals):
        assert arrivals is not None
        env = cli_env(server.url)
        args = _run_args(files, "--batch-size", "10", "--concurrency", "4")
        proc = start_cli(args, cwd=tmp_path, env=env)
        try:
            wait_for(
                lambda: count_status(ledger_chunks(files["ledger"]), "accepted") >= 10,
                timeout=60,
                what="10 accepted chunks in the ledger",
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        assert proc.returncode == -signal.SIGKILL
        before = ledger_chunks(files["ledger"])
        accepted_before = {c.chunk_id for c in before if c.status == "accepted"}
        in_flight_before = {c.chunk_id for c in before if c.status == "in_flight"}
        assert in_flight_before, "the kill should catch requests in flight"
        # the requests the dead importer left behind still get applied (or never arrived)
        wait_for(lambda: arrivals.in_flight == 0, timeout=5, what="the emulator to go idle")
        # `retry` cannot finish a killed run (unsent chunks are not in the ledger) and says so;
        # it settles the in-flight $add chunks as ambiguous, as the resume would
        retried = cli(["retry", "--ledger", str(files["ledger"]), "--json"])
        assert "run the same `run` command again" in retried.stderr
        assert one_json(retried.stdout)["chunks_ambiguous"] == len(in_flight_before)
        requests_before = requests_total(server.stats())

        second = run_cli(args, cwd=tmp_path, env=env)
        summary = one_json(second.stdout)
        assert second.returncode == summary["exit_code"] == 1, second.stderr
        assert summary["run_id"] == before[0].run_id  # the same run, resumed
        assert summary["chunks_skipped"] == len(accepted_before) > 0
        after = _assert_ledger_agrees(summary, files["ledger"])
        # every chunk carries $add: the in-flight ones became ambiguous, nothing else is open
        ambiguous = {c.chunk_id: c for c in after if c.status == "ambiguous"}
        assert set(ambiguous) == in_flight_before
        assert summary["chunks_ambiguous"] == len(in_flight_before)
        assert count_status(after, "failed") == 0
        # one request per chunk the second run sent: nothing accepted or ambiguous went again
        assert requests_total(server.stats()) - requests_before == summary["chunks_accepted"]
        assert summary["chunks_accepted"] + len(accepted_before) + len(ambiguous) == len(after)
        # exact state: every update once, except in-flight chunks the kill stopped from leaving
        actual = emulator_profiles(server, sorted({r["user_id"] for r in rows}))
        explain_state(rows, after, actual, unknown=set(ambiguous))


# --- permanent failures and retry ----------------------------------------------------------------


def test_permanent_failures_exit_1_then_retry_lands_them_after_the_source_is_gone(
    tmp_path: Path,
) -> None:
    """Chunks failing on every try exit 1; with the source deleted, `retry` lands them (exit 0)."""
    rows = make_rows(200, profiles=30, seed=6)
    files = _files(tmp_path, rows)
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        result = cli(
            _run_args(files, "--batch-size", "25", "--max-retries", "1"), base_url=server.url
        )
        summary = one_json(result.stdout)
        assert result.exit_code == 1, result.stderr
        assert summary["chunks_failed"] == summary["chunks_total"] > 0
        assert summary["chunks_accepted"] == 0 and summary["retries"] == summary["chunks_total"]
        assert server.stats()["items_applied"] == 0
    _assert_ledger_agrees(summary, files["ledger"])
    files["source"].unlink()
    # the same address, healthy now: retry goes where the ledger says the run went
    with emulator(port=port) as (healthy, _):
        result = cli(["retry", "--ledger", str(files["ledger"]), "--json"], base_url=None)
        retried = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        check_summary(retried)
        assert retried["run_id"] == summary["run_id"]
        assert retried["chunks_accepted"] == summary["chunks_failed"]
        assert retried["chunks_failed"] == retried["chunks_ambiguous"] == 0
        _assert_profiles(healthy, reference_profiles(expected_items(rows)))
    report = _ledger_show(files["ledger"], summary["run_id"])
    assert report["chunks"]["accepted"] == summary["chunks_total"]
    assert report["chunks"]["failed"] == 0


def test_retry_brings_the_run_up_to_date_and_is_listed_in_its_report(tmp_path: Path) -> None:
    """After `retry` lands what failed, the run's stored summary, its history line and its
    report agree (all accepted, exit 0), the summary is still a contract summary, and the
    report lists the retry with what it sent."""
    rows = make_rows(90, profiles=30, seed=61, single_item=True)
    files = _files(tmp_path, rows)
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        args = _run_args(files, "--batch-size", "30", "--max-retries", "0")
        first = one_json(cli(args, base_url=server.url).stdout)
    assert first["chunks_failed"] == first["chunks_total"] == 3
    with emulator(port=port):
        retried = one_json(cli(["retry", "--ledger", str(files["ledger"]), "--json"]).stdout)
    assert retried["chunks_accepted"] == 3
    report = _ledger_show(files["ledger"], first["run_id"])
    summary = report["summary"]
    check_summary(summary)
    assert (summary["chunks_accepted"], summary["chunks_failed"], summary["exit_code"]) == (3, 0, 0)
    assert summary["items_sent"] == retried["items_sent"] == report["items_accepted"] == 90
    assert summary["retries"] == 3  # the retry resent each chunk once
    run_line, retry_line = report["history"]
    assert (run_line["kind"], run_line["chunks_accepted"], run_line["chunks_failed"]) == (
        "run",
        3,
        0,
    )
    assert report["chunks"]["accepted"] == 3 and report["failures"] == []
    assert (retry_line["kind"], retry_line["status"], retry_line["requests"]) == (
        "retry",
        "finished",
        3,
    )
    assert (retry_line["chunks_total"], retry_line["chunks_accepted"]) == (3, 3)
    (listed,) = _ledger_show(files["ledger"])
    assert listed["summary"] == summary


def test_retry_killed_with_sigkill_leaves_nothing_stranded_in_flight(tmp_path: Path) -> None:
    """kill -9 during retry: the next retry leaves no chunk in flight and lands nothing twice."""
    rows = make_rows(120, profiles=40, seed=45, every_add=False, single_item=True)
    files = _files(tmp_path, rows)
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        args = _run_args(files, "--batch-size", "4", "--max-retries", "0")
        assert cli(args, base_url=server.url).exit_code == 1
    files["source"].unlink()
    with emulator(port=port, latency_ms=(80, 150), log=True) as (healthy, arrivals):
        assert arrivals is not None
        retry = ["retry", "--ledger", str(files["ledger"]), "--json", "--concurrency", "4"]
        proc = start_cli(retry, cwd=tmp_path, env=cli_env(None))
        try:
            wait_for(
                lambda: count_status(ledger_chunks(files["ledger"]), "accepted") >= 4,
                timeout=60,
                what="4 chunks accepted by the retry",
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        stranded = {
            c.chunk_id: c for c in ledger_chunks(files["ledger"]) if c.status == "in_flight"
        }
        assert stranded, "the kill should leave chunks in flight"
        wait_for(lambda: arrivals.in_flight == 0, timeout=10, what="the emulator to go idle")
        again = cli(["retry", "--ledger", str(files["ledger"]), "--json"])
        summary = one_json(again.stdout)
        chunks = ledger_chunks(files["ledger"])
        assert count_status(chunks, "in_flight") == 0
        assert {c.status for c in chunks} <= {"accepted", "ambiguous"}
        ambiguous = {c.chunk_id for c in chunks if c.status == "ambiguous"}
        assert ambiguous == {cid for cid, c in stranded.items() if c.has_add}
        assert again.exit_code == summary["exit_code"] == (1 if ambiguous else 0), again.stderr
        actual = emulator_profiles(healthy, sorted({r["user_id"] for r in rows}))
        explain_state(rows, chunks, actual, unknown=ambiguous)


def test_retry_to_another_base_url_than_the_ledgers_is_refused(tmp_path: Path) -> None:
    """`retry --base-url` naming another server than the run's exits 2 and sends nothing."""
    files = _files(tmp_path, make_rows(50, profiles=10, seed=7))
    with emulator(fail_rate=1.0) as (server, _):
        cli(_run_args(files, "--max-retries", "0"), base_url=server.url)
        before = requests_total(server.stats())
        with emulator() as (other, _):
            result = cli(
                ["retry", "--ledger", str(files["ledger"]), "--base-url", other.url, "--json"]
            )
            assert result.exit_code == 2
            assert server.url in one_json(result.stdout)["error"]
            assert requests_total(other.stats()) == 0
        assert requests_total(server.stats()) == before


def test_retry_reports_profiles_that_received_later_updates(tmp_path: Path) -> None:
    """retry says how many profiles of its chunks a later accepted run updated (superseded)."""
    old_rows = make_rows(40, profiles=10, seed=40)
    files = _files(tmp_path, old_rows)
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        failed = one_json(cli(_run_args(files, "--max-retries", "0"), base_url=server.url).stdout)
        assert failed["chunks_failed"] == failed["chunks_total"]
    # a later export updates 4 of the same profiles, and lands
    newer = [dict(r, user_id=f"u-{k}") for k, r in enumerate(make_rows(4, profiles=4, seed=41))]
    later = write_csv(tmp_path / "later.csv", newer)
    with emulator(port=port) as (healthy, _):
        result = cli(
            [
                "run",
                str(later),
                "-m",
                str(files["mapping"]),
                "--ledger",
                str(files["ledger"]),
                "--rejects",
                str(files["rejects"]),
            ],
            base_url=healthy.url,
        )
        assert result.exit_code == 0, result.stderr
        retried = cli(["retry", "--ledger", str(files["ledger"]), "--json"])
        summary = one_json(retried.stdout)
        assert retried.exit_code == 0, retried.stderr
        assert summary["run_id"] == failed["run_id"]
        assert summary["profiles_superseded"] == len({r["user_id"] for r in newer})
        assert "later updates" in retried.stderr


def test_retry_include_ambiguous_resends_them_on_request(tmp_path: Path) -> None:
    """Ambiguous chunks are resent only with --include-ambiguous, which then applies $add again."""
    rows = make_rows(30, profiles=8, seed=42)
    files = _files(tmp_path, rows)
    items = expected_items(rows)
    with emulator(drop_rate=1.0) as (server, _):
        port = port_of(server.url)
        first = one_json(cli(_run_args(files), base_url=server.url).stdout)
        assert first["chunks_ambiguous"] == first["chunks_total"]
        applied_once = emulator_profiles(server, sorted({r["user_id"] for r in rows}))
        assert applied_once == reference_profiles(items)  # a drop comes after applying
    with emulator(port=port) as (healthy, _):
        plain = one_json(cli(["retry", "--ledger", str(files["ledger"]), "--json"]).stdout)
        assert plain["chunks_accepted"] == 0 and plain["chunks_ambiguous"] == first["chunks_total"]
        assert requests_total(healthy.stats()) == 0
        result = cli(["retry", "--ledger", str(files["ledger"]), "--include-ambiguous", "--json"])
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert summary["chunks_accepted"] == first["chunks_total"]
        _assert_profiles(healthy, reference_profiles(items))
    report = _ledger_show(files["ledger"], first["run_id"])
    assert report["chunks"]["accepted"] == first["chunks_total"]


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_wrong_key_exits_3_after_at_most_concurrency_requests(
    tmp_path: Path, concurrency: int
) -> None:
    """A key the API refuses stops the run at once: exit 3, at most --concurrency requests."""
    files = _files(tmp_path, make_rows(600, profiles=300, seed=8))
    with emulator(api_key="the-right-key-0123456789", latency_ms=(5, 10)) as (server, _):
        result = cli(
            _run_args(files, "--batch-size", "5", "--concurrency", str(concurrency)),
            base_url=server.url,
            key="a-wrong-key-9876543210",
        )
        summary = one_json(result.stdout)
        assert result.exit_code == summary["exit_code"] == 3, result.stderr
        assert "refused the key" in summary["error"]
        stats = server.stats()
        assert 1 <= stats["requests_by_status"].get("401", 0) <= concurrency
        assert requests_total(stats) == stats["requests_by_status"]["401"]
        assert "a-wrong-key-9876543210" not in result.stdout + result.stderr
    chunks = ledger_chunks(files["ledger"])
    assert 1 <= len(chunks) <= concurrency
    assert {c.status for c in chunks} == {"failed"}


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_exit_3_and_the_same_command_resumes(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM / Ctrl-C: exit 3, no request after it, in-flight ones settled; a rerun resumes."""
    rows = make_rows(300, profiles=80, seed=9)
    files = _files(tmp_path, rows)
    with emulator(latency_ms=(40, 80), seed=9, log=True) as (server, arrivals):
        assert arrivals is not None
        env = cli_env(server.url)
        args = _run_args(files, "--batch-size", "10", "--concurrency", "4")
        proc = start_cli(args, cwd=tmp_path, env=env)
        try:
            wait_for(
                lambda: count_status(ledger_chunks(files["ledger"]), "accepted") >= 8,
                timeout=60,
                what="8 accepted chunks",
            )
            recorded_before = len(ledger_chunks(files["ledger"]))
            os.kill(proc.pid, signum)  # to the importer only, as a scheduler or Ctrl-C would
            signalled = time.monotonic()
            out, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
        summary = one_json(out)
        assert proc.returncode == summary["exit_code"] == 3, err
        assert "interrupted" in summary["error"]
        assert "Traceback" not in err
        # a request may already be on its way as the signal lands; none starts later than that
        # (the slack covers a loop busy for a moment before its handler runs)
        assert arrivals.arrived_after(signalled + 0.25) == 0
        chunks = ledger_chunks(files["ledger"])
        assert len(chunks) <= recorded_before + 4  # at most --concurrency more were starting
        assert count_status(chunks, "in_flight") == 0, "in-flight requests must be settled"
        assert count_status(chunks, "ambiguous") == 0
        accepted = count_status(chunks, "accepted")
        assert accepted == summary["chunks_accepted"] < summary["chunks_total"]
        assert _ledger_show(files["ledger"], summary["run_id"])["status"] == "interrupted"

        second = run_cli(args, cwd=tmp_path, env=env)
        resumed = one_json(second.stdout)
        assert second.returncode == 0, second.stderr
        assert resumed["run_id"] == summary["run_id"]
        assert resumed["chunks_skipped"] == accepted
        assert resumed["chunks_accepted"] + accepted == resumed["chunks_total"]
        _assert_profiles(server, reference_profiles(expected_items(rows)))


# --- already imported, changed settings ----------------------------------------------------------


def test_second_run_of_an_imported_file_exits_2_naming_the_run_and_force_imports_again(
    tmp_path: Path,
) -> None:
    """The same file again exits 2 naming the earlier run and sends nothing; --force resends."""
    rows = make_rows(120, profiles=20, seed=10)
    files = _files(tmp_path, rows)
    items = expected_items(rows)
    with emulator() as (server, _):
        first = one_json(cli(_run_args(files), base_url=server.url).stdout)
        assert first["exit_code"] == 0
        sent = requests_total(server.stats())
        # renamed: the fingerprint is the content, not the path
        renamed = files["source"].rename(tmp_path / "renamed.csv")
        files["source"] = renamed
        again = cli(_run_args(files), base_url=server.url)
        summary = one_json(again.stdout)
        assert again.exit_code == summary["exit_code"] == 2
        assert first["run_id"] in summary["error"] and first["run_id"] in again.stderr
        assert summary["sources_skipped"] == 1 and summary["sources"][0]["skipped"] is True
        assert requests_total(server.stats()) == sent
        forced = one_json(cli(_run_args(files, "--force"), base_url=server.url).stdout)
        assert forced["exit_code"] == 0 and forced["run_id"] != first["run_id"]
        assert forced["chunks_accepted"] == first["chunks_accepted"]
        # imported twice on purpose: every $add counts twice
        twice = reference_profiles(items + items)
        actual = emulator_profiles(server, sorted(twice))
        assert actual == twice, "\n".join(profile_diff(actual, twice))
        assert any(a["logins"] for a in actual.values())  # the doubling is visible


def test_several_sources_skip_the_imported_one_and_send_the_new_one(tmp_path: Path) -> None:
    """With two sources, the one already imported is skipped with a notice; the other is sent."""
    old_rows = make_rows(60, profiles=15, seed=11, id_prefix="old-")
    new_rows = make_rows(70, profiles=15, seed=12, id_prefix="new-")
    files = _files(tmp_path, old_rows, "a.csv")
    new = write_csv(tmp_path / "b.csv", new_rows)
    with emulator() as (server, _):
        first = one_json(cli(_run_args(files), base_url=server.url).stdout)
        result = cli([*_run_args(files), str(new)], base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert summary["sources_skipped"] == 1
        assert [s["skipped"] for s in summary["sources"]] == [True, False]
        assert first["run_id"] in result.stderr
        _assert_profiles(
            server, reference_profiles(expected_items(old_rows) + expected_items(new_rows))
        )


@pytest.mark.parametrize("change", ["batch-size", "mapping"])
def test_unfinished_run_with_other_settings_exits_2_naming_it_and_force_starts_afresh(
    tmp_path: Path, change: str
) -> None:
    """Resuming an unfinished run with another mapping or batch size exits 2; --force restarts."""
    rows = make_rows(100, profiles=20, seed=13)
    files = _files(tmp_path, rows)
    with emulator(fail_rate=1.0) as (server, _):
        first = one_json(
            cli(
                _run_args(files, "--max-retries", "0", "--batch-size", "10"), base_url=server.url
            ).stdout
        )
        assert first["exit_code"] == 1 and first["chunks_failed"] > 0
    extra = ["--batch-size", "10"]
    if change == "batch-size":
        extra = ["--batch-size", "11"]
    else:
        files["mapping"].write_text(
            files["mapping"].read_text().replace("op: once", "op: set"), encoding="utf-8"
        )
    with emulator() as (server, _):
        result = cli(_run_args(files, *extra), base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == summary["exit_code"] == 2
        assert first["run_id"] in summary["error"] and "--force" in summary["error"]
        assert requests_total(server.stats()) == 0
        forced = one_json(cli(_run_args(files, *extra, "--force"), base_url=server.url).stdout)
        assert forced["exit_code"] == 0 and forced["run_id"] != first["run_id"]
        assert forced["chunks_skipped"] == 0


def test_resume_after_failures_resends_only_the_failed_chunks(tmp_path: Path) -> None:
    """A finished run with failed chunks is resumed by the same command: only those are sent."""
    rows = make_rows(300, profiles=60, seed=14)
    files = _files(tmp_path, rows)
    with emulator(fail_rate=0.5, seed=14) as (server, _):
        args = _run_args(files, "--batch-size", "10", "--max-retries", "0")
        first = one_json(cli(args, base_url=server.url).stdout)
        assert first["exit_code"] == 1 and 0 < first["chunks_failed"] < first["chunks_total"]
    with emulator() as (healthy, _):
        # the failed chunks were never applied: the healthy server gets exactly those; sending
        # options may change between tries of one run
        args += ["--concurrency", "3", "--max-retries", "2", "--timeout", "10"]
        result = cli(args, base_url=healthy.url)
        second = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert second["run_id"] == first["run_id"]
        assert second["chunks_skipped"] == first["chunks_accepted"]
        assert second["chunks_accepted"] == first["chunks_failed"]
        assert requests_total(healthy.stats()) == first["chunks_failed"]


def test_sigterm_while_validating_exits_3_with_its_summary_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """SIGTERM during pass 1 (before any request) still ends with exit 3 and one JSON summary."""
    import polars as pl

    source = tmp_path / "big.csv"
    n = 400_000
    pl.DataFrame(
        {
            "user_id": [f"u-{i % 5000}" for i in range(n)],
            "name": ["x"] * n,
            "plan": ["pro"] * n,
            "first_source": [""] * n,
            "logins": ["1"] * n,
            "credits": [""] * n,
            "tags": ["a;b"] * n,
            "removed_tags": [""] * n,
            "churned": [""] * n,
        }
    ).write_csv(source)
    files = {
        "source": source,
        "mapping": write_mapping(tmp_path / "mapping.yaml"),
        "ledger": tmp_path / "run.ledger.db",
        "rejects": tmp_path / "rejects.csv",
    }
    with emulator() as (server, _):
        proc = start_cli(_run_args(files), cwd=tmp_path, env=cli_env(server.url))
        try:
            wait_for(files["rejects"].exists, timeout=30, what="validation to start")
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            stop_process(proc)
        summary = one_json(out)
        assert proc.returncode == summary["exit_code"] == 3, err
        assert "interrupted" in summary["error"] and "Traceback" not in err
        assert summary["rows_read"] < n, "the signal should land while validating"
        assert requests_total(server.stats()) == 0
    assert ledger_chunks(files["ledger"]) == []


# --- shards --------------------------------------------------------------------------------------

# Computed once with hashlib from the contract's rule (first 8 bytes of SHA-256, big-endian, mod N).
KNOWN_SHARDS_OF_4 = {"u-0": 2, "u-6": 1, "u-7": 3, "u-3": 4, "Zoë": 1, "00123": 4, "42": 2}


def test_shard_rule_matches_the_contract_for_known_ids() -> None:
    """The test's own shard function gives the literal values computed from the contract's rule."""
    for distinct_id, shard in KNOWN_SHARDS_OF_4.items():
        assert shard_of(distinct_id, 4) == shard, distinct_id
        assert shard_of(f"  {distinct_id} ", 4) == shard  # the trimmed id decides


def test_shards_partition_the_import_and_follow_the_sha256_rule(tmp_path: Path) -> None:
    """Shards 1..N land disjoint profiles by the SHA-256 rule; together they equal the whole."""
    rows = make_rows(500, profiles=80, seed=15)
    rows += [dict(rows[0], user_id=k) for k in KNOWN_SHARDS_OF_4]
    rows.append(dict(rows[0], user_id="   "))  # no id: rejected, by shard 1 only
    files = _files(tmp_path, rows)
    ids = sorted({r["user_id"].strip() for r in rows if r["user_id"].strip()})
    n = 3
    with emulator() as (server, _):
        rejected = []
        for k in range(1, n + 1):
            ledger = tmp_path / f"shard-{k}.db"
            result = cli(
                [
                    "run",
                    str(files["source"]),
                    "-m",
                    str(files["mapping"]),
                    "--shard",
                    f"{k}/{n}",
                    "--ledger",
                    str(ledger),
                    "--rejects",
                    str(tmp_path / f"rejects-{k}.csv"),
                    "--workspace",
                    f"shard-{k}",
                    "--json",
                ],
                base_url=server.url,
            )
            rejected.append(one_json(result.stdout)["rows_rejected"])
        assert rejected == [1, 0, 0]
        for distinct_id in ids:
            holders = [
                k for k in range(1, n + 1) if server.profile(distinct_id, workspace=f"shard-{k}")
            ]
            assert holders == [shard_of(distinct_id, n)], distinct_id
        merged = {d: server.profile(d, workspace=f"shard-{shard_of(d, n)}") for d in ids}
        valid = [r for r in rows if r["user_id"].strip()]
        expected = reference_profiles(expected_items(valid))
        assert merged == expected, "\n".join(profile_diff(merged, expected))  # type: ignore[arg-type]


def test_every_shard_of_a_small_file_exits_0_even_when_it_has_nothing_to_send(
    tmp_path: Path,
) -> None:
    """With --shard K/N over a file of few profiles, empty shards are not errors (exit 0)."""
    rows = make_rows(6, profiles=2, seed=43)
    files = _files(tmp_path, rows)
    n = 8
    with emulator() as (server, _):
        codes, sent = [], 0
        for k in range(1, n + 1):
            result = cli(
                [
                    "run",
                    str(files["source"]),
                    "-m",
                    str(files["mapping"]),
                    "--shard",
                    f"{k}/{n}",
                    "--ledger",
                    str(tmp_path / f"shard-{k}.db"),
                    "--json",
                ],
                base_url=server.url,
            )
            codes.append(result.exit_code)
            sent += one_json(result.stdout)["rows_read"]
        assert codes == [0] * n
        assert sent == len(rows)
        _assert_profiles(server, reference_profiles(expected_items(rows)))


def test_identical_sources_in_one_run_are_imported_once_with_a_notice(tmp_path: Path) -> None:
    """Two sources with the same content (or one path twice) import once; the copy is skipped."""
    rows = make_rows(50, profiles=10, seed=44)
    files = _files(tmp_path, rows, "a.csv")
    copy = tmp_path / "b.csv"
    copy.write_bytes(files["source"].read_bytes())
    with emulator() as (server, _):
        result = cli([*_run_args(files), str(copy), str(files["source"])], base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 0, result.stderr
        assert summary["sources_skipped"] == 2
        assert [s["skipped"] for s in summary["sources"]] == [False, True, True]
        assert "same content as" in result.stderr and "given twice" in result.stderr
        _assert_profiles(server, reference_profiles(expected_items(rows)))  # $add once
        chunks = ledger_chunks(files["ledger"])
        assert len(chunks) == summary["chunks_total"] == summary["chunks_accepted"]


# --- the JSON summary, export and resolve --------------------------------------------------------


def test_json_is_one_object_with_every_contract_key_on_exit_0_1_2_and_3(tmp_path: Path) -> None:
    """--json prints exactly one object holding the contract's keys, whatever the exit code."""
    rows = make_rows(40, profiles=10, seed=16)
    files = _files(tmp_path, rows)
    codes = {}
    with emulator(api_key="right-key-for-this-test") as (server, _):
        ok = cli(_run_args(files), base_url=server.url, key="right-key-for-this-test")
        codes[ok.exit_code] = one_json(ok.stdout)
        again = cli(_run_args(files), base_url=server.url, key="right-key-for-this-test")
        codes[again.exit_code] = one_json(again.stdout)
        files["source"].write_text(files["source"].read_text() + "u-x,n,,,many,,,,\n")
        partial = cli(
            _run_args(files, "--max-reject-rate", "0.5"),
            base_url=server.url,
            key="right-key-for-this-test",
        )
        codes[partial.exit_code] = one_json(partial.stdout)
        files["source"].write_text(files["source"].read_text() + "u-y,n,,,1,,,,\n")
        refused = cli(_run_args(files, "--force"), base_url=server.url, key="wrong-key-here-123")
        codes[refused.exit_code] = one_json(refused.stdout)
    assert set(codes) == {0, 1, 2, 3}
    for code, summary in codes.items():
        check_summary(summary)
        assert summary["exit_code"] == code
        assert (summary["error"] is None) == (code in (0, 1)), summary
    # usage errors are reported the same way
    bad = cli(["run", str(files["source"]), "-m", str(tmp_path / "missing.yaml"), "--json"])
    assert bad.exit_code == 2
    assert "missing.yaml" in one_json(bad.stdout)["error"]
    dry = cli(_run_args(files, "--dry-run"), key=None)
    summary = one_json(dry.stdout)
    check_summary(summary)
    assert summary["run_id"] is None and summary["ledger"] is None
    assert summary["chunks_total"] > 0 and summary["items_sent"] == 0


def test_export_has_the_contract_columns_and_resolve_closes_an_ambiguous_chunk(
    tmp_path: Path,
) -> None:
    """Dropped answers leave ambiguous $add chunks: export lists their rows; resolve closes one."""
    rows = make_rows(60, profiles=15, seed=17)
    files = _files(tmp_path, rows)
    with emulator(drop_rate=1.0) as (server, _):
        result = cli(_run_args(files, "--batch-size", "20"), base_url=server.url)
        summary = one_json(result.stdout)
        assert result.exit_code == 1
        assert summary["chunks_ambiguous"] == summary["chunks_total"] > 1
        assert summary["retries"] == 0  # a $add chunk whose fate is unknown is never resent
        assert requests_total(server.stats()) == summary["chunks_total"]
    failures = tmp_path / "failures.csv"
    exported = cli(
        ["ledger", "export", "--ledger", str(files["ledger"]), "--failures", str(failures)]
    )
    assert exported.exit_code == 0, exported.stderr
    with failures.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        lines = list(reader)
    assert header == EXPORT_COLUMNS
    assert len(lines) == len(expected_items(rows))
    assert {line[5] for line in lines} == {"ambiguous"}
    assert sorted({int(line[3]) for line in lines}) == list(range(1, 61))
    assert {line[4] for line in lines} == {r["user_id"] for r in rows}

    chunk = ledger_chunks(files["ledger"])[0]
    resolve = [
        "ledger",
        "resolve",
        "--ledger",
        str(files["ledger"]),
        "--run",
        summary["run_id"],
        "--chunk",
        chunk.chunk_id,
        "--as",
        "accepted",
    ]
    assert cli(resolve).exit_code == 0
    report = _ledger_show(files["ledger"], summary["run_id"])
    assert report["chunks"]["ambiguous"] == summary["chunks_ambiguous"] - 1
    assert report["chunks"]["accepted"] == 1
    again = cli(resolve)
    assert again.exit_code == 2 and "accepted" in again.stderr  # only open chunks resolve
    # retry without --include-ambiguous resends nothing: ambiguous chunks wait for a person
    with emulator(port=port_of(server.url)) as (healthy, _):
        retried = cli(["retry", "--ledger", str(files["ledger"]), "--json"])
        assert one_json(retried.stdout)["chunks_accepted"] == 0
        assert requests_total(healthy.stats()) == 0


# --- memory --------------------------------------------------------------------------------------


# Measured through a small launcher process: a child forked straight from pytest would inherit
# pytest's own resident set into its ru_maxrss (Linux folds the pre-exec memory into it).
_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mb(args: list[str], cwd: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "importer", *args],
        cwd=cwd,
        env=cli_env(None, key=None),
        capture_output=True,
        text=True,
        timeout=600,
    )
    code, peak_kb = result.stdout.split()
    assert code == "0", result.stderr
    return int(peak_kb) / 1024


def _big_csv(path: Path, n: int) -> Path:
    import polars as pl

    ids = pl.int_range(0, n, eager=True)
    pl.DataFrame(
        {
            "user_id": ("u-" + (ids % 50_000).cast(pl.String)),
            "name": "name-" + ids.cast(pl.String),
            "plan": pl.Series(["pro", "free", ""] * (n // 3 + 1))[:n],
            "first_source": "ads",
            "logins": (ids % 7).cast(pl.String),
            "credits": "1.5",
            "tags": "beta;vip",
            "removed_tags": "",
            "churned": "",
        }
    ).write_csv(path)
    return path


MEMORY_FIGURES: dict[str, float] = {}


@pytest.mark.parametrize(
    "small",
    [
        pytest.param(100_000, id="100k-vs-1M"),
        pytest.param(1_000_000, id="1M-vs-10M", marks=pytest.mark.slow),
    ],
)
def test_memory_stays_bounded_for_a_ten_times_larger_file(tmp_path: Path, small: int) -> None:
    """A file 10x larger does not need 10x the memory: peak RSS of a --dry-run grows far less."""
    mapping = write_mapping(tmp_path / "mapping.yaml")
    peaks = []
    for n in (small, small * 10):
        source = _big_csv(tmp_path / f"rows-{n}.csv", n)
        args = ["run", str(source), "-m", str(mapping), "--dry-run", "--rejects", "r.csv"]
        peaks.append(_peak_rss_mb(args, tmp_path))
        source.unlink()
    ratio = peaks[1] / peaks[0]
    MEMORY_FIGURES[f"{small}"] = ratio
    print(
        f"\n  peak RSS: {small:,} rows {peaks[0]:.0f} MB, "
        f"{small * 10:,} rows {peaks[1]:.0f} MB, ratio {ratio:.2f}"
    )
    assert ratio < 3, peaks


# --- random rows round-tripped through the emulator ----------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";,"),
    max_size=12,
)
_row = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u-1", " u-1 ", "u-2", "00123", "Zoë", "a b", "x" * 80]),
        "name": st.one_of(_text, st.text(max_size=255).filter(lambda t: "\r" not in t)),
        "plan": st.sampled_from(["", "pro", "free", "ünï"]),
        "first_source": st.one_of(st.just(""), _text),
        "logins": st.one_of(
            st.just(""), st.integers(-50, 50).map(str), st.sampled_from(["12.0", "1e2", " 7 "])
        ),
        "credits": st.one_of(
            st.just(""), st.integers(-400, 400).map(lambda q: str(q / 4)), st.just("1e1")
        ),
        "tags": st.lists(_text.filter(lambda t: t.strip() != ""), max_size=3).map(";".join),
        "removed_tags": st.lists(_text, max_size=2).map(";".join),
        "churned": st.sampled_from(["", "plan", "first_source,tags", " name , logins "]),
    }
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(_row, min_size=1, max_size=40), batch_size=st.integers(1, 7))
def test_random_valid_rows_round_trip_to_the_reference_model(
    tmp_path: Path, rows: list[dict[str, str]], batch_size: int
) -> None:
    """Random valid rows, sent through run, leave the emulator equal to the operators' model."""
    folder = tmp_path / f"example-{time.monotonic_ns()}"
    folder.mkdir()
    files = _files(folder, rows)
    server = _ROUND_TRIP.get("server")
    if server is None:
        server = _ROUND_TRIP["server"] = EmulatorServer(EmulatorConfig(port=0))
        server.start()
    server.reset()
    result = cli(_run_args(files, "--batch-size", str(batch_size)), base_url=server.url)
    summary = one_json(result.stdout)
    assert summary["rows_rejected"] == 0, files["rejects"].read_text()
    assert result.exit_code == 0, result.stderr
    expected = reference_profiles(expected_items(rows))
    actual = emulator_profiles(server, sorted({r["user_id"].strip() for r in rows}))
    assert actual == {k: v for k, v in expected.items()}, "\n".join(profile_diff(actual, expected))


_ROUND_TRIP: dict[str, EmulatorServer] = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_round_trip_emulator() -> Any:
    """Stop the emulator the round-trip property test started, once the module is done."""
    yield
    server = _ROUND_TRIP.pop("server", None)
    if server is not None:
        server.stop()
