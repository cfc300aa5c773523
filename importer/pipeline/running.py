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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from importer import config
from importer.errors import ImporterError, InterruptedRun, UsageError
from importer.events import ChunkSettled, NullReporter, Phase, PhaseStarted, Reporter, RunStarted
from importer.ledger import Ledger, RunInfo, pack_chunk
from importer.model import Chunk, ChunkStatus, RunStatus
from importer.pipeline.building import BuildCounts, ChangedOnly, SourceChunked, import_chunks
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import (
    Prepared,
    close_all,
    open_sources,
    prepare,
    prepare_all,
    transformed,
)
from importer.pipeline.resume import (
    resumable_run,
    settle_stranded,
    source_key,
    sources_to_send,
)
from importer.pipeline.signals import sigterm_stops_the_command
from importer.pipeline.spill import ItemSpill
from importer.pipeline.summary import RunSummary
from importer.pipeline.syncing import (
    advance,
    check_sync_options,
    compare,
    expected_rows,
    opened_sync,
)
from importer.pipeline.validating import check_reject_rate, validate, validate_all
from importer.send import Target
from importer.sync import SyncRun

if TYPE_CHECKING:  # sending needs httpx: loaded by the commands that send, when they send
    from importer.pipeline.sending import ChunkReady, Message, Produce


