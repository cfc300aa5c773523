"""Running one command of the library: its reporter, its errors, its summary and exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from importer.cli.output import console, shown, shown_values
from importer.errors import ImporterError, InterruptedRun, UsageError

if TYPE_CHECKING:
    from importer.events import Reporter
    from importer.pipeline import RunSummary


def execute(
    summary: RunSummary,
    action: Callable[[Reporter], object],
    *,
    as_json: bool,
    no_progress: bool,
    quiet: bool = False,
    log_format: str = "text",
) -> NoReturn:
    """Run a command, print its summary (human on stderr, JSON on stdout) and exit with its code.

    An error before anything was read (a usage, mapping or source error) is printed alone: a
    table of zeros after it would only hide it. ``--json`` still prints the summary object.
    """
    from importer.cli.reporters import JsonLogReporter, RichReporter
    from importer.cli.summary import print_summary

    err = console()
    reporter: RichReporter | JsonLogReporter
    if log_format == "json":
        reporter = JsonLogReporter(summary.command, quiet=quiet)
    else:
        show_bar = not no_progress and not quiet and err.is_terminal
        reporter = RichReporter(err, show_bar=show_bar, quiet=quiet)
    error: ImporterError | None = None
    with reporter:
        try:
            action(reporter)
        except ImporterError as exc:
            error = exc
        except KeyboardInterrupt:
            error = InterruptedRun("interrupted")
        except ValueError as exc:  # a setting refused by a config object: a usage error
            error = UsageError(str(exc))
    summary.finish(error)
    if isinstance(reporter, JsonLogReporter):
        reporter.finished(summary)
    else:
        if error is not None:
            err.print(f"error: {shown(str(error))}", markup=False)
        if not quiet and not _error_alone(summary, error):
            print_summary(summary, err)
    if as_json:
        click.echo(json.dumps(shown_values(summary.as_json()), ensure_ascii=False))
    sys.exit(summary.exit_code)


def _error_alone(summary: RunSummary, error: ImporterError | None) -> bool:
    """True when the command stopped before reading a row: only the error is worth showing."""
    return error is not None and error.exit_code == 2 and not summary.rows_read


def execute_with(
    args: dict[str, Any], summary: RunSummary, action: Callable[[Reporter], object]
) -> NoReturn:
    """``execute`` with the output options (``--json``, ``--quiet``, …) as click parsed them."""
    execute(
        summary,
        action,
        as_json=args["as_json"],
        no_progress=args["no_progress"],
        quiet=args["quiet"],
        log_format=args["log_format"],
    )
