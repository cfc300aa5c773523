# ruff: noqa: E501 -- the expected outputs are what a terminal shows: wide tables, whole commands
"""`fyno-import ledger show` as a person reads it: the history, a run's report, Markdown, JSON,
and the hint each command ends with. Outputs are compared whole: run ids and times are set to
fixed values in the ledger (tools/ledger_docs.py's ``normalise``), and "how long ago" is counted
from a fixed moment."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from e2e_helpers import API_KEY, cli, emulator, port_of
from helpers import ledger_docs
from test_ledger import ACCEPTED, make_chunk, new_run, sent
from test_ledger_history import DROPPED, REFUSED, failed_after, summary_of

from importer.cli import ledger_cmds, main
from importer.ledger import Ledger
from importer.model import RunStatus

DOCS = ledger_docs()
Moment = DOCS.Moment
LEDGER = "fyno-import.ledger.db"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
AMBIGUOUS_ID = "3f2a9c1b7d4e5f60718293a4b5c6d7e8"


@pytest.fixture(autouse=True)
def _fixed_now_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ledgers and rejects in the test's directory; "ago" counted from NOW."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ledger_cmds, "utc_now", lambda: NOW)


def show(*args: str) -> Result:
    """`fyno-import ledger show --ledger fyno-import.ledger.db ARGS`, in-process."""
    return CliRunner().invoke(main, ["ledger", "show", "--ledger", LEDGER, *args])


def shown(*args: str) -> str:
    """What `ledger show ARGS` prints on stdout; it must exit 0."""
    result = show(*args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def normalise(runs: list[Any], retries: tuple[Any, ...] = ()) -> None:
    """The story's run ids and times in the test's ledger; base URLs left as they are."""
    DOCS.normalise(Path(LEDGER), runs, retries, url=None)


# -- ledgers, built as the commands would leave them ---------------------------------------------


def clean_run(led: Ledger) -> str:
    """A finished run whose two chunks were accepted."""
    run = new_run(led)
    sent(led, run, make_chunk(seq=0), ACCEPTED)
    sent(led, run, make_chunk(distinct_ids=["u4", "u5", "u6"], rows=[4, 5, 6], seq=1), ACCEPTED)
    led.set_source_counts(run, 0, rows_read=6, rows_rejected=0, first_chunk=0, last_chunk=1)
    summary = summary_of(run, chunks_accepted=2, chunks_failed=0, exit_code=0, items_sent=6)
    led.mark_run(run, RunStatus.FINISHED, summary)
    return run


def run_with_ambiguous_chunk(led: Ledger) -> str:
    """A finished run: one chunk accepted, one $add chunk whose answer never came."""
    run = new_run(led, source_key="migration")
    sent(led, run, make_chunk(seq=0, has_add=True), ACCEPTED)
    dropped = make_chunk(
        chunk_id=AMBIGUOUS_ID, distinct_ids=["u4", "u5"], rows=[4, 5], seq=1, has_add=True
    )
    sent(led, run, dropped, DROPPED)
    led.set_source_counts(run, 0, rows_read=5, rows_rejected=0, first_chunk=0, last_chunk=1)
    summary = summary_of(run, chunks_failed=0, chunks_ambiguous=1, chunks_total=2)
    led.mark_run(run, RunStatus.FINISHED, summary)
    return run


def killed_run(led: Ledger) -> str:
    """A run killed with -9 while sending: one chunk accepted, one still in flight."""
    run = new_run(led)
    sent(led, run, make_chunk(seq=0), ACCEPTED)
    led.record_in_flight(run, make_chunk(distinct_ids=["u4"], rows=[4], seq=1))
    return run


def run_with_refusals(led: Ledger) -> str:
    """A finished run: a chunk failed on 503s, one refused with a 400, one accepted."""
    run = new_run(led, source_key="refusals")
    sent(led, run, make_chunk(seq=0), failed_after(7))
    sent(led, run, make_chunk(distinct_ids=["", "u5"], rows=[4, 5], seq=1), REFUSED)
    sent(led, run, make_chunk(distinct_ids=["u6"], rows=[6], seq=2), ACCEPTED)
    led.set_source_counts(run, 0, rows_read=6, rows_rejected=0, first_chunk=0, last_chunk=2)
    summary = summary_of(run, chunks_accepted=1, chunks_failed=2, chunks_refused=1)
    led.mark_run(run, RunStatus.FINISHED, summary)
    return run


def build(*makers: Callable[[Ledger], str]) -> list[str]:
    """A ledger holding the runs these functions make, in order; their ids."""
    with Ledger.open(Path(LEDGER)) as led:
        return [make(led) for make in makers]


# -- the report of one run -----------------------------------------------------------------------


def test_a_clean_run_reports_every_chunk_accepted_and_no_next_step() -> None:
    """A ledger of one clean run: `ledger show` prints its report, which suggests nothing."""
    build(clean_run)
    normalise([Moment("2026-11-30T23:45:00", "2026-11-30T23:45:07.5", "a1b2c3")])
    assert shown() == CLEAN


CLEAN = """\
Run 20261130T234500Z-a1b2c3
  status    finished, all 2 chunks accepted
  started   2026-11-30 23:45:00 UTC (9 h ago), took 7.5 s
  target    https://api.fyno.io, workspace WS1, version live
  settings  batch size 500, concurrency 8

