"""The ``fyno-import`` command line: parses options, calls the library, shows progress and maps
errors to exit codes. The only module that imports click or rich.

Output discipline: progress, notices and the human summary go to stderr; ``--json`` prints exactly
one JSON object on stdout (also on failure), so both can be piped. With ``--log-format json`` the
bar and the human summary give way to one JSON object per event on stderr, for log aggregators.
The API key is never printed: every message passes through ``_redact`` before it is shown.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from importer import __version__
from importer.config.settings import Settings
from importer.errors import ImporterError, UsageError
from importer.mapping import Mapping, load_mapping
from importer.model import ChunkStatus
from importer.pipeline import (
    DEFAULT_BASE_URL,
    ImportOptions,
    NullReporter,
    Reporter,
    RetryOptions,
    RunSummary,
    Target,
    check_api_version,
    check_base_url,
    preview,
    retry_failed,
    run_import,
    validate,
)

_SECRETS: list[str] = []
# Nothing prints the key; redaction is the second line of defence. A key this short could not be
# told apart from ordinary words in a message, so only longer ones are redacted (real keys are).
_MIN_SECRET = 6


def _redact(text: str) -> str:
    """A message with any known secret replaced by ***."""
    for secret in _SECRETS:
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "***")
    return text


def _redact_values(data: Any) -> Any:
    """JSON-able data with secrets redacted in its string values; field names are left alone."""
    if isinstance(data, str):
        return _redact(data)
    if isinstance(data, dict):
        return {key: _redact_values(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_redact_values(value) for value in data]
    return data


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


# --- progress -----------------------------------------------------------------------------


class RichReporter:
    """Progress on stderr: one bar for rows, with chunk and retry counts beside it."""

    def __init__(self, console: Console, *, show_bar: bool, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.accepted = self.failed = self.ambiguous = self.retries = 0
        self._task: TaskID | None = None
        self._progress: Progress | None = None
        if show_bar:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[chunks]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )

    def __enter__(self) -> RichReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def notice(self, message: str) -> None:
        """Show a notice without tearing the bar."""
        if not self.quiet:
            self.console.print(_redact(message), markup=False)

    def phase(self, name: str, total_rows: int | None) -> None:
        """Start a new bar for a phase (validating, sending, retrying)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.stop_task(self._task)
        self._task = self._progress.add_task(name, total=total_rows, rate="", chunks="")

    def rows(self, count: int) -> None:
        """Advance the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, count)
            task = self._progress.tasks[-1]
            speed = task.finished_speed or task.speed
            self._progress.update(self._task, rate=f"{speed:,.0f}/s" if speed else "")

    def chunk(self, status: ChunkStatus) -> None:
        """Count a settled chunk."""
        if status is ChunkStatus.ACCEPTED:
            self.accepted += 1
        elif status is ChunkStatus.AMBIGUOUS:
            self.ambiguous += 1
        else:
            self.failed += 1
        self._update_chunks()

    def retry(self, reason: str) -> None:
        """Count a retry."""
        self.retries += 1
        self._update_chunks()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Structured events are for --log-format json; the terminal shows the bar instead."""

    def _update_chunks(self) -> None:
        if self._progress is not None and self._task is not None:
            text = f"chunks ok {self.accepted} failed {self.failed}"
            if self.ambiguous:
                text += f" ambiguous {self.ambiguous}"
            text += f" retries {self.retries}"
            self._progress.update(self._task, chunks=text)


LogLevel = str  # "info" | "warning" | "error"
_LEVELS = {"info": 0, "warning": 1, "error": 2}


