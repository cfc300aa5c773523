"""The two ways the CLI shows a command's events: a progress bar for a person, JSON lines for logs.

``RichReporter`` draws one bar per phase on stderr, with chunk and retry counts beside it, and
prints notices through the bar's console so they do not tear it. ``JsonLogReporter``
(``--log-format json``) writes one JSON object per event on stderr, for log aggregators.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

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

from importer.cli import words
from importer.cli.output import shown, shown_values
from importer.events import (
    ChunkSettled,
    Event,
    PhaseStarted,
    RetryScheduled,
    RetryStarted,
    RowsRead,
    RunStarted,
    SkipReason,
    SourceSkipped,
)
from importer.model import ChunkStatus

if TYPE_CHECKING:
    from importer.pipeline import RunSummary


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

    def emit(self, event: Event) -> None:
        """Draw progress, count chunks and retries, print what a person should read."""
        match event:
            case PhaseStarted(phase=phase, total_rows=total):
                self._phase(str(phase), total)
            case RowsRead(count=count):
                self._rows(count)
            case ChunkSettled(status=status):
                self._chunk(status)
            case RetryScheduled():
                self.retries += 1
                self._update_chunks()
        message = words.notice(event)
        if message is not None and not self.quiet:
            self.console.print(shown(message), markup=False)

    def _phase(self, name: str, total_rows: int | None) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.stop_task(self._task)
        self._task = self._progress.add_task(name, total=total_rows, rate="", chunks="")

    def _rows(self, count: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, count)
            task = self._progress.tasks[-1]
            speed = task.finished_speed or task.speed
            self._progress.update(self._task, rate=f"{speed:,.0f}/s" if speed else "")

    def _chunk(self, status: ChunkStatus) -> None:
        if status is ChunkStatus.ACCEPTED:
            self.accepted += 1
        elif status is ChunkStatus.AMBIGUOUS:
            self.ambiguous += 1
        else:
            self.failed += 1
        self._update_chunks()

    def _update_chunks(self) -> None:
        if self._progress is not None and self._task is not None:
            text = f"chunks ok {self.accepted} failed {self.failed}"
            if self.ambiguous:
                text += f" ambiguous {self.ambiguous}"
            text += f" retries {self.retries}"
            self._progress.update(self._task, chunks=text)


Level = Literal["info", "warning", "error"]
_LEVELS: dict[Level, int] = {"info": 0, "warning": 1, "error": 2}


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

    def write(self, event: str, level: Level = "info", **data: Any) -> None:
        """Write one event line (unless --quiet drops its level)."""
        if _LEVELS[level] < self.min_level and event != "run_finished":
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line: dict[str, Any] = {"ts": now, "level": level, "event": event, "command": self.command}
        if self.run_id is not None:
            line["run_id"] = self.run_id
        line.update(data)
        text = json.dumps(shown_values(line), ensure_ascii=False, default=str)
        with self._lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def emit(self, event: Event) -> None:
        """One line per event worth logging; progress counts are left to run_finished."""
        message = words.notice(event)
        if message is not None:
            self.write("notice", message=message)
        match event:
            case PhaseStarted(phase=phase, total_rows=total):
                self.write("phase", phase=str(phase), rows_total=total)
            case RunStarted():
                self.run_id = event.run_id
                self.write(
                    "run_started",
                    resumed=event.resumed,
                    sources=list(event.sources),
                    rows_valid=event.rows_valid,
                    chunks_total=event.chunks_total,
                )
            case RetryStarted(run_id=run_id):
                self.run_id = run_id
                self.write("retry_started")
            case SourceSkipped() if event.reason is not SkipReason.EMPTY_FILE:
                if event.reason is SkipReason.ALREADY_IMPORTED:
                    self.write("source_skipped", source=event.source, imported_by=event.other)
                else:
                    self.write("source_skipped", source=event.source, same_content_as=event.other)
            case ChunkSettled() if event.needs_attention and not event.earlier:
                self._settled(event)
            case RetryScheduled(reason=reason):
                self.write("retry", "warning", reason=reason)

    def _settled(self, event: ChunkSettled) -> None:
        self.run_id = event.run_id
        self.write(
            "chunk_settled",
            "warning",
            chunk_id=event.chunk_id,
            source=event.source,
            status=str(event.status),
            http_status=event.http_status,
            attempts=event.attempts,
            item_errors=event.item_errors,
            error=event.error,
        )

    def finished(self, summary: RunSummary) -> None:
        """The last line: the whole summary, at a level that follows the exit code."""
        self.run_id = summary.run_id or self.run_id
        data = summary.as_json()
        data.pop("run_id", None)
        code = summary.exit_code
        level: Level = "info" if code == 0 else "warning" if code == 1 else "error"
        self.write("run_finished", level, **data)