Sources
  source  rows read  rejected  chunks accepted  imported
  s0.csv          6         0           2 of 2  yes

Chunks
  status    chunks
  accepted       2
  6 items in 2 chunks, 2 requests
"""


def changed_only_run(led: Ledger) -> str:
    """A finished changed-only night: one chunk of the changed profiles, accepted."""
    run = led.create_run(
        source_key="nightly",
        mapping_hash="mh",
        chunk_key="ck",
        shard=None,
        settings={"batch_size": 500, "concurrency": 8, "changed_only": True, "state": "st"},
        base_url="https://api.fyno.io",
        workspace="WS1",
        api_version="live",
        sources=[("s0.csv", "fp0")],
    )
    sent(led, run, make_chunk(seq=0), ACCEPTED)
    led.set_source_counts(run, 0, rows_read=6, rows_rejected=0, first_chunk=0, last_chunk=0)
    sync = {"rows_unchanged": 3, "profiles_changed": 3, "state": "st", "state_advanced": True}
    summary = summary_of(run, chunks_total=1, chunks_accepted=1, chunks_failed=0, **sync)
    led.mark_run(run, RunStatus.FINISHED, summary | {"exit_code": 0})
    return run


def test_a_changed_only_run_says_what_changed_and_that_its_state_advanced() -> None:
    """The report of a changed-only night counts the changed profiles and unchanged rows, and
    says whether the state was advanced and where it is."""
    build(changed_only_run)
    normalise([Moment("2026-11-30T23:45:00", "2026-11-30T23:45:07.5", "a1b2c3")])
    report = shown()
    assert report.startswith("Changed-only run 20261130T234500Z-a1b2c3\n")
    assert "\n  sync      3 profiles changed, 3 rows unchanged, state advanced\n" in report


def test_a_run_with_an_ambiguous_chunk_gives_the_command_that_closes_it() -> None:
    """The ambiguous chunk is named by 12 characters, with the rows it carries, why, and the
    `ledger resolve` command that takes that short id; next: close it, or resend it."""
    (run,) = build(run_with_ambiguous_chunk)
    normalise([Moment("2026-12-01T07:30:00", "2026-12-01T07:30:14.2", "0c9d8e")])
    assert shown("--run", "20261201T073000Z-0c9d8e") == AMBIGUOUS
    short = re.search(r"--chunk (\w+) --as accepted", AMBIGUOUS)
    assert short is not None and AMBIGUOUS_ID.startswith(short[1]) and len(short[1]) == 12
    resolved = cli(["ledger", "resolve", "--ledger", LEDGER, "--run", run, "--chunk", short[1],
                    "--as", "accepted"])  # fmt: skip
    assert resolved.exit_code == 2 and f"no run {run}" in resolved.stderr  # renamed by normalise
    resolve = ["ledger", "resolve", "--ledger", LEDGER, "--run", "20261201T073000Z-0c9d8e"]
    done = cli([*resolve, "--chunk", short[1], "--as", "accepted"])
    assert done.exit_code == 0, done.stderr
    assert f"chunk {AMBIGUOUS_ID} of run 20261201T073000Z-0c9d8e is now accepted" in done.stderr
    assert "Ambiguous chunks" not in shown()


AMBIGUOUS = """\
Run 20261201T073000Z-0c9d8e
  status    finished, 1 chunk ambiguous
  started   2026-12-01 07:30:00 UTC (1 h ago), took 14 s
  target    https://api.fyno.io, workspace WS1, version live
  settings  batch size 500, concurrency 8

