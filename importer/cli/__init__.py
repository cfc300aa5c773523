"""The ``fyno-import`` command line: parses options, calls the library, shows what it reports.

The only package that imports click or rich, and the only one that prints: progress, notices
and the human summary go to stderr; ``--json`` prints exactly one JSON object on stdout (also on
failure), so both can be piped. It words the library's typed events (``words``) and maps its
typed errors to exit codes. Heavy libraries are imported inside the commands that use them, so
``--version`` and every ``--help`` answer at once. Modules: ``importing`` (run, validate,
preview), ``retrying``, ``ledger_cmds``, ``emulator_cmd``, ``mapping_cmds``; ``options``,
``execute``, ``reporters``, ``summary``, ``hints``, ``words`` and ``output`` serve them, and
``ledger_view`` and ``blocks`` draw ``ledger show``'s history and reports.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading

import click

from importer import __version__
from importer.cli import emulator_cmd, importing, ledger_cmds, mapping_cmds, retrying
from importer.cli.options import CONTEXT


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="fyno-import")
def main() -> None:
    """Bulk-load user attributes from CSV and Parquet files into Fyno user profiles.

    Typical flow: validate → preview → run (→ retry). Every run records each chunk's outcome in a
    SQLite ledger, so an interrupted run resumes where it stopped and failed chunks can be resent
    later, even after the source file is gone. Exit codes: 0 clean, 1 finished with problems,
    2 nothing sent (bad usage, mapping or source), 3 aborted.
    """


for command in (
    importing.run,
    importing.validate_command,
    importing.preview_command,
    retrying.retry,
    ledger_cmds.ledger,
    emulator_cmd.emulator,
    mapping_cmds.mapping,
):
    main.add_command(command)


def entry() -> None:
    """The console script (and ``python -m importer``): ``main``, then a quick exit.

    Tearing the interpreter down with polars, numpy and pydantic loaded takes about half a
    second (measured: 0.6 s after a dry run), after every file, ledger and temporary folder was
    closed. So once ``main`` returned, its threads ended and the exit handlers ran (logging,
    thread pools, temporary files), the streams are flushed and the process ends with its code.
    """
    try:
        main()  # standalone mode: always ends in SystemExit
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    """What ``SystemExit(code)`` makes the process exit with, as Python itself does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


__all__ = ["entry", "main"]