class JsonLogReporter:
    """``--log-format json``: one JSON object per line on stderr for each event, no bar.

    Every line has ``ts`` (UTC), ``level``, ``event`` and ``command``, and ``run_id`` once it is
    known. Events: ``phase``, ``notice``, ``run_started``, ``retry_started``,
    ``source_skipped``, ``chunk_settled`` (a chunk that failed, was refused, is ambiguous or had
    item errors), ``retry`` and, last, ``run_finished`` with the whole summary. With ``--quiet``
    only warnings, errors and ``run_finished`` are written.
    """

    def __init__(self, command: str, *, quiet: bool) -> None:
        self.command = command
        self.min_level = _LEVELS["warning"] if quiet else _LEVELS["info"]
        self.run_id: str | None = None
        self._lock = threading.Lock()  # the reader thread and the event loop both report

    def __enter__(self) -> JsonLogReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def emit(self, event: str, level: LogLevel = "info", **data: Any) -> None:
        """Write one event line (unless --quiet drops its level)."""
        if _LEVELS[level] < self.min_level and event != "run_finished":
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line: dict[str, Any] = {"ts": now, "level": level, "event": event, "command": self.command}
        if self.run_id is not None:
            line["run_id"] = self.run_id
        line.update(data)
        text = json.dumps(_redact_values(line), ensure_ascii=False, default=str)
        with self._lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def notice(self, message: str) -> None:
        """A notice becomes a ``notice`` event."""
        self.emit("notice", message=message)

    def phase(self, name: str, total_rows: int | None) -> None:
        """A new phase (validating, sending, retrying)."""
        self.emit("phase", phase=name, rows_total=total_rows)

    def rows(self, count: int) -> None:
        """Rows are counted in the final summary, not logged one batch at a time."""

    def chunk(self, status: ChunkStatus) -> None:
        """Chunks that need attention arrive as ``chunk_settled`` events instead."""

    def retry(self, reason: str) -> None:
        """A request is being resent."""
        self.emit("retry", "warning", reason=reason)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """A structured event from the library."""
        if data.get("run_id"):
            self.run_id = str(data["run_id"])
        fields = {k: v for k, v in data.items() if k != "run_id"}
        self.emit(kind, "warning" if kind == "chunk_settled" else "info", **fields)

    def finished(self, summary: RunSummary) -> None:
        """The last line: the whole summary, at a level that follows the exit code."""
        self.run_id = summary.run_id or self.run_id
        data = summary.as_json()
        data.pop("run_id", None)
        level = (
            "info" if summary.exit_code == 0 else "warning" if summary.exit_code == 1 else "error"
        )
        self.emit("run_finished", level, **data)


# --- shared plumbing ------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> NoReturn:
    _console().print(f"error: {_redact(message)}", markup=False)
    sys.exit(code)


def _print_summary(summary: RunSummary, console: Console) -> None:
    table = Table(title=f"fyno-import {summary.command}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows: list[tuple[str, Any]] = [
        ("run", summary.run_id or ("dry run" if summary.dry_run else "-")),
        ("rows read", f"{summary.rows_read:,}"),
        ("rows valid", f"{summary.rows_valid:,}"),
        ("rows rejected", f"{summary.rows_rejected:,}"),
    ]
    if summary.command == "validate" or summary.dry_run:
        rows += [
            ("items to send", f"{summary.items_total:,}"),
            ("chunks to send", f"{summary.chunks_total:,}"),
            ("bytes to send", f"{summary.bytes_total:,}"),
        ]
    else:
        rows += [
            ("items sent", f"{summary.items_sent:,}"),
            ("chunks", f"{summary.chunks_total:,}"),
            ("  accepted", f"{summary.chunks_accepted:,}"),
            ("  skipped (done before)", f"{summary.chunks_skipped:,}"),
            ("  failed", f"{summary.chunks_failed:,}"),
            ("  ambiguous", f"{summary.chunks_ambiguous:,}"),
            ("item errors", f"{summary.item_errors:,}"),
            ("retries", f"{summary.retries:,}"),
        ]
        if summary.profiles_superseded is not None:
            rows.append(("profiles superseded", f"{summary.profiles_superseded:,}"))
    if summary.sources_skipped:
        rows.append(("sources skipped", f"{summary.sources_skipped:,}"))
    rows.append(("elapsed", f"{summary.elapsed_s:.1f} s"))
    if summary.rejects:
        rows.append(("rejects", summary.rejects))
    if summary.ledger:
        temporary = (
            " (temporary: pass --ledger FILE to keep it)" if summary.ledger_temporary else ""
        )
        rows.append(("ledger", summary.ledger + temporary))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for distinct_id, profile in summary.profiles.items():
        console.print(
            f"profile {distinct_id}: {json.dumps(profile, ensure_ascii=False)}", markup=False
        )
    if summary.exit_code == 1:
        where = "the rejects file" + (
            "" if summary.ledger_temporary else " and `fyno-import ledger show`"
        )
        console.print(f"finished with problems (exit 1): see {where}")


