"""Issue 6's ledger under stress: two runs at once, damaged files, and a disk that fills up.

- A second run on a ledger that a running import holds refuses at once (exit 2) naming the
  holder; the first run finishes undisturbed and the ledger stays sound. Readers may look in.
- A ledger that is not ours, damaged, or from a newer fyno-import is a clear exit 2, and the
  file is left byte for byte as it was (no sidecar journal is left behind either).
- When the ledger can no longer be written (the file-size limit stands in for a full disk:
  RLIMIT_FSIZE makes write() fail with EFBIG, as ENOSPC would), the run stops with exit 3 and
  the emulator has received no request whose chunk the ledger does not record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    cli,
    cli_env,
    count_status,
    emulator,
    emulator_profiles,
    explain_state,
    ledger_chunks,
    make_rows,
    one_json,
    requests_total,
    run_cli,
    start_cli,
    stop_process,
    wait_for,
    write_csv,
    write_mapping,
)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default files (rejects, ledger) land in the test's directory, never in the repository."""
    monkeypatch.chdir(tmp_path)


def _files(tmp_path: Path, rows: int, seed: int, name: str = "users.csv") -> tuple[Path, Path]:
    source = write_csv(tmp_path / name, make_rows(rows, profiles=max(5, rows // 4), seed=seed))
    return source, write_mapping(tmp_path / "mapping.yaml")


def _args(source: Path, mapping: Path, ledger: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(source),
        "-m",
        str(mapping),
        "--ledger",
        str(ledger),
        "--rejects",
        str(source.with_suffix(".rejects.csv")),
        "--json",
        *extra,
    ]


def _integrity(ledger: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --- two runs at once ----------------------------------------------------------------------------


def test_second_run_on_a_busy_ledger_refuses_naming_the_holder_and_the_first_finishes(
    tmp_path: Path,
) -> None:
    """While one run sends, another on the same ledger exits 2 naming its pid; nothing breaks."""
    source, mapping = _files(tmp_path, 200, seed=31)
    other = write_csv(tmp_path / "other.csv", make_rows(50, profiles=10, seed=32, id_prefix="o-"))
    ledger = tmp_path / "shared.ledger.db"
    with emulator(latency_ms=(40, 60)) as (server, _):
        env = cli_env(server.url)
        first = start_cli(
            _args(source, mapping, ledger, "--batch-size", "5", "--concurrency", "2"),
            cwd=tmp_path,
            env=env,
        )
        try:
            wait_for(
                lambda: count_status(ledger_chunks(ledger), "accepted") >= 3,
                timeout=60,
                what="the first run to be sending",
            )
            before = requests_total(server.stats())
            second = cli(_args(other, mapping, ledger), base_url=server.url)
            summary = one_json(second.stdout)
            assert second.exit_code == summary["exit_code"] == 2
            assert "in use by another run" in summary["error"]
            assert f"pid {first.pid}" in summary["error"]
            # readers take no lock: the report can be read meanwhile
            shown = cli(["ledger", "show", "--ledger", str(ledger), "--json"])
            assert shown.exit_code == 0 and json.loads(shown.stdout)[0]["status"] == "running"
            # retry and resolve want the lock too
            retried = cli(["retry", "--ledger", str(ledger), "--json"], base_url=server.url)
            assert retried.exit_code == 2 and "in use" in one_json(retried.stdout)["error"]
            out, err = first.communicate(timeout=120)
        finally:
            stop_process(first)
        assert first.returncode == 0, err
        result = one_json(out)
        assert result["chunks_accepted"] == result["chunks_total"]
        # the refused run sent nothing: every request belongs to the first run's chunks
        assert requests_total(server.stats()) == result["chunks_total"]
        assert requests_total(server.stats()) >= before
    assert _integrity(ledger) == "ok"
    runs = json.loads(cli(["ledger", "show", "--ledger", str(ledger), "--json"]).stdout)
    assert [r["status"] for r in runs] == ["finished"]
    # once free, the other file imports into the same ledger
    with emulator() as (server, _):
        later = cli(_args(other, mapping, ledger), base_url=server.url)
        assert later.exit_code == 0, later.stderr


def test_a_killed_runs_lock_is_released_and_the_next_run_resumes(tmp_path: Path) -> None:
    """kill -9 leaves the lock file behind, but not the lock: the next run takes it and resumes."""
    source, mapping = _files(tmp_path, 120, seed=33)
    ledger = tmp_path / "l.db"
    with emulator(latency_ms=(30, 50)) as (server, _):
        env = cli_env(server.url)
        args = _args(source, mapping, ledger, "--batch-size", "5", "--concurrency", "2")
        proc = start_cli(args, cwd=tmp_path, env=env)
        try:
            wait_for(
                lambda: count_status(ledger_chunks(ledger), "accepted") >= 2,
                timeout=60,
                what="accepted chunks",
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        assert Path(f"{ledger}.lock").exists()
        again = run_cli(args, cwd=tmp_path, env=env)
        assert again.returncode == 1, again.stderr  # in-flight $add chunks became ambiguous
        assert one_json(again.stdout)["chunks_skipped"] >= 2


# --- damaged and foreign ledgers -----------------------------------------------------------------


_TEMPLATE: dict[str, bytes] = {}


def _real_ledger(tmp_path: Path, *, journal: str = "WAL") -> Path:
    """A ledger holding one finished run (made by the CLI against the emulator, once).

    It is left as fyno-import leaves it (WAL mode, everything checkpointed into the one file),
    or, with ``journal="DELETE"``, as a copy made with `VACUUM INTO` or `.backup` would be.
    """
    ledger = tmp_path / "real.ledger.db"
    if journal not in _TEMPLATE:
        maker = tmp_path / "template"
        maker.mkdir()
        source, mapping = _files(maker, 400, seed=34, name="seed.csv")
        made = maker / "made.ledger.db"
        with emulator() as (server, _):
            result = cli(_args(source, mapping, made, "--batch-size", "3"), base_url=server.url)
            assert result.exit_code == 0, result.stderr
        with contextlib.closing(sqlite3.connect(made)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute(f"PRAGMA journal_mode = {journal}")
        _TEMPLATE[journal] = made.read_bytes()
    ledger.write_bytes(_TEMPLATE[journal])
    return ledger


def _damage(kind: str, ledger: Path, tmp_path: Path) -> None:
    """Damage a real ledger the way `kind` says (or replace it)."""
    data = ledger.read_bytes()
    if kind == "garbage":
        ledger.write_bytes(os.urandom(8192))
    elif kind == "text":
        ledger.write_text("run_id,status\nabc,finished\n", encoding="utf-8")
    elif kind == "truncated-header":
        ledger.write_bytes(data[:50])
    elif kind == "truncated-pages":
        ledger.write_bytes(data[: len(data) // 2])
    elif kind == "zeroed-pages":
        page = int.from_bytes(data[16:18], "big") or 65536
        damaged = bytearray(data)
        damaged[page : len(data)] = bytes(len(data) - page)  # every page after the first
        ledger.write_bytes(bytes(damaged))
    elif kind == "other-application":
        ledger.unlink()
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
            conn.execute("INSERT INTO notes VALUES ('mine')")
            conn.commit()
    elif kind == "newer-schema":
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            conn.execute("PRAGMA user_version = 99")
            conn.commit()
    elif kind == "missing-table":
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            conn.execute("DROP TABLE item_errors")
            conn.commit()
    else:
        raise AssertionError(kind)


DAMAGES = [
    "garbage",
    "text",
    "truncated-header",
    "truncated-pages",
    "zeroed-pages",
    "other-application",
    "newer-schema",
    "missing-table",
]


@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_or_foreign_ledger_is_exit_2_and_left_untouched(tmp_path: Path, kind: str) -> None:
    """run, retry and ledger show/export/resolve on a bad ledger: exit 2, file byte-identical."""
    ledger = _real_ledger(tmp_path)
    _damage(kind, ledger, tmp_path)
    before = hashlib.sha256(ledger.read_bytes()).hexdigest()
    source, mapping = _files(tmp_path, 30, seed=35)
    failures = tmp_path / "failures.csv"
    with emulator() as (server, _):
        results = {
            "run": cli(_args(source, mapping, ledger), base_url=server.url),
            "retry": cli(["retry", "--ledger", str(ledger), "--json"], base_url=server.url),
            "show": cli(["ledger", "show", "--ledger", str(ledger)]),
            "export": cli(
                ["ledger", "export", "--ledger", str(ledger), "--failures", str(failures)]
            ),
            "resolve": cli(
                [
                    "ledger",
                    "resolve",
                    "--ledger",
                    str(ledger),
                    "--run",
                    "r",
                    "--chunk",
                    "c",
                    "--as",
                    "abandoned",
                ]
            ),
        }
        assert requests_total(server.stats()) == 0
    for command, result in results.items():
        assert result.exit_code == 2, (command, result.stdout, result.stderr)
        assert str(ledger) in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
    message = one_json(results["run"].stdout)["error"]
    if kind == "newer-schema":
        assert "newer fyno-import" in message and "upgrade" in message
    elif kind in ("truncated-pages", "zeroed-pages"):
        assert "malformed" in message  # found by SQLite only once a damaged page is read
    else:
        assert "not a usable fyno-import ledger" in message and "never overwrites" in message
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == before
    assert not Path(f"{ledger}-wal").exists() or Path(f"{ledger}-wal").stat().st_size == 0


def test_damaged_ledger_in_rollback_journal_mode_is_left_untouched(tmp_path: Path) -> None:
    """A damaged ledger copied in rollback-journal mode (VACUUM INTO, .backup) is not written."""
    ledger = _real_ledger(tmp_path, journal="DELETE")
    _damage("zeroed-pages", ledger, tmp_path)
    before = ledger.read_bytes()
    source, mapping = _files(tmp_path, 30, seed=35)
    result = cli(_args(source, mapping, ledger), base_url="http://127.0.0.1:9")
    assert result.exit_code == 2
    assert ledger.read_bytes() == before


def test_a_directory_as_ledger_is_exit_2(tmp_path: Path) -> None:
    """--ledger naming a directory is a clear error, not a traceback."""
    source, mapping = _files(tmp_path, 10, seed=36)
    (tmp_path / "dir.db").mkdir()
    result = cli(_args(source, mapping, tmp_path / "dir.db"), base_url="http://127.0.0.1:9")
    assert result.exit_code == 2 and "directory" in one_json(result.stdout)["error"]


# --- the disk fills up ---------------------------------------------------------------------------


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_ledger_that_cannot_be_written_stops_the_run_with_exit_3_and_no_unrecorded_request(
    tmp_path: Path,
) -> None:
    """A ledger write fails mid-run: exit 3, and every request the API saw has its record."""
    rows = make_rows(1500, profiles=300, seed=37, single_item=True)
    source = write_csv(tmp_path / "users.csv", rows)
    mapping = write_mapping(tmp_path / "mapping.yaml")
    ledger = tmp_path / "l.db"
    args = _args(source, mapping, ledger, "--batch-size", "4", "--concurrency", "4")
    with emulator(latency_ms=(1, 5), log=True, keep_bodies=True) as (server, arrivals):
        assert arrivals is not None
        env = cli_env(server.url)
        proc = start_cli(args, cwd=tmp_path, env=env, preexec_fn=_limit_file_size(400_000))
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            stop_process(proc)
        summary = one_json(out)
        assert proc.returncode == summary["exit_code"] == 3, err
        assert "could not write" in summary["error"] and str(ledger) in summary["error"]
        assert "Traceback" not in err
        assert 0 < summary["chunks_accepted"] < summary["chunks_total"], "it should fail mid-run"
        wait_for(lambda: arrivals.in_flight == 0, timeout=10, what="the emulator to go idle")
        received = list(arrivals.bodies)

        chunks = ledger_chunks(ledger)
        recorded = [c.distinct_ids for c in chunks]
        for body in received:
            ids = [item["distinct_id"] for item in json.loads(body)["batch"]]
            assert ids in recorded, "the API received a chunk the ledger has no record of"

        # with room again, the same command finishes the import, and every update landed once
        again = run_cli(args, cwd=tmp_path, env=env)
        resumed = one_json(again.stdout)
        assert again.returncode in (0, 1), again.stderr
        assert resumed["run_id"] == summary["run_id"] and resumed["chunks_skipped"] > 0
        final = ledger_chunks(ledger)
        assert {c.status for c in final} <= {"accepted", "ambiguous"}
        actual = emulator_profiles(server, sorted({r["user_id"] for r in rows}))
        unknown = {c.chunk_id for c in final if c.status == "ambiguous"}
        explain_state(rows, final, actual, unknown)
    assert _integrity(ledger) == "ok"
