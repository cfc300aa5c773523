"""`retry`: resend a run's transiently failed chunks from the ledger alone.

The source files may be gone: every chunk that may be resent has its body in the ledger. Chunks
go to the base URL, workspace and version the run went to; refused ones (HTTP 400) are reported,
not resent; ambiguous ones only when asked. A retry that resends anything is recorded in the
ledger (``Ledger.start_retry`` / ``finish_retry``), which keeps the run's summary in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from importer.errors import ImporterError, InterruptedRun, UsageError
from importer.events import (
    ChunksRefused,
    NothingToRetry,
    NullReporter,
    Phase,
    PhaseStarted,
    ProfilesSuperseded,
    Reporter,
    RetryStarted,
    RowsRead,
    RunUnfinished,
)
from importer.ledger import Ledger, RunInfo
from importer.model import Chunk, ChunkStatus, RunStatus
from importer.pipeline.options import RetryOptions, send_config
from importer.pipeline.resume import settle_stranded
from importer.pipeline.signals import sigterm_stops_the_command
from importer.pipeline.summary import RunSummary
from importer.send import Target

if TYPE_CHECKING:  # sending needs httpx: loaded when the retry sends
    from importer.pipeline.sending import Message


def retry_failed(
    options: RetryOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Resend a run's failed chunks (and ambiguous ones, if asked) from the ledger alone."""
    with sigterm_stops_the_command():
        return _retry_failed(options, summary, reporter or NullReporter())


def _retry_failed(options: RetryOptions, summary: RunSummary, reporter: Reporter) -> RunSummary:
    summary.ledger = str(options.ledger)
    with Ledger.open(options.ledger, create=False) as ledger:
        ledger.lock_for_run()
        run = ledger.get_run(options.run_id) if options.run_id else ledger.latest_run_to_retry()
        if run is None:
            reporter.emit(NothingToRetry(str(options.ledger)))
            return summary
        summary.run_id = run.run_id
        reporter.emit(RetryStarted(run.run_id))
        target = _recorded_target(run, options)
        if not run.status.is_finished:
            reporter.emit(RunUnfinished(run.run_id, str(run.status)))
        settle_stranded(ledger, run.run_id)
        to_send = _count_what_is_left(ledger, run.run_id, options, summary, reporter)
        if to_send:
            with _retry_recorded(ledger, run.run_id, options, summary, to_send):
                _resend(ledger, run.run_id, options, target, summary, reporter)
    return summary


@contextlib.contextmanager
def _retry_recorded(
    ledger: Ledger, run_id: str, options: RetryOptions, summary: RunSummary, chunks: int
) -> Iterator[None]:
    """The resending inside, between the retry's record in the ledger and its end there.

    Closing the record brings the run's stored summary up to date with what was resent. A
    failure to write that last line is not raised over the retry's own outcome.
    """
    retry = ledger.start_retry(run_id, chunks=chunks, include_ambiguous=options.include_ambiguous)
    error: ImporterError | None = None
    try:
        yield
    except ImporterError as exc:
        error = exc
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        error = InterruptedRun("interrupted: chunks still in flight stay marked in the ledger")
        raise error from None
    finally:
        with contextlib.suppress(ImporterError):
            ledger.finish_retry(retry, _ended(error), summary.as_json(error))


def _ended(error: ImporterError | None) -> RunStatus:
    """How a retry that stopped on ``error`` (None: none) ended; the rule `run` follows too."""
    if isinstance(error, InterruptedRun):
        return RunStatus.INTERRUPTED
    return RunStatus.FINISHED if error is None else RunStatus.ABORTED


def _recorded_target(run: RunInfo, options: RetryOptions) -> Target:
    """Where the run went; a different target given on the command line is a usage error."""
    for name, given, recorded in (
        ("base URL", options.base_url, run.base_url),
        ("workspace", options.workspace, run.workspace),
        ("API version", options.api_version, run.api_version),
    ):
        if given is not None and given.rstrip("/") != recorded.rstrip("/"):
            raise UsageError(
                f"run {run.run_id} was sent to {name} {recorded!r}, not {given!r}; "
                "retry resends to where the run went",
                hint=f"drop the {name} option, or start a new run for the other target",
            )
    return Target(
        base_url=run.base_url,
        workspace=run.workspace,
        api_version=run.api_version,
        api_key=options.api_key,
    ).check()


def _count_what_is_left(
    ledger: Ledger, run_id: str, options: RetryOptions, summary: RunSummary, reporter: Reporter
) -> int:
    """Count the chunks to resend, the refused ones and the ambiguous ones left alone."""
    statuses = ledger.chunk_statuses(run_id)
    include = options.include_ambiguous
    # Ids only: the bodies stay in the ledger until the sender is ready for each one, so a run
    # that failed wholesale (an outage) is retried in bounded memory.
    to_send = [
        cid for cid, status in statuses.items() if status.resendable(include_ambiguous=include)
    ]
    refused = sum(1 for status in statuses.values() if status is ChunkStatus.REFUSED)
    if refused:
        reporter.emit(ChunksRefused(refused))
    summary.add_refused(refused)
    if not include:
        summary.chunks_ambiguous += sum(1 for s in statuses.values() if s is ChunkStatus.AMBIGUOUS)
    summary.chunks_total = len(to_send)
    summary.profiles_superseded = ledger.profiles_superseded(run_id, to_send)
    if summary.profiles_superseded:
        reporter.emit(ProfilesSuperseded(summary.profiles_superseded))
    return len(to_send)


def _resend(
    ledger: Ledger,
    run_id: str,
    options: RetryOptions,
    target: Target,
    summary: RunSummary,
    reporter: Reporter,
) -> None:
    from importer.pipeline.sending import ChunkReady, LedgerRecorder, send_produced

    reporter.emit(PhaseStarted(Phase.RETRYING, None))
    statuses = set(ChunkStatus.resendable_set(include_ambiguous=options.include_ambiguous))

    def produce(put: Callable[[Message], None], stop: threading.Event) -> None:
        for chunk in ledger.load_chunks(run_id, statuses):
            if stop.is_set():
                return
            put(ChunkReady(chunk))

    def on_message(message: object) -> Chunk | None:
        assert isinstance(message, ChunkReady)
        reporter.emit(RowsRead(message.chunk.items))
        return message.chunk

    stopped = asyncio.run(
        send_produced(
            produce,
            on_message,
            target=target,
            config=send_config(options.settings),
            recorder=LedgerRecorder(ledger, run_id, reporter, secret=target.api_key),
            reporter=reporter,
            summary=summary,
        )
    )
    if stopped:
        raise InterruptedRun("interrupted: no new requests were started")