def _execute(
    summary: RunSummary,
    action: Callable[[Reporter], RunSummary],
    *,
    as_json: bool,
    no_progress: bool,
    quiet: bool = False,
    log_format: str = "text",
) -> NoReturn:
    """Run a command, print its summary (human on stderr, JSON on stdout) and exit with its code."""
    console = _console()
    show_bar = not no_progress and not quiet and console.is_terminal
    error: ImporterError | None = None
    reporter: RichReporter | JsonLogReporter
    if log_format == "json":
        reporter = JsonLogReporter(summary.command, quiet=quiet)
    else:
        reporter = RichReporter(console, show_bar=show_bar, quiet=quiet)
    with reporter:
        try:
            action(reporter)
        except ImporterError as exc:
            error = exc
        except KeyboardInterrupt:
            from importer.errors import InterruptedRun

            error = InterruptedRun("interrupted")
    summary.finish(error)
    if isinstance(reporter, JsonLogReporter):
        reporter.finished(summary)
    else:
        if error is not None:
            console.print(f"error: {_redact(str(error))}", markup=False)
        if not quiet:
            _print_summary(summary, console)
    if as_json:
        click.echo(json.dumps(_redact_values(summary.as_json()), ensure_ascii=False))
    sys.exit(summary.exit_code)


def _read_key(api_key_file: Path | None) -> str | None:
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file {api_key_file}: {exc.strerror}") from None
        if not key.strip():
            raise UsageError(f"--api-key-file {api_key_file} is empty")
        _SECRETS.append(key)
        return key
    from_env = os.environ.get("FYNO_API_KEY") or None
    if from_env:
        _SECRETS.append(from_env)
    return from_env


def _settings(mapping: Mapping, **given: Any) -> Settings:
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        return Settings.model_validate({**mapping.settings.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: write it K/N, for example 2/8") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text!r}: K must run from 1 to N")
    return k, n


def _load_mapping_or_fail(path: Path) -> Mapping:
    try:
        return load_mapping(path)
    except ImporterError as exc:
        _fail(str(exc))


# --- the commands -------------------------------------------------------------------------

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="fyno-import")
def main() -> None:
    """Bulk-load user attributes from CSV and Parquet files into Fyno user profiles.

    Typical flow: validate → preview → run (→ retry). Every run records each chunk's outcome in a
    SQLite ledger, so an interrupted run resumes where it stopped and failed chunks can be resent
    later, even after the source file is gone. Exit codes: 0 clean, 1 finished with problems,
    2 nothing sent (bad usage, mapping or source), 3 aborted.
    """


_source_arg = click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
_mapping_opt = click.option(
    "--mapping",
    "-m",
    "mapping_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The mapping file (YAML, JSON or TOML).",
)
_format_opt = click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default=None,
    help="Read every source as this format, whatever its suffix.",
)
_json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."
)
_progress_opt = click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar (it is also off when stderr is not a terminal).",
)
_quiet_opt = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress, notices or human summary; errors only (with --log-format json: "
    "warnings, errors and run_finished).",
)
_log_format_opt = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per event on stderr (run started, chunk failed, retry, run "
    "finished with counts), no progress bar and no human summary; for log aggregators.",
)


def _sending_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--concurrency",
                type=int,
                default=None,
                help="Most requests in flight [default: 8].",
            ),
            click.option(
                "--rate-limit",
                type=float,
                default=None,
                help="Most requests started per second, 0 = none [default: 0].",
            ),
            click.option(
                "--max-retries",
                type=int,
                default=None,
                help="Tries after the first, for transient failures [default: 6].",
            ),
            click.option(
                "--timeout",
                type=float,
                default=None,
                help="Per-request timeout in seconds [default: 30].",
            ),
        ]
    ):
        func = option(func)
    return func