Sources
  source  rows read  rejected  chunks accepted  imported
  s0.csv          5         0           1 of 2  no

Chunks
  status     chunks
  accepted        1
  ambiguous       1
  5 items in 2 chunks, 2 requests

Ambiguous chunks
  They may have been applied. Check each in Fyno, then close it: with its command below when its
  updates are there, with --as abandoned instead when they are not.
  chunk 3f2a9c1b7d4e: 2 items, rows s0.csv:4 to 5
    connection dropped without an answer: may have been applied; $add is not resent
    fyno-import ledger resolve --ledger fyno-import.ledger.db --run 20261201T073000Z-0c9d8e --chunk 3f2a9c1b7d4e --as accepted

Next
  close the 1 ambiguous chunk above, or resend it (a $add in it may be applied twice):
    fyno-import retry --ledger fyno-import.ledger.db --run 20261201T073000Z-0c9d8e --include-ambiguous
"""


def test_a_run_killed_while_sending_reads_as_interrupted_and_says_to_resume_it() -> None:
    """A run killed with -9 (stored running, no process holding the lock): interrupted, its
    chunk in flight unsettled, its rows unknown, and the next step is to run it again."""
    build(killed_run)
    normalise([Moment("2026-12-01T08:15:00", "2026-12-01T08:15:04.6", "5e6f70")])
    assert shown() == INTERRUPTED


INTERRUPTED = """\
Run 20261201T081500Z-5e6f70
  status    interrupted, 1 chunk unsettled
  started   2026-12-01 08:15:00 UTC (45 min ago), took 4.6 s
  target    https://api.fyno.io, workspace WS1, version live
  settings  batch size 500, concurrency 8

Sources
  source  rows read  rejected  chunks accepted  imported
  s0.csv          —         —           1 of ?  no

Chunks
  status     chunks
  accepted        1
  in flight       1
  4 items in 2 chunks, 1 request

Next
  resume it: run the same `fyno-import run` command again
"""


def test_refused_chunks_and_failures_are_grouped_with_their_next_steps() -> None:
    """A 503 and a 400 are two causes, each with its rows; next: retry the one, export the
    other."""
    build(run_with_refusals)
    normalise([Moment("2026-11-29T23:45:00", "2026-11-29T23:45:12.4", "a1b2c3")])
    assert shown() == REFUSALS


REFUSALS = """\
Run 20261129T234500Z-a1b2c3
  status    finished, 1 chunk failed, 1 chunk refused
  started   2026-11-29 23:45:00 UTC (33 h ago), took 12 s
  target    https://api.fyno.io, workspace WS1, version live
  settings  batch size 500, concurrency 8

Sources
  source  rows read  rejected  chunks accepted  imported
  s0.csv          6         0           1 of 3  no

Chunks
  status    chunks
  accepted       1
  failed         1
  refused        1
  6 items in 3 chunks, 9 requests (6 of them resent)

Failures, by cause
  HTTP 503: Service unavailable
    1 chunk, 3 items: failed until the tries ran out; `retry` resends them
    first rows  distinct_id
    s0.csv:1    u1
    s0.csv:2    u2
    s0.csv:3    u3
  HTTP 400: distinct_id is required
    1 chunk, 2 items: refused by the API; resending cannot help: fix the rows
    first rows  distinct_id
    s0.csv:4    (empty)
    s0.csv:5    u5

