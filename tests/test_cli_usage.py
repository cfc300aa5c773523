"""Usage errors of every command, and the cost of starting the command line.

Every bad option value, missing credential or impossible combination is exit 2 with one clear
``error:`` line (and, with ``--json``, the summary object on stdout), never a traceback and never
a table of zeros; ``--version`` and ``--help`` load none of the heavy libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import MAPPINGS, SAMPLE_DATA

from importer.cli import main

USERS = str(SAMPLE_DATA / "users.csv")
MAPPING = str(MAPPINGS / "nightly_export.yaml")
HEAVY = ("polars", "httpx", "pydantic", "rich", "pyarrow", "uvicorn")


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    base = {"FYNO_API_KEY": "", "FYNO_WORKSPACE_ID": "", "FYNO_BASE_URL": "", "FYNO_VERSION": ""}
    result = CliRunner().invoke(main, list(args), env={**base, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


KEYED = {"FYNO_API_KEY": "sk-test-usage-0123456789", "FYNO_WORKSPACE_ID": "ws"}

USAGE_ERRORS = [
    (("retry", "--concurrency", "0"), KEYED, "--concurrency 0"),
    (("retry", "--timeout", "0"), KEYED, "--timeout 0"),
    (("retry", "--rate-limit", "-1"), KEYED, "--rate-limit -1"),
    (("retry", "--max-retries", "-2"), KEYED, "--max-retries -2"),
    (("retry",), {}, "no API key"),
    (("run", USERS, "-m", MAPPING, "--emulator", "--concurrency", "0"), {}, "--concurrency 0"),
    (("run", USERS, "-m", MAPPING, "--emulator", "--batch-size", "0"), {}, "--batch-size 0"),
    (("run", USERS, "-m", MAPPING, "--dry-run", "--max-batch-bytes", "10"), {}, "--max-batch"),
    (("run", USERS, "-m", MAPPING, "--dry-run", "--max-reject-rate", "2"), {}, "--max-reject"),
    (("run", USERS, "-m", MAPPING, "--dry-run", "--shard", "3/2"), {}, "--shard"),
    (("run", USERS, "-m", MAPPING, "--dry-run", "--shard", "x"), {}, "--shard"),
    (("run", USERS, "-m", MAPPING), {}, "no API key"),
    (("run", USERS, "-m", MAPPING), {"FYNO_API_KEY": "sk-test-usage-0123456789"}, "workspace"),
    (("run", USERS, "-m", MAPPING, "--base-url", "http://10.1.2.3"), KEYED, "plain http://"),
    (("run", USERS, "-m", MAPPING, "--api-version", "prod"), KEYED, "'prod'"),
    (("run", USERS, "-m", "no-such-mapping.yaml", "--dry-run"), {}, "no such mapping file"),
    (("validate", "no-such.csv", "-m", MAPPING), {}, "no such file"),
]


@pytest.mark.parametrize(("args", "env", "words"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    """A bad option value or missing credential: exit 2, one `error:` line naming the problem,
    no traceback and no summary table of zeros."""
    code, _, stderr = invoke(*args, env=env)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], stderr
    assert "rows read" not in stderr and "chunks" not in stderr


@pytest.mark.parametrize(("args", "env", "words"), USAGE_ERRORS[:6])
def test_a_usage_error_still_prints_the_json_summary(
    args: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    """With --json a usage error still prints exactly one JSON object, with exit code 2."""
    code, stdout, _ = invoke(*args, "--json", env=env)
    assert code == 2
    summary = json.loads(stdout)
    assert summary["exit_code"] == 2 and words in summary["error"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("emulator", "--port", "99999"), "--port"),
        (("emulator", "--fail-rate", "2"), "--fail-rate"),
        (("emulator", "--drop-rate", "-0.5"), "--drop-rate"),
        (("emulator", "--rate-limit", "-1"), "--rate-limit"),
        (("emulator", "--latency-ms", "abc"), "latency"),
        (("emulator", "--latency-ms", "80-10"), "latency"),
        (("emulator", "--sink", "--db", "x.db"), "sink"),
        (("mapping", "init", "no-such.csv"), "no such file"),
        (("mapping", "check", "no-such.yaml"), "no such mapping file"),
        (("ledger", "show", "--ledger", "no-such.db"), "no ledger"),
        (("ledger", "export", "--ledger", "no-such.db", "--failures", "f.csv"), "no ledger"),
    ],
)
def test_other_commands_refuse_bad_values_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], words: str
) -> None:
    """The emulator, mapping and ledger commands: a bad value is exit 2 and one error line."""
    monkeypatch.chdir(tmp_path)
    code, _, stderr = invoke(*args)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], stderr


def test_an_option_click_refuses_is_a_usage_error() -> None:
    """`preview -n 0` is refused by click itself: exit 2, its usage line, no traceback."""
    code, _, stderr = invoke("preview", USERS, "-m", MAPPING, "-n", "0")
    assert code == 2 and "Traceback" not in stderr and "-n" in stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["validate", "--help"],
        ["retry", "--help"],
        ["ledger", "show", "--help"],
        ["emulator", "--help"],
        ["mapping", "init", "--help"],
    ],
)
def test_version_and_help_import_no_heavy_library(argv: list[str]) -> None:
    """--version and every --help answer without importing polars, httpx, pydantic or rich,
    which is what made them take half a second."""
    code = (
        "import sys\n"
        "from importer.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


@pytest.mark.parametrize("command", ["validate", "preview", "run --dry-run"])
def test_commands_that_never_send_load_no_http_or_arrow_library(
    command: str, tmp_path: Path
) -> None:
    """validate, preview and a dry run import neither httpx (they send nothing) nor pyarrow
    (polars reads and writes alone): each costs start-up time and tens of MB."""
    argv = [*command.split(), USERS, "-m", MAPPING]  # rejects go to tmp_path (the cwd)
    code = (
        "import sys\n"
        "from importer.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print([m for m in ('httpx', 'httpcore', 'pyarrow') if m in sys.modules])\n"
    )
    env = {**os.environ, "FYNO_API_KEY": "k" * 16, "FYNO_WORKSPACE_ID": "ws"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    *_, exit_line, loaded = result.stdout.strip().splitlines()
    assert exit_line in ("exit 0", "exit 1"), result.stdout + result.stderr  # 1: sample rejects
    assert loaded == "[]", result.stdout