def _target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--workspace",
                default=None,
                help="Fyno workspace id (WSID) [env: FYNO_WORKSPACE_ID].",
            ),
            click.option(
                "--api-version",
                default=None,
                help="live or test [env: FYNO_VERSION; default: live].",
            ),
            click.option(
                "--base-url",
                default=None,
                help=f"API base URL [env: FYNO_BASE_URL; default: {DEFAULT_BASE_URL}].",
            ),
            click.option(
                "--api-key-file",
                type=click.Path(path_type=Path),
                default=None,
                help="Read the API key from this file (wins over FYNO_API_KEY).",
            ),
        ]
    ):
        func = option(func)
    return func


@main.command(context_settings=CONTEXT)
@_source_arg
@_mapping_opt
@click.option(
    "--ledger",
    type=click.Path(path_type=Path),
    default=None,
    help="The SQLite results ledger [default: fyno-import.ledger.db; see docs/ledger.md].",
)
@click.option(
    "--batch-size", type=int, default=None, help="Most items in one request [default: 500]."
)
@click.option(
    "--max-batch-bytes",
    type=int,
    default=None,
    help="Most bytes in one request body [default: 1000000].",
)
@_sending_options
@click.option(
    "--max-reject-rate",
    type=float,
    default=None,
    help="Stop before sending if a larger fraction of rows is invalid (exit 3) [default: 0.05].",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    default=None,
    help="No files, or files with no data rows, are not an error.",
)
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    default=Path("fyno-import.rejects.csv"),
    show_default=True,
    help="The rejects file (rewritten by each run).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read, validate, build and count chunks; send nothing; write no ledger.",
)
@click.option(
    "--emulator", is_flag=True, help="Start the built-in emulator in-process and import into it."
)
@click.option(
    "--show-profiles",
    type=int,
    default=0,
    help="With --emulator: print this many resulting profiles.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import already-imported sources again, or restart an unfinished run with other settings.",
)
@click.option(
    "--shard", default=None, metavar="K/N", help="Only profiles whose id falls in shard K of N."
)
@_format_opt
@_json_opt
@_progress_opt
@_quiet_opt
@_log_format_opt
@_target_options
def run(
    sources: tuple[str, ...],
    mapping_path: Path,
    ledger: Path | None,
    batch_size: int | None,
    max_batch_bytes: int | None,
    concurrency: int | None,
    rate_limit: float | None,
    max_retries: int | None,
    timeout: float | None,
    max_reject_rate: float | None,
    allow_empty: bool | None,
    rejects: Path,
    dry_run: bool,
    emulator: bool,
    show_profiles: int,
    force: bool,
    shard: str | None,
    fmt: str | None,
    as_json: bool,
    no_progress: bool,
    quiet: bool,
    log_format: str,
    workspace: str | None,
    api_version: str | None,
    base_url: str | None,
    api_key_file: Path | None,
) -> None:
    """Validate SOURCE... completely, then send every valid row to Fyno, recording each chunk.

    Run the same command again after a crash or Ctrl-C to resume: accepted chunks are skipped.
    """
    summary = RunSummary(command="run", dry_run=dry_run)

    def action(reporter: Reporter) -> RunSummary:
        mapping = load_mapping(mapping_path)
        settings = _settings(
            mapping,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            concurrency=concurrency,
            rate_limit=rate_limit,
            max_retries=max_retries,
            timeout=timeout,
            max_reject_rate=max_reject_rate,
            allow_empty=allow_empty,
        )
        target = None
        if not (dry_run or emulator):
            target = _target(api_key_file, workspace, api_version, base_url)
        options = ImportOptions(
            sources=list(sources),
            mapping=mapping,
            settings=settings,
            format=fmt,
            ledger=ledger,
            rejects=rejects,
            dry_run=dry_run,
            force=force,
            shard=_parse_shard(shard),
            target=target,
            emulator=emulator,
            show_profiles=show_profiles,
        )
        return run_import(options, summary, reporter)

    _execute(
        summary,
        action,
        as_json=as_json,
        no_progress=no_progress,
        quiet=quiet,
        log_format=log_format,
    )