Next
  resend the 1 chunk not accepted:
    fyno-import retry --ledger fyno-import.ledger.db --run 20261129T234500Z-a1b2c3
  list the refused items:
    fyno-import ledger export --ledger fyno-import.ledger.db --run 20261129T234500Z-a1b2c3 --failures failures.csv
"""


# -- a run with failures, before and after `retry`, through the real commands --------------------

USERS = "user_id,name\nu-1,Ada\nu-2,Grace\nu-3,Zoë\nu-4,Carl\nu-5,Quote\nu-6,Line\n"
MAPPING = "distinct_id: user_id\nproperties:\n  - column: name\n    op: set\n"
FIRST = Moment("2026-11-29T23:45:00", "2026-11-29T23:45:12.4", "a1b2c3")
RETRY = Moment("2026-11-30T08:10:00", "2026-11-30T08:10:03.1")


def without_port(text: str) -> str:
    """The emulator's address with its port (it changes from run to run) as PORT."""
    return re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", text)


def test_a_run_with_failures_before_and_after_retry(tmp_path: Path) -> None:
    """Every request met a 503: the report groups the failures and says to retry; after `retry`
    (the same address, healthy now) the run's report counts every chunk accepted, lists the
    retry and suggests nothing more. The API key appears in no view of either."""
    (tmp_path / "users.csv").write_text(USERS, encoding="utf-8")
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    run = ["run", "users.csv", "-m", "mapping.yaml", "--ledger", LEDGER, "--batch-size", "3"]
    with emulator(fail_rate=1.0) as (server, _):
        port = port_of(server.url)
        assert cli([*run, "--max-retries", "0"], base_url=server.url).exit_code == 1
    normalise([FIRST])
    views = {"before": shown(), "before, markdown": shown("--format", "markdown")}
    assert without_port(views["before"]) == BEFORE_RETRY
    with emulator(port=port):
        assert cli(["retry", "--ledger", LEDGER]).exit_code == 0
    normalise([FIRST], (RETRY,))
    views |= {"after": shown(), "after, json": shown("--json")}
    assert without_port(views["after"]) == AFTER_RETRY
    assert not [name for name, text in views.items() if API_KEY in text]


BEFORE_RETRY = """\
Run 20261129T234500Z-a1b2c3
  status    finished, 2 chunks failed
  started   2026-11-29 23:45:00 UTC (33 h ago), took 12 s
  target    http://127.0.0.1:PORT, workspace ws-e2e, version live
  settings  batch size 3, max batch bytes 1,000,000, concurrency 8, rate limit none, max retries 0,
            timeout 30 s, max reject rate 0.05

Sources
  source     rows read  rejected  chunks accepted  imported
  users.csv          6         0           0 of 2  no

Chunks
  status  chunks
  failed       2
  6 items in 2 chunks, 2 requests

Failures, by cause
  HTTP 503: Service unavailable
    2 chunks, 6 items: failed until the tries ran out; `retry` resends them
    first rows   distinct_id
    users.csv:1  u-1
    users.csv:2  u-2
    users.csv:3  u-3
    … and 3 more

Next
  resend the 2 chunks not accepted:
    fyno-import retry --ledger fyno-import.ledger.db --run 20261129T234500Z-a1b2c3
"""

AFTER_RETRY = """\
Run 20261129T234500Z-a1b2c3
  status    finished, all 2 chunks accepted
  started   2026-11-29 23:45:00 UTC (33 h ago), took 12 s
  target    http://127.0.0.1:PORT, workspace ws-e2e, version live
  settings  batch size 3, max batch bytes 1,000,000, concurrency 8, rate limit none, max retries 0,
            timeout 30 s, max reject rate 0.05

Sources
  source     rows read  rejected  chunks accepted  imported
  users.csv          6         0           2 of 2  yes

Chunks
  status    chunks
  accepted       2
  6 items in 2 chunks, 4 requests (2 of them resent)

Retries
  started (UTC)     ago   took   chunks  accepted  failed  ambiguous  status
  2026-11-30 08:10  24 h  3.1 s       2         2       0          0  finished
"""


# -- the history ---------------------------------------------------------------------------------


