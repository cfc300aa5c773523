"""`ledger show`, `ledger export` and `ledger resolve`: looking into the results ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from importer import config
from importer.cli import options as opt
from importer.cli.output import console, fail, shown, shown_values
from importer.errors import ImporterError

if TYPE_CHECKING:
    from importer.ledger import Ledger

HISTORY_LINES: Final = 20  # the history's length without --all


@click.group(context_settings=opt.CONTEXT)
def ledger() -> None:
    """Look into the results ledger: runs, chunks, failures."""


_ledger_opt = opt.ledger_opt(
    "The results ledger.", name="ledger_path", default=Path(config.DEFAULT_LEDGER)
)


def _open_ledger(path: Path) -> Ledger:
    from importer.ledger import Ledger

    try:
        return Ledger.open(path, create=False)
    except ImporterError as exc:
        fail(str(exc), exc.exit_code)


def utc_now() -> datetime:
    """The moment "how long ago" is counted from (a test fixes it)."""
    return datetime.now(UTC)


@ledger.command(name="show", context_settings=opt.CONTEXT)
@_ledger_opt
@click.option(
    "--run",
    "run_id",
    default=None,
    help="Show this run's report [default: the history; a ledger of one run shows its report].",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="In the history, every run and retry [default: the latest 20].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown"]),
    default="text",
    show_default=True,
    help="markdown: the same report as Markdown, for a ticket.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the run's report as JSON (without --run: a list, every run, oldest first).",
)
def ledger_show(
    ledger_path: Path, run_id: str | None, show_all: bool, fmt: str, as_json: bool
) -> None:
    """The run history (newest first), or a run's report: what happened and what to do next.

    Without --run: one line per run and per retry, newest first (the latest 20; --all for every
    one). When the ledger holds a single run, its report instead. With --run: that run's
    report: target and settings, its sources, chunks, retries, failures by cause, ambiguous
    chunks with the command closing each, and the next step.
    """
    if as_json and fmt != "text":
        fail("--json and --format markdown are two ways to print the report: choose one")
    if show_all and run_id:
        fail("--all lists every run of the history; it does not go with --run")
    with _open_ledger(ledger_path) as book:
        try:
            if as_json:
                _print_json(book, run_id)
                return
            text = _human_view(book, str(ledger_path), run_id, show_all, fmt)
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
    click.echo(shown(text), nl=False)


def _print_json(book: Ledger, run_id: str | None) -> None:
    """The report of the run, or the list of every run's report (as before the history)."""
    if run_id is not None:
        data: Any = book.run_report(run_id)
    else:
        data = [book.run_report(r.run_id) for r in book.list_runs()]
    click.echo(json.dumps(shown_values(data), ensure_ascii=False, default=str))


def _human_view(book: Ledger, ledger: str, run_id: str | None, show_all: bool, fmt: str) -> str:
    """The history or a report, as text or Markdown."""
    from importer.cli import ledger_view
    from importer.cli.blocks import as_markdown, as_text

    now = utc_now()
    if run_id is None:
        lines = book.history(None if show_all else HISTORY_LINES)
        runs = {line["run_id"] for line in lines}
        if len(runs) == 1 and book.history_size() == len(lines):
            run_id = runs.pop()  # a ledger of one run: its report says it all
        elif not lines:
            document = ledger_view.empty_document(ledger)
        else:
            document = ledger_view.history_document(
                lines, ledger=ledger, size=book.history_size(), now=now
            )
    if run_id is not None:
        report = book.run_report(run_id)
        document = ledger_view.report_document(report, ledger=ledger, now=now)
    return as_markdown(document) if fmt == "markdown" else as_text(document)


@ledger.command(name="export", context_settings=opt.CONTEXT)
@_ledger_opt
@click.option("--run", "run_id", default=None, help="Only this run [default: every run].")
@click.option(
    "--failures",
    type=click.Path(path_type=Path),
    required=True,
    help="Write failed, refused and ambiguous items here (CSV).",
)
def ledger_export(ledger_path: Path, run_id: str | None, failures: Path) -> None:
    """Write one CSV line per item of every failed or ambiguous chunk, and per item error."""
    with _open_ledger(ledger_path) as book:
        try:
            count = book.export_failures(failures, run_id)
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
    console().print(f"wrote {count} line(s) to {failures}", markup=False)


@ledger.command(name="resolve", context_settings=opt.CONTEXT)
@_ledger_opt
@click.option("--run", "run_id", required=True, help="The run of the chunk.")
@click.option(
    "--chunk",
    "chunk_id",
    required=True,
    help="The chunk to close: its id, or the start of it that `ledger show` prints.",
)
@click.option(
    "--as",
    "as_status",
    type=click.Choice(["accepted", "abandoned"]),
    required=True,
    help="accepted: it was applied; abandoned: leave it unsent.",
)
def ledger_resolve(ledger_path: Path, run_id: str, chunk_id: str, as_status: str) -> None:
    """Close an ambiguous (or failed) chunk once a person has checked it in Fyno."""
    from importer.model import ChunkStatus

    with _open_ledger(ledger_path) as book:
        try:
            book.lock_for_run()
            full_id = book.resolve(run_id, chunk_id, ChunkStatus(as_status))
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
    console().print(f"chunk {full_id} of run {run_id} is now {as_status}", markup=False)