def _target(
    api_key_file: Path | None, workspace: str | None, api_version: str | None, base_url: str | None
) -> Target:
    key = _read_key(api_key_file)
    workspace = workspace or os.environ.get("FYNO_WORKSPACE_ID") or None
    if not key:
        raise UsageError(
            "no API key: set FYNO_API_KEY or pass --api-key-file FILE",
            hint="to try a mapping without an account, use --emulator or --dry-run",
        )
    if not workspace:
        raise UsageError("no workspace: set FYNO_WORKSPACE_ID or pass --workspace WSID")
    version = check_api_version(api_version or os.environ.get("FYNO_VERSION") or "live")
    url = base_url or os.environ.get("FYNO_BASE_URL") or DEFAULT_BASE_URL
    check_base_url(url)
    return Target(base_url=url, workspace=workspace, api_version=version, api_key=key)


@main.command(name="validate", context_settings=CONTEXT)
@_source_arg
@_mapping_opt
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    default=Path("fyno-import.rejects.csv"),
    show_default=True,
    help="Where to write the rejected rows with their reasons.",
)
@_format_opt
@click.option(
    "--allow-empty",
    is_flag=True,
    default=None,
    help="No files, or files with no data rows, are not an error.",
)
@_json_opt
@_progress_opt
@_quiet_opt
@_log_format_opt
def validate_command(
    sources: tuple[str, ...],
    mapping_path: Path,
    rejects: Path,
    fmt: str | None,
    allow_empty: bool | None,
    as_json: bool,
    no_progress: bool,
    quiet: bool,
    log_format: str,
) -> None:
    """Read and check SOURCE... against the mapping; write rejected rows and why. Sends nothing.

    Exit 0 when every row is valid, 1 when some rows were rejected, 2 on a bad mapping or source.
    """
    summary = RunSummary(command="validate")

    def action(reporter: Reporter) -> RunSummary:
        mapping = load_mapping(mapping_path)
        settings = _settings(mapping, allow_empty=allow_empty)
        options = ImportOptions(
            sources=list(sources), mapping=mapping, settings=settings, format=fmt, rejects=rejects
        )
        return validate(options, summary, reporter)

    _execute(
        summary,
        action,
        as_json=as_json,
        no_progress=no_progress,
        quiet=quiet,
        log_format=log_format,
    )


@main.command(name="preview", context_settings=CONTEXT)
@_source_arg
@_mapping_opt
@click.option(
    "-n", "count", type=int, default=1, show_default=True, help="How many request bodies to show."
)
@click.option(
    "--batch-size", type=int, default=None, help="Most items in one request [default: 500]."
)
@click.option(
    "--max-batch-bytes",
    type=int,
    default=None,
    help="Most bytes in one request body [default: 1000000].",
)
@_format_opt
def preview_command(
    sources: tuple[str, ...],
    mapping_path: Path,
    count: int,
    batch_size: int | None,
    max_batch_bytes: int | None,
    fmt: str | None,
) -> None:
    """Print the first N request bodies, pretty-printed, exactly as `run` would send them."""
    try:
        mapping = load_mapping(mapping_path)
        settings = _settings(
            mapping, batch_size=batch_size, max_batch_bytes=max_batch_bytes, allow_empty=True
        )
        options = ImportOptions(
            sources=list(sources), mapping=mapping, settings=settings, format=fmt
        )
        bodies = preview(options, count, NullReporter())
    except ImporterError as exc:
        _fail(str(exc), exc.exit_code)
    for index, body in enumerate(bodies):
        data = json.loads(body)
        _console().print(
            f"# request {index + 1}: {len(data['batch'])} items, {len(body):,} bytes", markup=False
        )
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@main.command(context_settings=CONTEXT)
@click.option(
    "--ledger",
    type=click.Path(path_type=Path),
    default=Path("fyno-import.ledger.db"),
    show_default=True,
    help="The results ledger.",
)
@click.option(
    "--run",
    "run_id",
    default=None,
    help="The run to retry [default: the latest run with failures].",
)
@click.option(
    "--include-ambiguous",
    is_flag=True,
    help="Also resend ambiguous chunks (those carrying $add may be applied twice).",
)
@_sending_options
@_target_options
@_json_opt
@_progress_opt
@_quiet_opt
@_log_format_opt
def retry(
    ledger: Path,
    run_id: str | None,
    include_ambiguous: bool,
    concurrency: int | None,
    rate_limit: float | None,
    max_retries: int | None,
    timeout: float | None,
    workspace: str | None,
    api_version: str | None,
    base_url: str | None,
    api_key_file: Path | None,
    as_json: bool,
    no_progress: bool,
    quiet: bool,
    log_format: str,
) -> None:
    """Resend a run's failed chunks from the ledger alone (the source file may be gone).

    Chunks refused with HTTP 400 are reported, not resent. Goes to the base URL, workspace and
    version recorded in the ledger.
    """
    summary = RunSummary(command="retry")

    def action(reporter: Reporter) -> RunSummary:
        key = _read_key(api_key_file)
        if not key:
            raise UsageError("no API key: set FYNO_API_KEY or pass --api-key-file FILE")
        settings = Settings.model_validate(
            {
                k: v
                for k, v in dict(
                    concurrency=concurrency,
                    rate_limit=rate_limit,
                    max_retries=max_retries,
                    timeout=timeout,
                ).items()
                if v is not None
            }
        )
        options = RetryOptions(
            ledger=ledger,
            run_id=run_id,
            include_ambiguous=include_ambiguous,
            settings=settings,
            api_key=key,
            base_url=base_url,
            workspace=workspace,
            api_version=api_version,
        )
        return retry_failed(options, summary, reporter)

    _execute(
        summary,
        action,
        as_json=as_json,
        no_progress=no_progress,
        quiet=quiet,
        log_format=log_format,
    )


