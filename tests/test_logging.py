"""`--log-format json` and `--quiet` for schedulers: what reaches stderr, line by line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import MAPPINGS, SAMPLE_DATA, write

from importer.cli import main
from importer.emulator import EmulatorConfig, EmulatorServer

MAPPING = MAPPINGS / "nightly_export.yaml"
KEY = 'k3y-"with\\quotes-and-backslash'  # escaped differently inside JSON: must vanish too


def invoke(*args: str | Path) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def events(result: Result) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object (each line must be one)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def kinds(lines: list[dict[str, Any]]) -> list[str]:
    """The event names, in order."""
    return [line["event"] for line in lines]


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """Three valid rows for the nightly mapping."""
    return write(
        tmp_path / "users.csv",
        """
        user_id,email,first_name,plan,country,marketing_opt_in,signup_at,lifetime_value,phone
        u-1,a@x.io,A,pro,FR,yes,2024-01-01T00:00:00Z,1.5,+33
        u-2,b@x.io,B,free,DE,no,2024-01-02T00:00:00Z,2,
        u-3,c@x.io,C,free,SG,y,2024-01-03T00:00:00Z,0,
        """,
    )


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An API key file (with characters JSON escapes) and a workspace in the environment."""
    path = tmp_path / "key"
    path.write_text(KEY + "\n", encoding="utf-8")
    monkeypatch.setenv("FYNO_WORKSPACE_ID", "ws")
    monkeypatch.delenv("FYNO_API_KEY", raising=False)
    return path


@pytest.fixture
def failing_emulator() -> Iterator[EmulatorServer]:
    """An emulator that answers every request 503."""
    with EmulatorServer(EmulatorConfig(port=0, fail_rate=1.0, seed=1)) as server:
        yield server


def test_a_run_logs_one_json_object_per_line_and_no_human_summary(tmp_path: Path) -> None:
    """With --log-format json, stderr holds only JSON lines: phases, run_started and, last,
    run_finished carrying the same run_id and counts as the --json summary."""
    result = invoke(
        "run",
        SAMPLE_DATA / "users.csv",
        "-m",
        MAPPING,
        "--emulator",
        "--log-format",
        "json",
        "--json",
        "--ledger",
        tmp_path / "l.db",
        "--rejects",
        tmp_path / "r.csv",
    )
    assert result.exit_code == 1  # the sample data has deliberately bad rows
    lines = events(result)
    summary = json.loads(result.stdout)
    assert kinds(lines)[0] == "phase" and kinds(lines)[-1] == "run_finished"
    assert "run_started" in kinds(lines)
    started = lines[kinds(lines).index("run_started")]
    finished = lines[-1]
    assert started["run_id"] == finished["run_id"] == summary["run_id"]
    assert finished["level"] == "warning" and finished["exit_code"] == 1
    for count in ("rows_read", "rows_rejected", "items_sent", "chunks_accepted", "retries"):
        assert finished[count] == summary[count]
    assert all({"ts", "level", "event", "command"} <= set(line) for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines)
    assert "rows read" not in result.stderr and "━" not in result.stderr


def test_failed_chunks_and_retries_are_logged_without_the_key(
    tmp_path: Path, small_csv: Path, key_file: Path, failing_emulator: EmulatorServer
) -> None:
    """Against a server answering 503, each resend is a `retry` line and each chunk that ran out
    of retries a `chunk_settled` warning; the API key appears nowhere."""
    result = invoke(
        "run",
        small_csv,
        "-m",
        MAPPING,
        "--base-url",
        failing_emulator.url,
        "--api-key-file",
        key_file,
        "--max-retries",
        "1",
        "--log-format",
        "json",
        "--ledger",
        tmp_path / "l.db",
        "--rejects",
        tmp_path / "r.csv",
    )
    assert result.exit_code == 1, result.stderr
    lines = events(result)
    settled = [line for line in lines if line["event"] == "chunk_settled"]
    assert settled and all(line["status"] == "failed" for line in settled)
    assert all(line["http_status"] == 503 and line["level"] == "warning" for line in settled)
    run_id = lines[-1]["run_id"]
    assert all(line["run_id"] == run_id for line in settled)
    assert kinds(lines).count("retry") == len(settled)  # one resend each, then give up
    assert lines[-1]["chunks_failed"] == len(settled)
    for text in (KEY, json.dumps(KEY)[1:-1], "k3y"):
        assert text not in result.stderr + result.stdout