def run_import(
    options: ImportOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Validate every source, then send the chunks the ledger does not show as accepted."""
    reporter = reporter or NullReporter()
    check_sync_options(options)
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
    """The first ``count`` ids the import sent (for --emulator --show-profiles)."""
    if count <= 0:
        return []
    from importer.sources import resolve_sources

    sources, _ = resolve_sources(options.sources, options=options.mapping.source)
    if not sources:
        return []
    prepared = prepare(sources[0], options.mapping, options.settings)
    ids: list[str] = []
    for _batch, result in transformed(prepared, options.shard):
        ids += [i for i in dict.fromkeys(result.items["distinct_id"].to_list()) if i not in ids]
        if len(ids) >= count:
            break
    close_all(sources)
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
            with opened_sync(options, target, summary, rows_hint=expected_rows(prepared)) as sync:
                run = _Run(ledger, options, summary, reporter, target, prepared, sync)
                try:
                    resumed = run.plan()
                    if run.finished_by_its_state(resumed):
                        return summary
                    run.start(resumed)
                    run.send()
                finally:
                    if run.spill is not None:
                        run.spill.close()
    finally:
        close_all(sources)
    return summary


@dataclass
class _Run:
    """One run of `run`: its ledger, options, summary and sources, from plan to last record."""

    ledger: Ledger
    options: ImportOptions
    summary: RunSummary
    reporter: Reporter
    target: Target
    prepared: list[Prepared]  # every source of the command line, in order
    sync: SyncRun | None = None  # --changed-only
    todo: list[tuple[int, Prepared]] = field(default_factory=list)  # those this run sends
    run_id: str = ""
    changed: ChangedOnly | None = None  # --changed-only: what the comparison decided
    counts: BuildCounts = field(default_factory=BuildCounts)
    spill: ItemSpill | None = None  # pass 1's items, read back by pass 2

    @property
    def chunk_key(self) -> str:
        """The chunk settings of this run (under --changed-only, with the state cut against)."""
        return self.options.chunk_settings(self.sync.key if self.sync else None).key()

    def plan(self) -> RunInfo | None:
        """Validate the sources to send (pass 1) and, under --changed-only, compare them with
        the state; the unfinished run to resume, or None."""
        options, fingerprints = self.options, [p.fingerprint for p in self.prepared]
        key = source_key(fingerprints, options.shard)
        if self.sync is not None:
            written = self._advanced_by(key)
            if written is not None:  # nothing to validate or send: finished_by_its_state ends it
                return written
        run = resumable_run(
            self.ledger,
            key,
            mapping_hash=options.mapping.fingerprint(),
            chunk_key=self.chunk_key,
            force=options.force,
            changed_only=self.sync is not None,
        )
        # Under --changed-only an identical source is not "imported": the state decides what to send
        imported = (
            {}
            if options.force or self.sync is not None
            else self.ledger.imported_sources(fingerprints, exclude_run=run.run_id if run else None)
        )
        self.todo = sources_to_send(self.prepared, imported, self.summary, self.reporter)
        if self.sync is None:  # --changed-only masks what is unchanged: it builds again
            self.spill = ItemSpill()
        validate_all(self.todo, options, self.summary, self.reporter, self.sync, self.spill)
        check_reject_rate(self.summary, options.settings)
        if self.sync is not None:
            self.changed = compare(self.sync, self.summary)
        return run

    def _advanced_by(self, key: str) -> RunInfo | None:
        """The unfinished run of these sources whose own items the state already holds (it was
        stopped between writing the state and recording its end)."""
        assert self.sync is not None
        manifest = self.sync.state.manifest
        run = self.ledger.find_resumable_run(key)
        if run is None or run.status.is_finished or manifest is None:
            return None
        if manifest.advanced_by != run.run_id:
            return None
        return run

    def finished_by_its_state(self, resumed: RunInfo | None) -> bool:
        """Finish a run whose state was written: nothing is left to send or to compare."""
        if resumed is None or self.sync is None or self.todo:
            return False
        self.summary.run_id = resumed.run_id
        self.summary.state_advanced = True
        stored = resumed.summary or {}
        for name in ("chunks_total", "chunks_accepted", "items_sent", "bytes_sent"):
            setattr(self.summary, name, int(stored.get(name) or 0))
        self.ledger.mark_run(resumed.run_id, RunStatus.FINISHED, self.summary.as_json())
        return True

    def start(self, resumed: RunInfo | None) -> None:
        """Resume the run, or record a new one; mark it running and report its start."""
        options = self.options
        if resumed is not None:
            self.run_id = resumed.run_id
            settle_stranded(self.ledger, self.run_id)
        else:
            self.run_id = self.ledger.create_run(
                source_key=source_key([p.fingerprint for p in self.prepared], options.shard),
                mapping_hash=options.mapping.fingerprint(),
                chunk_key=self.chunk_key,
                shard=f"{options.shard[0]}/{options.shard[1]}" if options.shard else None,
                settings=options.settings.model_dump(mode="json"),
                base_url=self.target.base_url,
                workspace=self.target.workspace,
                api_version=self.target.api_version,
                sources=[(p.source.name, p.fingerprint) for p in self.prepared],
            )
        self.summary.run_id = self.run_id
        self.ledger.mark_run(self.run_id, RunStatus.RUNNING)
        self.reporter.emit(
            RunStarted(
                run_id=self.run_id,
                resumed=resumed is not None,
                sources=tuple(p.source.name for _, p in self.todo),
                rows_valid=self.summary.rows_valid,
                chunks_total=self.summary.chunks_total,
            )
        )

    def send(self) -> None:
        """Pass 2: build the chunks again in a reader thread and send those not settled yet."""
        from importer.pipeline.sending import LedgerRecorder, send_produced

        known = self.ledger.chunk_statuses(self.run_id)
        self.reporter.emit(PhaseStarted(Phase.SENDING, self.summary.rows_read))
        error: ImporterError | None = None
        try:
            stopped = asyncio.run(
                send_produced(
                    self._producer(known),
                    partial(self._on_message, known),
                    target=self.target,
                    config=self.options.send_config(),
                    recorder=LedgerRecorder(
                        self.ledger, self.run_id, self.reporter, secret=self.target.api_key
                    ),
                    reporter=self.reporter,
                    summary=self.summary,
                )
            )
            if stopped:
                raise InterruptedRun(
                    "interrupted: no new requests were started; in-flight ones were settled"
                )
            self._after_sending()
        except ImporterError as exc:
            error = exc
            raise
        except (KeyboardInterrupt, asyncio.CancelledError):
            error = InterruptedRun("interrupted: chunks still in flight stay marked in the ledger")
            raise error from None
        finally:
            self._record_end(error)

    def _after_sending(self) -> None:
        """Under --changed-only: what pass 2 sent, and the state advanced to it."""
        if self.sync is None:
            return
        self.summary.chunks_total = self.counts.chunks
        self.summary.items_total, self.summary.bytes_total = self.counts.items, self.counts.bytes
        self.summary.rows_unchanged = self.counts.rows_unchanged
        advance(self.sync, self.ledger, self.run_id, self.options, self.target, self.summary)

    def _producer(self, known: dict[str, ChunkStatus]) -> Produce:
        """Pass 2 in the reader thread: every chunk in order, compressed when it will be sent."""
        from importer.pipeline.sending import ChunkReady

        def produce(put: Callable[[Message], None], stop: threading.Event) -> None:
            chunks = import_chunks(
                self.todo,
                self.options,
                self.reporter,
                changed=self.changed,
                counts=self.counts,
                spill=self.spill,
            )
            for made in chunks:
                if stop.is_set():
                    return
                if isinstance(made, SourceChunked):
                    put(made)
                    continue
                status = known.get(made.chunk_id)
                if status is not None and status.is_settled:
                    put(ChunkReady(made))
                else:  # zstd releases the GIL: compressing here keeps it off the event loop
                    put(ChunkReady(replace(made, packed=pack_chunk(made))))

        return produce

    def _on_message(
        self, known: dict[str, ChunkStatus], message: ChunkReady | SourceChunked
    ) -> Chunk | None:
        """On the event loop: the chunk to send, or None when it was settled in an earlier try."""
        if isinstance(message, SourceChunked):
            counts = self.summary.sources[message.index]
            self.ledger.set_source_counts(
                self.run_id,
                message.index,
                rows_read=counts.rows_read,
                rows_rejected=counts.rows_rejected,
                first_chunk=message.first_chunk,
                last_chunk=message.last_chunk,
            )
            return None
        chunk = message.chunk
        status = known.get(chunk.chunk_id)
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

    def _record_end(self, error: ImporterError | None) -> None:
        """The run's final status and summary in the ledger.

        Every chunk is recorded by now; a failure to write this last line leaves the run
        unfinished in the ledger (resumable), and is not raised over the run's own outcome.
        """
        if error is None:
            status = RunStatus.FINISHED
        elif isinstance(error, InterruptedRun):
            status = RunStatus.INTERRUPTED
        else:
            status = RunStatus.ABORTED
        with contextlib.suppress(ImporterError):
            self.ledger.mark_run(self.run_id, status, self.summary.as_json(error))
