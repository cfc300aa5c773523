"""The examples of docs/ledger.md ("What `ledger show` prints"), made by real runs.

    python tools/ledger_docs.py docs/ledger.md      # rewrite the generated block (make docs)

Each example is what `fyno-import ledger show` prints for a ledger that real commands wrote:
`run` and `retry` against the built-in emulator, with seeded faults and one request at a time so
that the same faults meet the same chunks every time. Only what would change from one
regeneration to the next is then set to fixed values in the ledger: the run ids and times (a
run of a night, its retry the next morning, …), the emulator's port, and the moment "how long
ago" is counted from. tests/test_cli_docs.py builds the examples again and compares.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from importer.cli import ledger_cmds, main
from importer.emulator import EmulatorConfig, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
BEGIN_MARK = "<!-- BEGIN GENERATED: python tools/ledger_docs.py docs/ledger.md -->"
END_MARK = "<!-- END GENERATED -->"
LEDGER = "fyno-import.ledger.db"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SHOWN_URL = "http://127.0.0.1:8080"  # where `fyno-import emulator` listens by default
SMALL = ("--batch-size", "250")  # more chunks, for more of them to meet a fault
ENV = {"FYNO_API_KEY": "docs-key", "FYNO_WORKSPACE_ID": "ws-docs", "FYNO_BASE_URL": None}


@dataclass(frozen=True)
class Moment:
    """When a run (or retry) of an example started and ended, and its run id's suffix."""

    start: str  # ISO 8601 UTC, seconds
    end: str | None
    suffix: str = ""


# The examples' story: the nightly run met an outage, its retry landed it the next morning; the
# next night went well; a migration run met dropped connections. Another ledger: a run stopped.
NIGHTLY_RUNS = (
    Moment("2026-11-29T23:45:00", "2026-11-29T23:45:12.4", "a1b2c3"),
    Moment("2026-11-30T23:45:00", "2026-11-30T23:45:09.8", "d4e5f6"),
    Moment("2026-12-01T07:30:00", "2026-12-01T07:30:14.2", "0c9d8e"),
)
NIGHTLY_RETRIES = (Moment("2026-11-30T08:10:00", "2026-11-30T08:10:03.1"),)
STOPPED_RUNS = (Moment("2026-12-01T08:15:00", "2026-12-01T08:15:04.6", "5e6f70"),)


def _stamp(moment: str) -> str:
    whole, _, fraction = moment.partition(".")
    return f"{whole}.{fraction.ljust(6, '0')}Z"


def _run_id(moment: Moment) -> str:
    day, time = moment.start.split("T")
    return f"{day.replace('-', '')}T{time.replace(':', '')}Z-{moment.suffix}"


def normalise(
    ledger: Path,
    runs: Sequence[Moment],
    retries: Sequence[Moment] = (),
    *,
    url: str | None = SHOWN_URL,
) -> None:
    """Give the ledger's runs and retries, in the order they were made, the story's ids and
    times, and the runs the base URL ``url`` (None: keep theirs)."""
    with contextlib.closing(sqlite3.connect(ledger)) as conn, conn:
        ids = [r for (r,) in conn.execute("SELECT run_id FROM runs ORDER BY rowid")]
        for old, moment in zip(ids, runs, strict=False):
            new, end = _run_id(moment), None if moment.end is None else _stamp(moment.end)
            for table in ("run_sources", "chunks", "item_errors", "retries"):
                conn.execute(f"UPDATE {table} SET run_id = ? WHERE run_id = ?", (new, old))
            conn.execute(
                "UPDATE runs SET run_id = ?, created_at = ?, updated_at = coalesce(?, updated_at),"
                " finished_at = CASE WHEN finished_at IS NULL THEN NULL ELSE ? END,"
                " base_url = coalesce(?, base_url) WHERE run_id = ?",
                (new, _stamp(moment.start), end, end, url, old),
            )
            _fix_summaries(conn, "runs", "run_id", new)
            _fix_summaries(conn, "retries", "run_id", new)
        retry_ids = [r for (r,) in conn.execute("SELECT retry_id FROM retries ORDER BY retry_id")]
        for retry_id, moment in zip(retry_ids, retries, strict=False):
            end = None if moment.end is None else _stamp(moment.end)
            conn.execute(
                "UPDATE retries SET started_at = ?, ended_at = ? WHERE retry_id = ?",
                (_stamp(moment.start), end, retry_id),
            )


