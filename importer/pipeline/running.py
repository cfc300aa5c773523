"""`run`: validate every source, then send the chunks the ledger does not show as settled.

Pass 1 (``validating``) reads every source before the first request; pass 2 (``building``)
rebuilds the same chunks in a reader thread and ``sending`` sends them. The ledger makes the run
resumable: the same command again skips what was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from importer import config
from importer.errors import ImporterError, InterruptedRun, UsageError
from importer.events import ChunkSettled, NullReporter, Phase, PhaseStarted, Reporter, RunStarted
from importer.ledger import Ledger, RunInfo, pack_chunk
from importer.model import Chunk, ChunkStatus, RunStatus
from importer.pipeline.building import source_chunks
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import Prepared, close_all, open_sources, prepare_all
from importer.pipeline.resume import (
    resumable_run,
    settle_stranded,
    source_key,
    sources_to_send,
)
from importer.pipeline.sending import (
    ChunkReady,
    LedgerRecorder,
    Message,
    SourceChunked,
    send_produced,
)
from importer.pipeline.signals import sigterm_stops_the_command
from importer.pipeline.summary import RunSummary
from importer.pipeline.validating import check_reject_rate, validate, validate_all
from importer.send import Target


def run_import(
    options: ImportOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Validate every source, then send the chunks the ledger does not show as accepted."""
    reporter = reporter or NullReporter()
    if options.dry_run:
        return validate(options, summary, reporter)
    with sigterm_stops_the_command():
        if options.emulator:
            return _run_into_emulator(options, summary, reporter)
        if options.target is None:
            raise UsageError(
                "no API target: set FYNO_API_KEY and FYNO_WORKSPACE_ID, or use --emulator"
            )
        ledger = options.ledger or config.default_ledger_path(options.shard)
        return _run(options, summary, reporter, options.target.check(), ledger)


def _run_into_emulator(
    options: ImportOptions, summary: RunSummary, reporter: Reporter
) -> RunSummary:
    from importer.emulator import EmulatorConfig, EmulatorServer

    with (
        tempfile.TemporaryDirectory(prefix="fyno-import-emulator-") as scratch,
        EmulatorServer(EmulatorConfig(port=0)) as server,
    ):
        target = Target.emulator(server.url)
        ledger = options.ledger or Path(scratch) / "emulator.ledger.db"
        summary.ledger_temporary = options.ledger is None
        _run(options, summary, reporter, target, ledger)
        for distinct_id in _first_ids(options, options.show_profiles):
            profile = server.profile(distinct_id, workspace=target.workspace)
            summary.profiles[distinct_id] = profile
    return summary


def _first_ids(options: ImportOptions, count: int) -> list[str]:
    """The first ``count`` ids of the first source (for --emulator --show-profiles)."""
    if count <= 0:
        return []
    from importer.sources import resolve_sources

    sources, _ = resolve_sources(options.sources, options=options.mapping.source)
    if not sources:
        return []
    frame = sources[0].scan().select(options.mapping.distinct_id).head(count * 4).collect()
    ids = [str(v).strip() for v in frame.to_series().to_list() if v is not None and str(v).strip()]
    return ids[:count]


def _run(
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    target: Target,
    ledger_path: Path,
) -> RunSummary:
    sources = open_sources(
        options.sources, options.mapping, options.format, reporter, options.settings.allow_empty
    )
    try:
        prepared = prepare_all(sources, options.mapping, options.settings, reporter)
        if not prepared:  # no files, or only empty ones, and --allow-empty: nothing to do
            return summary
        summary.ledger = str(ledger_path)
        with Ledger.open(ledger_path) as ledger:
            ledger.lock_for_run()
            run, todo = _plan(ledger, prepared, options, summary, reporter)
            run_id = _start(ledger, run, prepared, todo, options, summary, reporter, target)
            _send_run(ledger, run_id, prepared, todo, options, summary, reporter, target)
    finally:
        close_all(sources)
    return summary


def _plan(
    ledger: Ledger,
    prepared: list[Prepared],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
) -> tuple[RunInfo | None, list[Prepared]]:
    """The run to resume (or None) and the sources to send, validated (pass 1)."""
    fingerprints = [p.fingerprint for p in prepared]
    run = resumable_run(
        ledger,
        source_key(fingerprints, options.shard),
        mapping_hash=options.mapping.fingerprint(),
        chunk_key=options.chunk_settings().key(),
        force=options.force,
    )
    imported = (
        {}
        if options.force
        else ledger.imported_sources(fingerprints, exclude_run=run.run_id if run else None)
    )
    todo = sources_to_send(prepared, imported, summary, reporter)
    validate_all(todo, options, summary, reporter)
    check_reject_rate(summary, options.settings)
    return run, todo