# --- ledger ---------------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def ledger() -> None:
    """Look into the results ledger: runs, chunks, failures."""


_ledger_opt = click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(path_type=Path),
    default=Path("fyno-import.ledger.db"),
    show_default=True,
    help="The results ledger.",
)


def _open_ledger(path: Path) -> Any:
    from importer.ledger import Ledger

    try:
        return Ledger.open(path, create=False)
    except ImporterError as exc:
        _fail(str(exc), exc.exit_code)


@ledger.command(name="show", context_settings=CONTEXT)
@_ledger_opt
@click.option("--run", "run_id", default=None, help="Show this run only [default: every run].")
@_json_opt
def ledger_show(ledger_path: Path, run_id: str | None, as_json: bool) -> None:
    """A per-run report: sources, counts, chunk statuses."""
    with _open_ledger(ledger_path) as book:
        try:
            runs = [book.get_run(run_id)] if run_id else book.list_runs()
            reports = [book.run_report(r.run_id) for r in runs]
        except ImporterError as exc:
            _fail(str(exc), exc.exit_code)
    if as_json:
        click.echo(
            json.dumps(reports if run_id is None else reports[0], ensure_ascii=False, default=str)
        )
        return
    console = Console(highlight=False)
    if not reports:
        console.print(f"{ledger_path}: no runs yet")
    for report in reports:
        _print_report(console, report)


def _print_report(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"run {report.get('run_id')}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in report.items():
        if key in ("run_id",):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False, default=str)
        table.add_row(str(key), str(value))
    console.print(table)


@ledger.command(name="export", context_settings=CONTEXT)
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
            _fail(str(exc), exc.exit_code)
    _console().print(f"wrote {count} line(s) to {failures}", markup=False)


@ledger.command(name="resolve", context_settings=CONTEXT)
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
    with _open_ledger(ledger_path) as book:
        try:
            book.lock_for_run()
            book.resolve(run_id, chunk_id, ChunkStatus(as_status))
        except ImporterError as exc:
            _fail(str(exc), exc.exit_code)
    _console().print(f"chunk {chunk_id} of run {run_id} is now {as_status}", markup=False)