def three_runs(led: Ledger) -> None:
    """A clean run; a run with a failed chunk and a retry that failed again; a changed-only
    run still sending (this process holds the lock for it)."""
    clean_run(led)
    run = new_run(led, source_key="second", sources=2)
    sent(led, run, make_chunk(seq=0), ACCEPTED)
    bad = make_chunk(distinct_ids=["x", "y"], rows=[1, 2], seq=1, source_index=1)
    sent(led, run, bad, failed_after(1))
    for idx, rows in ((0, 3), (1, 2)):
        led.set_source_counts(
            run, idx, rows_read=rows, rows_rejected=0, first_chunk=idx, last_chunk=idx
        )
    led.mark_run(run, RunStatus.FINISHED, summary_of(run, items_sent=3))
    retry = led.start_retry(run, chunks=1, include_ambiguous=False)
    sent(led, run, bad, failed_after(2))
    led.finish_retry(retry, RunStatus.FINISHED, {"items_sent": 0})
    led.create_run(
        source_key="third",
        mapping_hash="mh",
        chunk_key="ck",
        shard=None,
        settings={"batch_size": 500, "changed_only": True},
        base_url="https://api.fyno.io",
        workspace="WS1",
        api_version="live",
        sources=[("s0.csv", "fp0")],
    )


def test_a_ledger_with_three_runs_shows_its_history_newest_first() -> None:
    """Three runs and a retry: a line each, newest first; the running run reads as running while
    its process holds the lock, and as interrupted once it is gone."""
    with Ledger.open(Path(LEDGER)) as led:
        three_runs(led)
        normalise(
            [
                Moment("2026-11-29T23:45:00", "2026-11-29T23:45:07.5", "a1b2c3"),
                Moment("2026-11-30T23:45:00", "2026-11-30T23:45:09.8", "d4e5f6"),
                Moment("2026-12-01T08:58:00", None, "0c9d8e"),
            ],
            (Moment("2026-12-01T07:10:00", "2026-12-01T07:10:03.1"),),
        )
        assert shown() == HISTORY
        assert shown("--format", "markdown") == HISTORY_MARKDOWN
    assert "  interrupted\n" in shown().splitlines(keepends=True)[2]


HISTORY = """\
Runs in fyno-import.ledger.db, newest first (every run and retry)
  run                      kind          started (UTC)     ago    took     sources  rows  items sent  accepted  failed  ambiguous  status
  20261201T085800Z-0c9d8e  changed-only  2026-12-01 08:58  2 min  running        1     —           0         0       0          0  running
  20261130T234500Z-d4e5f6  retry         2026-12-01 07:10  1 h    3.1 s          2     —           0         0       1          0  finished
  20261130T234500Z-d4e5f6  run           2026-11-30 23:45  9 h    9.8 s          2     5           3         1       1          0  finished
  20261129T234500Z-a1b2c3  run           2026-11-29 23:45  33 h   7.5 s          1     6           6         2       0          0  finished

Next
  a run's report:
    fyno-import ledger show --ledger fyno-import.ledger.db --run RUN_ID
"""

HISTORY_MARKDOWN = """\
## Runs in fyno-import.ledger.db, newest first (every run and retry)

| run | kind | started (UTC) | ago | took | sources | rows | items sent | accepted | failed | ambiguous | status |
| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |
| 20261201T085800Z-0c9d8e | changed-only | 2026-12-01 08:58 | 2 min | running | 1 | — | 0 | 0 | 0 | 0 | running |
| 20261130T234500Z-d4e5f6 | retry | 2026-12-01 07:10 | 1 h | 3.1 s | 2 | — | 0 | 0 | 1 | 0 | finished |
| 20261130T234500Z-d4e5f6 | run | 2026-11-30 23:45 | 9 h | 9.8 s | 2 | 5 | 3 | 1 | 1 | 0 | finished |
| 20261129T234500Z-a1b2c3 | run | 2026-11-29 23:45 | 33 h | 7.5 s | 1 | 6 | 6 | 2 | 0 | 0 | finished |

### Next

- a run's report: `fyno-import ledger show --ledger fyno-import.ledger.db --run RUN_ID`
"""