def _start(
    ledger: Ledger,
    run: RunInfo | None,
    prepared: list[Prepared],
    todo: list[Prepared],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    target: Target,
) -> str:
    """Resume ``run``, or record a new one; mark it running and report its start."""
    if run is not None:
        run_id = run.run_id
        settle_stranded(ledger, run_id)
    else:
        run_id = ledger.create_run(
            source_key=source_key([p.fingerprint for p in prepared], options.shard),
            mapping_hash=options.mapping.fingerprint(),
            chunk_key=options.chunk_settings().key(),
            shard=f"{options.shard[0]}/{options.shard[1]}" if options.shard else None,
            settings=options.settings.model_dump(mode="json"),
            base_url=target.base_url,
            workspace=target.workspace,
            api_version=target.api_version,
            sources=[(p.source.name, p.fingerprint) for p in prepared],
        )
    summary.run_id = run_id
    ledger.mark_run(run_id, RunStatus.RUNNING)
    reporter.emit(
        RunStarted(
            run_id=run_id,
            resumed=run is not None,
            sources=tuple(p.source.name for p in todo),
            rows_valid=summary.rows_valid,
            chunks_total=summary.chunks_total,
        )
    )
    return run_id


def _producer(
    prepared: list[Prepared],
    todo: list[Prepared],
    options: ImportOptions,
    reporter: Reporter,
    known: dict[str, ChunkStatus],
) -> Callable[[Callable[[Message], None], threading.Event], None]:
    """Pass 2 in the reader thread: every chunk in order, compressed when it will be sent."""
    indexes = {id(p): i for i, p in enumerate(prepared)}

    def produce(put: Callable[[Message], None], stop: threading.Event) -> None:
        for item in todo:
            index = indexes[id(item)]
            count = 0
            for chunk in source_chunks(index, item, options, reporter):
                if stop.is_set():
                    return
                count += 1
                status = known.get(chunk.chunk_id)
                settled = status is not None and status.is_settled
                # zlib releases the GIL: compressing here keeps it off the event loop
                put(ChunkReady(chunk if settled else _packed(chunk)))
            put(SourceChunked(index, count))

    return produce


def _packed(chunk: Chunk) -> Chunk:
    return replace(chunk, packed=pack_chunk(chunk))


class _Resume:
    """On the event loop: what to do with each produced message, given the ledger's record."""

    def __init__(
        self,
        ledger: Ledger,
        run_id: str,
        prepared: list[Prepared],
        known: dict[str, ChunkStatus],
        summary: RunSummary,
        reporter: Reporter,
    ) -> None:
        self.ledger, self.run_id, self.prepared = ledger, run_id, prepared
        self.known, self.summary, self.reporter = known, summary, reporter
        self.per_source = {s.source: s for s in summary.sources if not s.skipped}

    def __call__(self, message: ChunkReady | SourceChunked) -> Chunk | None:
        """The chunk to send, or None when it was settled in an earlier try."""
        if isinstance(message, SourceChunked):
            counts = self.per_source[self.prepared[message.index].source.name]
            self.ledger.set_source_counts(
                self.run_id,
                message.index,
                rows_read=counts.rows_read,
                rows_rejected=counts.rows_rejected,
                chunks_total=message.chunks,
            )
            return None
        chunk = message.chunk
        status = self.known.get(chunk.chunk_id)
        if status is None or not status.is_settled:
            return chunk
        if status is ChunkStatus.ACCEPTED:
            self.summary.chunks_skipped += 1
        elif status is ChunkStatus.AMBIGUOUS:
            self.summary.chunks_ambiguous += 1
        elif status is ChunkStatus.REFUSED:
            self.summary.add_refused(1)
        self.reporter.emit(
            ChunkSettled(self.run_id, chunk.chunk_id, chunk.source, status, earlier=True)
        )
        return None


def _send_run(
    ledger: Ledger,
    run_id: str,
    prepared: list[Prepared],
    todo: list[Prepared],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    target: Target,
) -> None:
    known = ledger.chunk_statuses(run_id)
    reporter.emit(PhaseStarted(Phase.SENDING, summary.rows_read))
    error: ImporterError | None = None
    try:
        stopped = asyncio.run(
            send_produced(
                _producer(prepared, todo, options, reporter, known),
                _Resume(ledger, run_id, prepared, known, summary, reporter),
                target=target,
                config=options.send_config(),
                recorder=LedgerRecorder(ledger, run_id, reporter, secret=target.api_key),
                reporter=reporter,
                summary=summary,
            )
        )
        if stopped:
            raise InterruptedRun(
                "interrupted: no new requests were started; in-flight ones were settled"
            )
    except ImporterError as exc:
        error = exc
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        error = InterruptedRun("interrupted: chunks still in flight stay marked in the ledger")
        raise error from None
    finally:
        _record_end(ledger, run_id, summary, error)


def _record_end(
    ledger: Ledger, run_id: str, summary: RunSummary, error: ImporterError | None
) -> None:
    """The run's final status and summary in the ledger.

    Every chunk is recorded by now; a failure to write this last line leaves the run unfinished
    in the ledger (resumable), and is not raised over the run's own outcome.
    """
    if error is None:
        status = RunStatus.FINISHED
    elif isinstance(error, InterruptedRun):
        status = RunStatus.INTERRUPTED
    else:
        status = RunStatus.ABORTED
    with contextlib.suppress(ImporterError):
        ledger.mark_run(run_id, status, summary.as_json(error))