def _fix_summaries(conn: sqlite3.Connection, table: str, key: str, run_id: str) -> None:
    """The run id inside the stored summaries of the run, and no real time in them."""
    rows = conn.execute(f"SELECT rowid, summary FROM {table} WHERE {key} = ?", (run_id,))
    for rowid, text in rows.fetchall():
        if text is not None:
            summary = orjson.loads(text) | {"run_id": run_id, "elapsed_s": 0.0}
            conn.execute(
                f"UPDATE {table} SET summary = ? WHERE rowid = ?",
                (orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode(), rowid),
            )


@contextlib.contextmanager
def copy_of_the_ledger(directory: str) -> Iterator[Path]:
    """The ledger as it is now, copied into ``directory``, as the current directory."""
    target = Path(directory).resolve()
    target.mkdir()
    with (
        contextlib.closing(sqlite3.connect(LEDGER)) as source,
        contextlib.closing(sqlite3.connect(target / LEDGER)) as copy,
    ):
        source.backup(copy)
    before = Path.cwd()
    os.chdir(target)
    try:
        yield target / LEDGER
    finally:
        os.chdir(before)


def cli(*args: str) -> tuple[int, str]:
    """Run fyno-import in this process; its exit code and what it printed on stdout."""
    result = CliRunner().invoke(main, list(args), env=ENV, catch_exceptions=False)
    return result.exit_code, result.stdout


def show(*args: str) -> str:
    """What `ledger show ARGS` prints, "how long ago" counted from NOW."""
    saved = ledger_cmds.utc_now
    ledger_cmds.utc_now = lambda: NOW
    try:
        code, out = cli("ledger", "show", "--ledger", LEDGER, *args)
    finally:
        ledger_cmds.utc_now = saved
    assert code == 0, out
    return out


@contextlib.contextmanager
def working_in(directory: Path) -> Iterator[None]:
    """A directory holding the sample data and mappings, as the current directory."""
    directory.mkdir()
    for name in ("sample_data", "mappings"):
        shutil.copytree(ROOT / name, directory / name)
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def _run(url: str, source: str, mapping: str, *extra: str) -> int:
    code, _ = cli(
        "run", source, "-m", f"mappings/{mapping}", "--ledger", LEDGER, "--base-url", url,
        "--concurrency", "1", *extra,
    )  # fmt: skip
    return code


def nightly(examples: dict[str, str]) -> None:
    """Three runs and a retry in one ledger: failures, the retry, a clean run, ambiguous chunks."""
    with EmulatorServer(EmulatorConfig(port=0, fail_rate=0.4, seed=3)) as outage:
        url = outage.url
        assert _run(url, "sample_data/users.csv", "nightly_export.yaml", "--max-retries", "0") == 1
    with copy_of_the_ledger("before-retry") as before:
        normalise(before, NIGHTLY_RUNS[:1])
        first = _run_id(NIGHTLY_RUNS[0])
        examples["failures"] = show("--run", first)
        examples["failures-markdown"] = show("--run", first, "--format", "markdown")
    with EmulatorServer(EmulatorConfig(port=int(url.rsplit(":", 1)[1]))) as healthy:
        assert cli("retry", "--ledger", LEDGER)[0] == 0
        assert _run(healthy.url, "sample_data/users.parquet", "nightly_export.yaml") == 1
    with EmulatorServer(EmulatorConfig(port=0, drop_rate=0.3, seed=5)) as flaky:
        code = _run(flaky.url, "sample_data/users.csv", "migration.yaml", "--force", *SMALL)
        assert code == 1
    normalise(Path(LEDGER), NIGHTLY_RUNS, NIGHTLY_RETRIES)
    examples["history"] = show()
    examples["retried"] = show("--run", _run_id(NIGHTLY_RUNS[0]))
    examples["clean"] = show("--run", _run_id(NIGHTLY_RUNS[1]))
    examples["ambiguous"] = show("--run", _run_id(NIGHTLY_RUNS[2]))