def test_the_history_shows_the_latest_20_lines_unless_all_are_asked_for() -> None:
    """With 21 runs the history shows 20 and says how to see every one; --all shows 21."""
    with Ledger.open(Path(LEDGER)) as led:
        first = new_run(led, source_key="k0")
        for index in range(1, 21):
            new_run(led, source_key=f"k{index}")
    lines = shown().splitlines()
    assert lines[0] == f"Runs in {LEDGER}, newest first (the latest 20 of 21)"
    assert first not in "\n".join(lines) and lines[-1].endswith(
        f"ledger show --ledger {LEDGER} --all"
    )
    assert first in shown("--all")


def test_an_empty_ledger_says_so_and_how_to_record_a_run() -> None:
    """A ledger without runs: a sentence and the command that records one, exit 0; `[]` as
    JSON."""
    Ledger.open(Path(LEDGER)).close()
    assert shown() == EMPTY
    assert json.loads(shown("--json")) == []


EMPTY = """\
fyno-import.ledger.db holds no runs yet

Next
  record one:
    fyno-import run SOURCE... --mapping FILE --ledger fyno-import.ledger.db
"""


def test_a_missing_ledger_is_exit_2_naming_it() -> None:
    """No file: exit 2 and one error line with a hint; nothing is created."""
    result = show()
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: no ledger at {LEDGER}\n"
        "  hint: pass the ledger of the run with --ledger (run writes one per directory)\n"
    )
    assert not Path(LEDGER).exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--json", "--format", "markdown"), "choose one"),
        (("--all", "--run", "r"), "does not go with --run"),
        (("--run", "no-such-run"), "no run no-such-run"),
    ],
)
def test_show_refuses_what_does_not_go_together(args: tuple[str, ...], words: str) -> None:
    """Options that contradict each other, or an unknown run: exit 2 and one error line."""
    build(clean_run)
    result = show(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and words in result.stderr.splitlines()[0]


# -- every view, and JSON ------------------------------------------------------------------------

LONG_HASH = re.compile(r"[0-9a-f]{13,}")
JSON_OBJECT = re.compile(r"""[{\[]\s*["']|["']\s*:\s""")


def test_no_human_view_holds_a_json_object_or_a_hash_longer_than_12_characters() -> None:
    """The history and every run's report, as text and as Markdown, show neither; the JSON of
    the same runs holds both (so the check can tell)."""
    with Ledger.open(Path(LEDGER)) as led:
        runs = [make(led) for make in (clean_run, run_with_ambiguous_chunk, run_with_refusals)]
        three_runs(led)
        runs.append(killed_run(led))
    views = {f"history {fmt}": shown("--format", fmt) for fmt in ("text", "markdown")}
    for run in [r.run_id for r in Ledger.open(Path(LEDGER), create=False).list_runs()]:
        for fmt in ("text", "markdown"):
            views[f"{run} {fmt}"] = shown("--run", run, "--format", fmt)
    assert len(views) == 2 + 2 * 7 and all(runs[0] in v for v in views.values() if "history" in v)
    assert [name for name, text in views.items() if LONG_HASH.search(text)] == []
    assert [name for name, text in views.items() if JSON_OBJECT.search(text)] == []
    as_json = shown("--run", runs[1], "--json")
    assert LONG_HASH.search(as_json) and JSON_OBJECT.search(as_json)


# The keys `ledger show --json` gave before the history and the failures were added.
REPORT_KEYS = {
    "run_id", "status", "created_at", "updated_at", "finished_at", "source_key", "mapping_hash",
    "chunk_key", "shard", "base_url", "workspace", "api_version", "settings", "summary",
    "sources", "chunks", "chunks_recorded", "items", "items_accepted", "bytes", "attempts",
    "item_errors",
}  # fmt: skip
SOURCE_KEYS = {
    "idx", "source", "fingerprint", "status", "rows_read", "rows_rejected", "chunks_total",
    "chunks_accepted",
}  # fmt: skip


def test_the_json_report_keeps_every_field_and_adds_what_the_person_reads() -> None:
    """`--run --json`: every earlier key, plus kind, duration, history, failures by cause and
    ambiguous chunks, with the facts the text shows; without --run, a list of such reports."""
    clean, refusals = build(clean_run, run_with_refusals)
    report = json.loads(shown("--run", refusals, "--json"))
    assert set(report) == REPORT_KEYS | {"kind", "duration_s", "history", "failures", "ambiguous"}
    (source,) = report["sources"]
    assert set(source) == SOURCE_KEYS | {"imported", "imported_by"}
    assert (source["imported"], source["imported_by"]) == (False, clean)  # same content
    assert [(g["cause"], g["chunks"], g["items"], g["resendable"]) for g in report["failures"]] == [
        ("HTTP 503: Service unavailable", 1, 3, True),
        ("HTTP 400: distinct_id is required", 1, 2, False),
    ]
    (line,) = report["history"]
    assert (line["kind"], line["chunks_accepted"], line["chunks_failed"]) == ("run", 1, 2)
    assert report["kind"] == "run" and report["duration_s"] == line["duration_s"]
    listed = json.loads(shown("--json"))
    assert [r["run_id"] for r in listed] == [clean, refusals]  # every run, oldest first
    assert listed[1] == report


# -- the hint a command ends with ----------------------------------------------------------------

BAD_ROW = USERS + ",Nobody\n"  # no user_id: rejected


def last_line(result: Result) -> str:
    """The last line a command wrote on stderr."""
    return result.stderr.rstrip("\n").splitlines()[-1]


def test_validate_and_a_dry_run_point_to_the_rejects_file_only(tmp_path: Path) -> None:
    """They write no ledger, so their hint names the rejects file and nothing else."""
    (tmp_path / "users.csv").write_text(BAD_ROW, encoding="utf-8")
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    common = ["users.csv", "-m", "mapping.yaml", "--rejects", "rejects.csv"]
    for args in (["validate", *common], ["run", *common, "--dry-run", "--max-reject-rate", "1"]):
        result = cli(args)
        assert result.exit_code == 1, result.stderr
        assert last_line(result) == (
            "finished with problems (exit 1): the rejected rows and why are in rejects.csv"
        )
    assert not Path(LEDGER).exists()


def test_an_emulator_run_does_not_point_to_its_temporary_ledger(tmp_path: Path) -> None:
    """`run --emulator` without --ledger: the ledger is gone when it ends, so the hint names
    the rejects file only."""
    (tmp_path / "users.csv").write_text(BAD_ROW, encoding="utf-8")
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    emulated = ["users.csv", "-m", "mapping.yaml", "--emulator", "--max-reject-rate", "1"]
    result = cli(["run", *emulated, "--rejects", "r.csv"])
    assert result.exit_code == 1, result.stderr
    assert (
        last_line(result)
        == "finished with problems (exit 1): the rejected rows and why are in r.csv"
    )


def test_a_run_and_a_retry_with_failures_point_to_the_runs_report(tmp_path: Path) -> None:
    """Failed chunks: `run` names the rejects file and the exact `ledger show` command; a
    `retry` that fails again names the report only (it writes no rejects file)."""
    (tmp_path / "users.csv").write_text(BAD_ROW, encoding="utf-8")
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    run = ["run", "users.csv", "-m", "mapping.yaml", "--ledger", LEDGER, "--max-retries", "0"]
    with emulator(fail_rate=1.0) as (server, _):
        args = [*run, "--max-reject-rate", "1", "--rejects", "r.csv", "--json"]
        first = cli(args, base_url=server.url)
        run_id = json.loads(first.stdout)["run_id"]
        report = f"`fyno-import ledger show --ledger {LEDGER} --run {run_id}`"
        assert last_line(first) == (
            "finished with problems (exit 1): the rejected rows and why are in r.csv;"
            f" {report} says what failed and what to do next"
        )
        again = cli(["retry", "--ledger", LEDGER, "--max-retries", "0"])
    assert again.exit_code == 1, again.stderr
    assert last_line(again) == (
        f"finished with problems (exit 1): {report} says what failed and what to do next"
    )
