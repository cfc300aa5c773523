"""Incremental sync (`run --changed-only`) against full imports, under faults, crashes and retry.

Every test drives the real CLI against emulators on 127.0.0.1 and compares what a user would
look at: the emulator's profiles (and its `$add` totals), exit codes and JSON summaries. The
reference is always a second, fault-free emulator into which the same daily files were fully
imported (`run --force`, no `--changed-only`), one after another.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from e2e_helpers import (
    API_KEY,
    LedgerChunk,
    cli_env,
    count_status,
    emulator,
    ledger_chunks,
    one_json,
    port_of,
    profile_diff,
    requests_total,
    run_cli,
    start_cli,
    stop_process,
    wait_for,
    write_csv,
)
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from importer.cli import main
from importer.emulator import EmulatorServer

WORKSPACE = "ws-e2e"  # what e2e_helpers.cli_env sets for the subprocess runs

# --- running the CLI -----------------------------------------------------------------------------


def invoke(
    args: Sequence[str], base_url: str, workspace: str = WORKSPACE
) -> tuple[int, dict[str, Any], str]:
    """``fyno-import ARGS`` in-process: exit code, the JSON summary, stderr."""
    env = {
        "FYNO_API_KEY": API_KEY,
        "FYNO_WORKSPACE_ID": workspace,
        "FYNO_BASE_URL": base_url,
        "FYNO_VERSION": None,
    }
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"raised: {result.exception!r}\n{result.stderr}") from result.exception
    summary = one_json(result.stdout)
    assert summary["exit_code"] == result.exit_code, (summary, result.stderr)
    return result.exit_code, summary, result.stderr


def run_args(source: Path, mapping: Path, work: Path, *extra: str) -> list[str]:
    """A `run` of one daily file with every file of its own in ``work``."""
    return [
        "run",
        str(source),
        "-m",
        str(mapping),
        "--ledger",
        str(work / "run.ledger.db"),
        "--rejects",
        str(work / "rejects.csv"),
        "--json",
        "--no-progress",
        *extra,
    ]


def changed_only(source: Path, mapping: Path, work: Path, *extra: str) -> list[str]:
    """A nightly `run --changed-only` with its state in ``work/state``."""
    return run_args(source, mapping, work, "--changed-only", "--state", str(work / "state"), *extra)


def write_mapping(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def profiles_of(
    server: EmulatorServer, ids: Sequence[str], workspace: str = WORKSPACE
) -> dict[str, dict[str, Any]]:
    """The emulator's profile of each of these ids that exists."""
    out = {}
    for distinct_id in sorted(set(ids)):
        found = server.profile(distinct_id, workspace=workspace)
        if found is not None:
            out[distinct_id] = found
    return out


def import_fully(
    server: EmulatorServer,
    files: Sequence[Path],
    mapping: Path,
    work: Path,
    workspace: str = WORKSPACE,
) -> None:
    """Import each file fully (no --changed-only), in order, into a fault-free emulator."""
    work.mkdir(parents=True, exist_ok=True)
    for source in files:
        # --force: a daily file identical to an earlier one is imported again, as a nightly
        # full import of it would be
        args = run_args(source, mapping, work, "--force")
        code, summary, err = invoke(args, server.url, workspace)
        assert code == 0 and summary["chunks_failed"] == 0, err


@contextlib.contextmanager
def full_imports(files: Sequence[Path], mapping: Path, work: Path) -> Iterator[EmulatorServer]:
    """A fresh, fault-free emulator into which each file was fully imported, in order."""
    with emulator() as (server, _):
        import_fully(server, files, mapping, work)
        yield server