class _StopAt:
    """ASGI wrapper: on the n-th write request, SIGTERM to this process, as a scheduler would."""

    def __init__(self, app: Any, n: int) -> None:
        self.app, self.n, self.seen = app, n, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass every request on; the n-th only after the signal was handled."""
        if scope["type"] == "http" and scope["method"] == "POST":
            self.seen += 1
            if self.seen == self.n:
                import asyncio

                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.3)  # the run stops starting requests meanwhile
        await self.app(scope, receive, send)


def stopped(examples: dict[str, str]) -> None:
    """A run stopped by SIGTERM part-way: interrupted, resumed by running it again."""
    server = EmulatorServer(EmulatorConfig(port=0))
    server.app = _StopAt(server.app, 3)
    with server:
        assert _run(server.url, "sample_data/users.csv", "nightly_export.yaml") == 3
    normalise(Path(LEDGER), STOPPED_RUNS)
    examples["interrupted"] = show()


def empty(examples: dict[str, str]) -> None:
    """A ledger without runs: `run` opened it, then stopped before sending (too many rejects)."""
    code = _run("http://127.0.0.1:9", "sample_data/users.csv", "nightly_export.yaml",
                "--max-reject-rate", "0")  # fmt: skip
    assert code == 3
    examples["empty"] = show()


def build_examples() -> dict[str, str]:
    """Every example's text, by name, from ledgers built in a temporary directory."""
    examples: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fyno-import-ledger-docs-") as scratch:
        for name, build in (("nightly", nightly), ("stopped", stopped), ("empty", empty)):
            with working_in(Path(scratch) / name):
                build(examples)
    return examples


# (example, the command that printed it, what it shows), in the page's order
SECTIONS = (
    (
        "history",
        "fyno-import ledger show",
        "**The history** of a ledger with three runs, one of them retried: a line per run and"
        " per retry, newest first. A run's line counts its chunks as they are now, so the first"
        " run's line counts the chunks its retry landed; the retry's line counts what it sent.",
    ),
    (
        "failures",
        "fyno-import ledger show --run 20261129T234500Z-a1b2c3",
        "**A run with failures**, the morning after: an outage answered 503 to half its"
        " requests, and it was run with `--max-retries 0`. The failures are grouped by cause"
        " with their first rows, and the report ends with the command to run next.",
    ),
    (
        "retried",
        "fyno-import ledger show --run 20261129T234500Z-a1b2c3",
        "**The same run after `retry`**: its counts (and its stored summary) now include what"
        " the retry landed, and the retry is listed.",
    ),
    (
        "clean",
        "fyno-import ledger show --run 20261130T234500Z-d4e5f6",
        "**A clean run**: every chunk accepted, nothing to do (its rejected rows are in the"
        " rejects file of that run).",
    ),
    (
        "ambiguous",
        "fyno-import ledger show --run 20261201T073000Z-0c9d8e",
        "**A run with ambiguous chunks**: connections dropped after the requests of chunks"
        " carrying `$add` were sent. Each chunk comes with the command that closes it once a"
        " person has checked it in Fyno (`--chunk` takes the 12 characters shown).",
    ),
    (
        "interrupted",
        "fyno-import ledger show",
        "**An interrupted run**, in a ledger of its own (a ledger of one run shows that run's"
        " report without `--run`): stopped by SIGTERM part-way. A run killed with `kill -9`"
        " reads the same once no process holds the ledger's lock.",
    ),
    (
        "empty",
        "fyno-import ledger show",
        "**A ledger without runs**: `run` created it, then stopped before sending (here: more"
        " rejected rows than `--max-reject-rate`). A missing ledger is an error (exit 2).",
    ),
    (
        "failures-markdown",
        "fyno-import ledger show --run 20261129T234500Z-a1b2c3 --format markdown",
        "**The report as Markdown**, for a ticket: the run with failures above.",
    ),
)


def generated_block(examples: dict[str, str]) -> str:
    """The generated part of docs/ledger.md: each example with its command and a sentence."""
    out = [BEGIN_MARK, ""]
    for name, command, text in SECTIONS:
        fence = "markdown" if name.endswith("-markdown") else "text"
        out += [textwrap.fill(text, 100, break_on_hyphens=False, break_long_words=False), ""]
        out += [f"```{fence}", f"$ {command}", examples[name].rstrip("\n"), "```", ""]
    return "\n".join([*out, END_MARK])


def update(path: Path) -> bool:
    """Rewrite the generated block of ``path`` with freshly built examples; True if it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN_MARK), text.index(END_MARK) + len(END_MARK)
    new = text[:start] + generated_block(build_examples()) + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        update(Path(argument).resolve())
