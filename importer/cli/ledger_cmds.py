"""`ledger show`, `ledger export` and `ledger resolve`: looking into the results ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from importer import config
from importer.cli import options as opt
from importer.cli.output import console, fail
from importer.errors import ImporterError

if TYPE_CHECKING:
    from rich.console import Console

    from importer.ledger import Ledger


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


@ledger.command(name="show", context_settings=opt.CONTEXT)
@_ledger_opt
@click.option("--run", "run_id", default=None, help="Show this run only [default: every run].")
@opt.json_opt
def ledger_show(ledger_path: Path, run_id: str | None, as_json: bool) -> None:
    """A per-run report: sources, counts, chunk statuses."""
    from rich.console import Console

    with _open_ledger(ledger_path) as book:
        try:
            runs = [book.get_run(run_id)] if run_id else book.list_runs()
            reports = [book.run_report(r.run_id) for r in runs]
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
    if as_json:
        click.echo(
            json.dumps(reports if run_id is None else reports[0], ensure_ascii=False, default=str)
        )
        return
    out = Console(highlight=False)
    if not reports:
        out.print(f"{ledger_path}: no runs yet")
    for report in reports:
        _print_report(out, report)


def _print_report(out: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"run {report.get('run_id')}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in report.items():
        if key in ("run_id",):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, default=str)
        table.add_row(str(key), str(value))
    out.print(table)


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
@click.option("--chunk", "chunk_id", required=True, help="The chunk to close.")
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
            book.resolve(run_id, chunk_id, ChunkStatus(as_status))
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
    console().print(f"chunk {chunk_id} of run {run_id} is now {as_status}", markup=False)