# --- emulator -------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--port",
    type=int,
    default=8080,
    show_default=True,
    help="Port; 0 picks a free one and prints it.",
)
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep profiles in this SQLite file [default: in memory].",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Accept only this key [else FYNO_API_KEY; with neither, any non-empty key].",
)
@click.option(
    "--latency-ms",
    default=None,
    metavar="MIN[-MAX]",
    help="Wait this long before applying each request.",
)
@click.option(
    "--fail-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of requests answered 503 (nothing applied).",
)
@click.option(
    "--rate-limit",
    type=float,
    default=0.0,
    show_default=True,
    help="Token bucket of R requests/s (burst R); excess answered 429 with Retry-After: 1.",
)
@click.option(
    "--drop-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of requests applied, then the connection closed without an answer.",
)
@click.option("--seed", type=int, default=None, help="Seed for the fault draws.")
@click.option(
    "--sink", is_flag=True, help="Check and count items without storing profiles (for benchmarks)."
)
def emulator(
    host: str,
    port: int,
    db: Path | None,
    api_key_file: Path | None,
    latency_ms: str | None,
    fail_rate: float,
    rate_limit: float,
    drop_rate: float,
    seed: int | None,
    sink: bool,
) -> None:
    """Serve a local Fyno-compatible API with fault injection, for trying mappings and tests.

    Endpoints: POST /v1/{WSID}/{version}/profiles/properties/batch (and the single-operator ones),
    GET /v1/{WSID}/{version}/profiles/{distinct_id}, GET /_emulator/stats, POST /_emulator/reset.
    """
    from importer.emulator import EmulatorConfig, parse_latency, serve

    try:
        key = _read_key(api_key_file)
        latency = parse_latency(latency_ms) if latency_ms else None
    except ImporterError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(f"--latency-ms: {exc}")
    for name, value in (("--fail-rate", fail_rate), ("--drop-rate", drop_rate)):
        if not 0 <= value <= 1:
            _fail(f"{name} {value}: give a fraction from 0 to 1")
    config = EmulatorConfig(
        host=host,
        port=port,
        api_key=key,
        db=db,
        latency_ms=latency,
        fail_rate=fail_rate,
        rate_limit=rate_limit,
        drop_rate=drop_rate,
        seed=seed,
        sink=sink,
    )

    def ready(url: str) -> None:
        click.echo(f"fyno-import emulator listening on {url}", err=False)
        sys.stdout.flush()

    serve(config, ready)


# --- mapping tooling ------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def mapping() -> None:
    """Write, describe and check mapping files."""


@mapping.command(name="schema", context_settings=CONTEXT)
def mapping_schema() -> None:
    """Print the JSON Schema of mapping files (for editors with a YAML language server).

    Save it (`fyno-import mapping schema > fyno-import.schema.json`) and start a mapping with
    `# yaml-language-server: $schema=fyno-import.schema.json` for completion and checks.
    """
    from importer.mapping import mapping_json_schema

    click.echo(json.dumps(mapping_json_schema(), indent=2, ensure_ascii=False))


@mapping.command(name="check", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("source", required=False)
@_format_opt
def mapping_check(file: Path, source: str | None, fmt: str | None) -> None:
    """Check mapping FILE (keys, values, operator and type combinations) and, given SOURCE, that
    the source has every column it reads with a usable type. Reads no rows; exit 0 or 2.
    """
    from importer.mapping_tools import check_mapping

    try:
        message = check_mapping(file, source, fmt)
    except ImporterError as exc:
        _fail(str(exc), exc.exit_code)
    _console().print(message, markup=False)


@mapping.command(name="init", context_settings=CONTEXT)
@click.argument("source")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the mapping to this file [default: stdout].",
)
@click.option("--force", is_flag=True, help="With -o: overwrite an existing file.")
@click.option(
    "--id-column", default=None, help="The distinct_id column [default: guessed, e.g. user_id]."
)
@_format_opt
def mapping_init(
    source: str, output: Path | None, force: bool, id_column: str | None, fmt: str | None
) -> None:
    """Print a commented starter mapping from SOURCE's columns (types guessed from the data).

    Every column is listed with op: set; comments show a sample value, empty cells and list-like
    columns. Review it, then `fyno-import validate SOURCE -m FILE`.
    """
    from importer.mapping_tools import starter_mapping

    if output is not None and output.exists() and not force:
        _fail(f"{output} exists: pass --force to overwrite it, or choose another file")
    try:
        text = starter_mapping(
            source, fmt=fmt, id_column=id_column, mapping_name=str(output) if output else None
        )
    except ImporterError as exc:
        _fail(str(exc), exc.exit_code)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        _console().print(f"wrote {output}", markup=False)


if __name__ == "__main__":
    main()
