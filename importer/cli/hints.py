"""What to do next, as commands a person can paste: the commands ``ledger show`` suggests."""

from __future__ import annotations

import shlex
from typing import Final

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