def state_files(state: Path) -> dict[str, bytes]:
    """Every file of a local state directory (but its lock) and its bytes."""
    return {
        str(p.relative_to(state)): p.read_bytes()
        for p in sorted(state.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def assert_same(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    assert actual == expected, f"{what}:\n" + "\n".join(profile_diff(actual, expected, limit=10))


# --- 1. the property: changed-only nights under faults end as full imports -----------------------

PROPERTY_MAPPING = """\
distinct_id: id
properties:
  - {column: name, op: set}
  - {column: plan, op: set, on_null: unset}
"""
ONCE_LINE = "  - {column: source, property: first_source, op: once}\n"
PROPERTY_COLUMNS = ["id", "name", "plan", "source"]

_ids = st.sampled_from(["u0", "u1", "u2", "u3", "u4", " u1 "])  # " u1 " is u1, trimmed
_cell = lambda *values: st.one_of(st.none(), st.sampled_from(values))  # noqa: E731
_row = st.fixed_dictionaries(
    {
        "id": _ids,
        "name": _cell("Ada", "Bo", "Zoë", "Comma, Carl"),
        "plan": _cell("free", "pro"),
        "source": _cell("ads", "seo"),
    }
)
_daily_file = st.tuples(st.sampled_from(["csv", "parquet"]), st.lists(_row, min_size=1, max_size=8))


def one_once_value_per_id(rows: list[dict[str, str | None]]) -> list[dict[str, str | None]]:
    """The rows with every non-null ``source`` of an id replaced by that id's first one.

    Needed because of faults, not of --changed-only: when an id's earlier chunk fails and a
    later one carrying another `$once` value is accepted (the contract sends a profile's next
    request once the previous one has its final answer, failed included), resending the
    failed one cannot make the first value win. A full import with the same failure and a
    `retry` ends the same way, so this is no fault of the sync (contract.md says as much of an
    old `$set` resent late: `profiles_superseded`)."""
    first: dict[str, str] = {}
    out = []
    for row in rows:
        key = str(row["id"]).strip()
        if row["source"] is not None:
            first.setdefault(key, row["source"])
            row = dict(row, source=first[key])
        out.append(row)
    return out


def write_daily(path: Path, fmt: str, rows: list[dict[str, str | None]]) -> Path:
    """One daily export: a CSV (a null is an empty cell) or a Parquet file of text columns."""
    if fmt == "csv":
        blanked = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
        return write_csv(path.with_suffix(".csv"), blanked, PROPERTY_COLUMNS)
    frame = pl.DataFrame(rows, schema=dict.fromkeys(PROPERTY_COLUMNS, pl.String))
    target = path.with_suffix(".parquet")
    frame.write_parquet(target)
    return target


class SwitchableApi:
    """One emulated API (profiles in SQLite) on one port, restarted with or without faults: the
    sync state belongs to a base URL, so a night without faults must go to the same one."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self._stack = contextlib.ExitStack()
        self.server: EmulatorServer | None = None
        self._faults: tuple[float, int | None] | None = None

    def serve(self, *, fail_rate: float = 0.0, seed: int | None = None) -> EmulatorServer:
        """The API with these faults (restarted only if they differ from the current ones; a
        faulty one kept on goes on with its seeded draws)."""
        faults = (fail_rate, seed if fail_rate else None)
        if self.server is not None and faults == self._faults:
            return self.server
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.server, _ = self._stack.enter_context(
            emulator(db=self.db, port=self.port, fail_rate=fail_rate, seed=seed)
        )
        self.port, self._faults = port_of(self.server.url), faults
        return self.server

    def close(self) -> None:
        self._stack.close()
        self.server = None


@pytest.fixture
def reference_api() -> Iterator[EmulatorServer]:
    """A fault-free emulator for the full imports of every example (a workspace each)."""
    with emulator() as (server, _):
        yield server


_examples = itertools.count()


@settings(
    max_examples=15,
    deadline=None,
    # each example runs the CLI about ten times: shrinking a failure would take many minutes,
    # so a failure is reported as found (the falsifying example is printed)
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    days=st.lists(_daily_file, min_size=2, max_size=4),
    with_once=st.booleans(),
    fail_rate=st.sampled_from([0.0, 0.3, 0.6]),
    seed=st.integers(0, 10_000),
    batch_size=st.integers(1, 4),
)
def test_changed_only_nights_with_failed_chunks_end_as_full_imports(
    tmp_path: Path,
    reference_api: EmulatorServer,
    days: list[tuple[str, list[dict[str, str | None]]]],
    with_once: bool,
    fail_rate: float,
    seed: int,
    batch_size: int,
) -> None:
    """Random daily files (edits, several rows per id, deletions, nulls, CSV or Parquet) go out
    night after night with `--changed-only --max-retries 0` to an emulator failing a random share
    of requests (503, nothing applied). A night with failed chunks exits 1, and the next night
    resends them: up to two nights with faults, then one on the same API without faults, which
    must be clean (exit 0). The next night is the same export, the only case in which the
    contract promises those values are sent again (a later export may no longer hold them);
    then the next daily file. The final profiles equal full imports of the same files into a
    fault-free emulator, and one more night sends nothing."""
    workspace = f"ws-prop-{next(_examples)}"
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        work = Path(scratch)
        mapping = write_mapping(work / "mapping.yaml", PROPERTY_MAPPING + (ONCE_LINE * with_once))
        files = [
            write_daily(work / f"day-{n}", fmt, one_once_value_per_id(rows))
            for n, (fmt, rows) in enumerate(days)
        ]
        ids = [str(r["id"]).strip() for _, rows in days for r in rows]
        sync = work / "sync"
        sync.mkdir()
        options = ("--max-retries", "0", "--batch-size", str(batch_size), "--concurrency", "1")
        failed_nights = 0

        def night(server: EmulatorServer, source: Path) -> int:
            nonlocal failed_nights
            args = changed_only(source, mapping, sync, *options)
            code, summary, err = invoke(args, server.url, workspace)
            assert summary["rows_rejected"] == 0, err
            if code != 0:
                assert code == 1 and summary["chunks_failed"] > 0, err
                failed_nights += 1
            return code

        # (A profile is advanced only when all its chunks of a night were accepted, so at a
        # high fail rate a profile of many rows could take hundreds of faulty nights.)
        api = SwitchableApi(work / "api.db")
        try:
            for source in files:
                faulty = api.serve(fail_rate=fail_rate, seed=seed)
                if night(faulty, source) != 0 and night(faulty, source) != 0:
                    assert night(api.serve(), source) == 0, f"{source.name}: failures not resent"
            server = api.serve()
            before = requests_total(server.stats())
            args = changed_only(files[-1], mapping, sync, *options)
            code, quiet, err = invoke(args, server.url, workspace)
            assert code == 0, err
            assert quiet["items_sent"] == quiet["chunks_total"] == quiet["profiles_changed"] == 0
            assert requests_total(server.stats()) == before
            synced = profiles_of(server, ids, workspace)
        finally:
            api.close()
        event("nights with failed chunks" if failed_nights else "no failed chunk")
        import_fully(reference_api, files, mapping, work / "full", workspace)
        expected = profiles_of(reference_api, ids, workspace)
        assert_same(synced, expected, "changed-only nights != full imports")


# --- 2. kill -9 in the middle of a changed-only night, then the same command again ---------------

CRASH_MAPPING = """\
distinct_id: id
properties:
  - {column: name, op: set}
  - {column: plan, op: set, on_null: unset}
  - {column: source, property: first_source, op: once}
  - {column: logins, op: add, type: integer}
"""
CRASH_COLUMNS = ["id", "name", "plan", "source", "logins"]
PROFILES = 400
ADD_ROWS = 30  # night 2: only its first rows carry a $add, so their chunks go out first


def crash_nights() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Night 1: every profile, one login each. Night 2: every name changed, some plans cleared,
    logins only on the first ADD_ROWS rows."""
    night1 = [
        {
            "id": f"p-{n}",
            "name": f"user {n}",
            "plan": ["free", "pro", "team"][n % 3],
            "source": ["ads", "seo"][n % 2],
            "logins": "1",
        }
        for n in range(PROFILES)
    ]
    night2 = [
        dict(
            r,
            name=f"renamed {n}",
            plan="" if n % 7 == 0 else r["plan"],
            source="referral",  # once: already delivered, not sent again
            logins=str(n % 4 + 2) if n < ADD_ROWS else "",
        )
        for n, r in enumerate(night1)
    ]
    return night1, night2


def _before_kill(chunks: list[LedgerChunk]) -> bool:
    """Every chunk carrying $add is accepted, and the sending has moved on past them."""
    return any(c.status == "accepted" and not c.has_add for c in chunks) and all(
        c.status == "accepted" for c in chunks if c.has_add
    )


def test_kill_9_mid_night_then_the_same_command_finishes_once_and_advances_the_state(
    tmp_path: Path,
) -> None:
    """A changed-only night is killed (-9) while sending; the state is untouched by the crash.
    The same command again resumes the run (same run_id, accepted chunks skipped), so no `$add`
    lands twice: the emulator's totals and profiles equal full imports of both nights. The
    state is then advanced: the same file again has only its `$add` deltas to send (they are
    always sent), and without the `$add` column mapped it sends nothing at all."""
    night1, night2 = crash_nights()
    first = write_csv(tmp_path / "night-1.csv", night1, CRASH_COLUMNS)
    second = write_csv(tmp_path / "night-2.csv", night2, CRASH_COLUMNS)
    mapping = write_mapping(tmp_path / "mapping.yaml", CRASH_MAPPING)
    ledger = tmp_path / "run.ledger.db"
    ids = [r["id"] for r in night1]
    with emulator(latency_ms=(20, 40), seed=7, log=True) as (server, arrivals):
        assert arrivals is not None
        env = cli_env(server.url)
        code, summary, err = invoke(changed_only(first, mapping, tmp_path), server.url)
        assert code == 0 and summary["profiles_changed"] == PROFILES, err
        night1_run = summary["run_id"]
        after_night1 = state_files(tmp_path / "state")

        args = changed_only(second, mapping, tmp_path, "--batch-size", "5", "--concurrency", "2")
        proc = start_cli(args, cwd=tmp_path, env=env)
        try:
            wait_for(
                lambda: _before_kill([c for c in ledger_chunks(ledger) if c.run_id != night1_run]),
                timeout=60,
                what="the $add chunks accepted and a later chunk too",
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        assert proc.returncode == -signal.SIGKILL
        killed = [c for c in ledger_chunks(ledger) if c.run_id != night1_run]
        accepted = count_status(killed, "accepted")
        assert all(c.status == "accepted" for c in killed if c.has_add), killed
        assert 0 < accepted < PROFILES // 5, "the kill should land in the middle of the night"
        assert state_files(tmp_path / "state") == after_night1, "a crash advanced the state"
        wait_for(lambda: arrivals.in_flight == 0, timeout=5, what="the emulator to go idle")

        resumed = run_cli(args, cwd=tmp_path, env=env)
        summary = one_json(resumed.stdout)
        assert resumed.returncode == summary["exit_code"] == 0, resumed.stderr
        assert summary["run_id"] == killed[0].run_id, "the same command should resume the run"
        assert summary["chunks_skipped"] == accepted
        assert summary["chunks_failed"] == summary["chunks_ambiguous"] == 0

        stats = server.stats()
        synced = profiles_of(server, ids)
        before = requests_total(stats)
        # the same file and mapping: only the $add deltas are left to send
        code, dry, err = invoke(changed_only(second, mapping, tmp_path, "--dry-run"), server.url)
        assert code == 0, err
        assert dry["profiles_changed"] == dry["items_total"] == ADD_ROWS
        # without the $add column mapped, nothing at all
        no_add = write_mapping(tmp_path / "no-add.yaml", CRASH_MAPPING.rsplit("  - ", 1)[0])
        code, third, err = invoke(changed_only(second, no_add, tmp_path), server.url)
        assert code == 0, err
        assert third["chunks_total"] == third["items_sent"] == third["profiles_changed"] == 0
        assert third["rows_unchanged"] == PROFILES
        assert requests_total(server.stats()) == before
    with full_imports([first, second], mapping, tmp_path / "full") as reference:
        expected = profiles_of(reference, ids)
        expected_adds = reference.stats()["ops_applied"]["$add"]
    assert stats["ops_applied"]["$add"] == expected_adds == PROFILES + ADD_ROWS
    assert {d: p["logins"] for d, p in synced.items()} == {
        d: p["logins"] for d, p in expected.items()
    }
    assert_same(synced, expected, "after kill -9 and resume != full imports")


# --- 3. retry resends failed chunks but does not advance the state -------------------------------

RETRY_MAPPING = """\
distinct_id: id
properties:
  - {column: name, op: set}
  - {column: plan, op: set, on_null: unset}
  - {column: source, property: first_source, op: once}
  - {column: tags, op: append, split: ";"}
"""
RETRY_COLUMNS = ["id", "name", "plan", "source", "tags"]


def retry_nights() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Night 1: 30 profiles. Night 2: 20 names changed, 3 plans cleared, a tag more on 4, 3 new
    profiles."""
    night1 = [
        {
            "id": f"r-{n}",
            "name": f"user {n}",
            "plan": ["free", "pro"][n % 2],
            "source": ["ads", "seo"][n % 2],
            "tags": "a;b" if n % 3 else "c",
        }
        for n in range(30)
    ]
    night2 = [dict(r) for r in night1]
    for n in range(20):
        night2[n]["name"] = f"renamed {n}"
    for n in (21, 23, 25):
        night2[n]["plan"] = ""
    for n in (26, 27, 28, 29):
        night2[n]["tags"] += ";z"
    night2 += [
        {"id": f"r-{n}", "name": f"new {n}", "plan": "team", "source": "ads", "tags": "n"}
        for n in range(100, 103)
    ]
    return night1, night2


def test_retry_lands_failed_chunks_without_advancing_the_state(tmp_path: Path) -> None:
    """A changed-only night with failed chunks exits 1; `retry` lands them (exit 0) and leaves
    the state exactly as it was, so the next changed-only night resends exactly the profiles of
    those chunks (harmless: idempotent operators only), and the one after sends nothing. The
    profiles are right after the retry and at the end."""
    night1, night2 = retry_nights()
    first = write_csv(tmp_path / "night-1.csv", night1, RETRY_COLUMNS)
    second = write_csv(tmp_path / "night-2.csv", night2, RETRY_COLUMNS)
    mapping = write_mapping(tmp_path / "mapping.yaml", RETRY_MAPPING)
    ledger = tmp_path / "run.ledger.db"
    ids = [r["id"] for r in night2]
    with full_imports([first, second], mapping, tmp_path / "full") as reference:
        expected = profiles_of(reference, ids)
    sending = ("--batch-size", "3", "--concurrency", "1", "--max-retries", "0")
    db = tmp_path / "emulator.db"  # one API, restarted on one port with or without faults
    with emulator(db=db) as (healthy, _):
        port = port_of(healthy.url)
        code, _, err = invoke(changed_only(first, mapping, tmp_path, *sending), healthy.url)
        assert code == 0, err

    with emulator(db=db, port=port, fail_rate=0.5, seed=11, log=True, keep_bodies=True) as (
        failing_api,
        log,
    ):
        assert log is not None
        code, failing, err = invoke(
            changed_only(second, mapping, tmp_path, *sending), failing_api.url
        )
        assert code == 1, err
        assert failing["chunks_failed"] > 0 and failing["chunks_accepted"] > 0, failing
        night2_sent = sent_actions(log.bodies)  # each chunk once: no retries
    failed = [c for c in ledger_chunks(ledger, failing["run_id"]) if c.status == "failed"]
    assert len(failed) == failing["chunks_failed"]
    resend_ids = {d for c in failed for d in c.distinct_ids}
    state_after_night2 = state_files(tmp_path / "state")

    with emulator(db=db, port=port, log=True, keep_bodies=True) as (server, log):
        assert log is not None
        code, retried, err = invoke(
            ["retry", "--ledger", str(ledger), "--json", "--no-progress"], server.url
        )
        assert code == 0, err
        assert retried["run_id"] == failing["run_id"]
        assert retried["chunks_failed"] == 0
        assert retried["items_sent"] == sum(c.items for c in failed)
        assert state_files(tmp_path / "state") == state_after_night2, "retry advanced the state"
        assert_same(profiles_of(server, ids), expected, "after retry != full imports")

        before = len(log.bodies)
        code, again, err = invoke(changed_only(second, mapping, tmp_path, *sending), server.url)
        assert code == 0, err
        # the profiles of the failed chunks, with all they were sent on night 2 (a profile
        # whose items spanned a failed and an accepted chunk was not advanced either)
        resent = sent_actions(log.bodies[before:])
        assert resent == {d: a for d, a in night2_sent.items() if d in resend_ids}
        assert again["profiles_changed"] == len(resend_ids)
        assert again["items_sent"] == sum(map(len, resent.values()))

        before = requests_total(server.stats())
        code, quiet, err = invoke(changed_only(second, mapping, tmp_path, *sending), server.url)
        assert code == 0 and quiet["items_sent"] == quiet["chunks_total"] == 0, err
        assert requests_total(server.stats()) == before
        assert_same(profiles_of(server, ids), expected, "at the end != full imports")


def sent_actions(bodies: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """The actions each profile received, in order, from request bodies."""
    out: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        for item in json.loads(body)["batch"]:
            out.setdefault(item["distinct_id"], []).append(item["action"])
    return out