def test_retry_logs_its_start_and_finish(tmp_path: Path, small_csv: Path, key_file: Path) -> None:
    """`retry --log-format json` names the run it resends and ends with run_finished."""
    ledger = tmp_path / "l.db"
    with EmulatorServer(EmulatorConfig(port=0, fail_rate=1.0)) as server:
        first = invoke(
            "run",
            small_csv,
            "-m",
            MAPPING,
            "--base-url",
            server.url,
            "--api-key-file",
            key_file,
            "--max-retries",
            "0",
            "--ledger",
            ledger,
            "--rejects",
            tmp_path / "r.csv",
            "--log-format",
            "json",
        )
        run_id = events(first)[-1]["run_id"]
        port = server.url.rsplit(":", 1)[1]
    assert first.exit_code == 1
    with EmulatorServer(EmulatorConfig(port=int(port))):  # the same URL, healthy now
        result = invoke(
            "retry", "--ledger", ledger, "--api-key-file", key_file, "--log-format", "json"
        )
    assert result.exit_code == 0, result.stderr
    lines = events(result)
    assert kinds(lines)[0] == "retry_started" and kinds(lines)[-1] == "run_finished"
    assert lines[0]["run_id"] == lines[-1]["run_id"] == run_id
    assert lines[-1]["command"] == "retry" and lines[-1]["chunks_accepted"] >= 1
    assert KEY not in result.stderr


def test_a_skipped_source_and_the_refusal_are_logged(tmp_path: Path, small_csv: Path) -> None:
    """A second run of an imported source logs source_skipped, then run_finished at level
    error with exit code 2 and the reason."""
    options = ("-m", MAPPING, "--emulator", "--ledger", tmp_path / "l.db", "--log-format", "json")
    assert invoke("run", small_csv, *options).exit_code == 0
    result = invoke("run", small_csv, *options)
    assert result.exit_code == 2
    lines = events(result)
    skipped = next(line for line in lines if line["event"] == "source_skipped")
    assert skipped["source"] == str(small_csv) and skipped["imported_by"]
    assert lines[-1]["level"] == "error" and "already imported" in lines[-1]["error"]


def test_quiet_json_logs_keep_only_warnings_and_the_finish(tmp_path: Path) -> None:
    """With --quiet, informational lines (phases, notices) are dropped; run_finished stays."""
    data = tmp_path / "export"
    data.mkdir()
    (data / "users.csv").write_bytes((SAMPLE_DATA / "users.csv").read_bytes())
    (data / "_SUCCESS").write_text("")
    result = invoke(
        "validate",
        data,
        "-m",
        MAPPING,
        "--log-format",
        "json",
        "--quiet",
        "--rejects",
        tmp_path / "r.csv",
    )
    assert result.exit_code == 1
    lines = events(result)
    assert kinds(lines) == ["run_finished"]
    assert lines[0]["command"] == "validate" and lines[0]["rows_rejected"] > 0
    verbose = invoke(
        "validate", data, "-m", MAPPING, "--log-format", "json", "--rejects", tmp_path / "r.csv"
    )
    notices = [line for line in events(verbose) if line["event"] == "notice"]
    assert any("_SUCCESS" in line["message"] for line in notices)


def test_quiet_text_output_is_only_the_error(tmp_path: Path) -> None:
    """--quiet prints no summary and no notices; an error still gets its one line."""
    rejects = tmp_path / "r.csv"
    result = invoke(
        "validate", SAMPLE_DATA / "users.csv", "-m", MAPPING, "-q", "--rejects", rejects
    )
    assert result.exit_code == 1 and result.stderr == "" and result.stdout == ""
    result = invoke("validate", tmp_path / "none.csv", "-m", MAPPING, "-q", "--rejects", rejects)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "none.csv" in result.stderr
    assert "rows read" not in result.stderr


def test_version_and_shell_completion() -> None:
    """--version prints the version; click's completion hook prints a bash script."""
    from importer import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"fyno-import, version {__version__}"
    completion = CliRunner().invoke(
        main, [], prog_name="fyno-import", env={"_FYNO_IMPORT_COMPLETE": "bash_source"}
    )
    assert completion.exit_code == 0
    assert "_fyno_import_completion" in completion.stdout and "complete " in completion.stdout
    words = CliRunner().invoke(
        main,
        [],
        prog_name="fyno-import",
        env={
            "_FYNO_IMPORT_COMPLETE": "bash_complete",
            "COMP_WORDS": "fyno-import le",
            "COMP_CWORD": "1",
        },
    )
    assert "ledger" in words.stdout
