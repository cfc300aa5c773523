"""What to do next, as commands a person can paste: the line a command's summary ends with, and
the commands ``ledger show`` suggests.

Every hint names only files and commands that exist for the command that ran: `validate` and
`--dry-run` write no ledger, an `--emulator` run's ledger is gone once it ends (unless
``--ledger`` was given), and `retry` writes no rejects file.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from importer.pipeline import RunSummary

FAILURES_FILE: Final = "failures.csv"  # the file the suggested `ledger export` writes


def command(*words: str) -> str:
    """``fyno-import WORDS…``, each word quoted for a POSIX shell when it needs to be."""
    return shlex.join(["fyno-import", *words])


def show_command(ledger: str, run_id: str | None = None) -> str:
    """The `ledger show` command for one run (or for the history)."""
    run = ("--run", run_id) if run_id else ()
    return command("ledger", "show", "--ledger", ledger, *run)


def retry_command(ledger: str, run_id: str, *, include_ambiguous: bool = False) -> str:
    """The `retry` command that resends a run's failed chunks."""
    extra = ("--include-ambiguous",) if include_ambiguous else ()
    return command("retry", "--ledger", ledger, "--run", run_id, *extra)


def export_command(ledger: str, run_id: str) -> str:
    """The `ledger export` command that lists a run's failed and refused items."""
    return command(
        "ledger", "export", "--ledger", ledger, "--run", run_id, "--failures", FAILURES_FILE
    )


def resolve_command(ledger: str, run_id: str, chunk: str) -> str:
    """The `ledger resolve` command closing one chunk as accepted (``ledger show`` says when)."""
    return command(
        "ledger",
        "resolve",
        "--ledger",
        ledger,
        "--run",
        run_id,
        "--chunk",
        chunk,
        "--as",
        "accepted",
    )


def closing_hint(summary: RunSummary) -> str | None:
    """The line a command's human summary ends with when it finished with problems (exit 1)."""
    if summary.exit_code != 1:
        return None
    parts = []
    if summary.rows_rejected and summary.rejects:
        parts.append(f"the rejected rows and why are in {summary.rejects}")
    if summary.chunks_failed or summary.chunks_ambiguous or summary.item_errors:
        if summary.ledger and summary.run_id and not summary.ledger_temporary:
            show = show_command(summary.ledger, summary.run_id)
            parts.append(f"`{show}` says what failed and what to do next")
        elif summary.ledger_temporary:
            parts.append("some chunks failed (keep a ledger with --ledger FILE to retry them)")
    return "finished with problems (exit 1)" + (": " + "; ".join(parts) if parts else "")
