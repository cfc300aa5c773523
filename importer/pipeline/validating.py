"""Pass 1: read and validate every source completely, before anything is sent.

It writes the rejects file, counts rows, items and the chunks they would make, and enforces the
reject rate; ``validate`` (the command, and ``run --dry-run``) is this pass alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from importer.chunker import Chunker
from importer.config.settings import Settings
from importer.errors import RejectRateError, SourceError
from importer.events import NullReporter, Phase, PhaseStarted, Reporter, RowsRead
from importer.pipeline.building import new_chunker
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import (
    Prepared,
    RejectsWriter,
    close_all,
    open_sources,
    prepare_all,
    row_total,
    transformed,
)
from importer.pipeline.signals import sigterm_stops_the_command
from importer.pipeline.summary import RunSummary, SourceSummary

if TYPE_CHECKING:
    from importer.pipeline.spill import ItemSpill
    from importer.sync import SyncRun


def validate(
    options: ImportOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Read and validate the sources; count the chunks they would make. Sends nothing."""
    with sigterm_stops_the_command():
        return _validate(options, summary, reporter or NullReporter())


def _validate(options: ImportOptions, summary: RunSummary, reporter: Reporter) -> RunSummary:
    summary.dry_run = options.dry_run
    sources = open_sources(
        options.sources, options.mapping, options.format, reporter, options.settings.allow_empty
    )
    try:
        prepared = prepare_all(sources, options.mapping, options.settings, reporter)
        summary.sources = [SourceSummary(source=p.source.name) for p in prepared]
        if options.dry_run and options.changed_only:
            _dry_run_changed(list(enumerate(prepared)), options, summary, reporter)
            return summary
        validate_all(list(enumerate(prepared)), options, summary, reporter)
        if options.dry_run:
            check_reject_rate(summary, options.settings)
    finally:
        close_all(sources)
    return summary


def _dry_run_changed(
    todo: list[tuple[int, Prepared]],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
) -> None:
    """--dry-run --changed-only: compare with the state and count what would be sent; the state
    is read, never written."""
    from importer.pipeline.building import BuildCounts, import_chunks
    from importer.pipeline.syncing import compare, expected_rows, opened_sync

    prepared = [p for _, p in todo]
    target = options.target.check() if options.target is not None else None
    with opened_sync(options, target, summary, rows_hint=expected_rows(prepared)) as sync:
        assert sync is not None
        validate_all(todo, options, summary, reporter, sync)
        check_reject_rate(summary, options.settings)
        changed = compare(sync, summary)
        counts = BuildCounts()
        for _ in import_chunks(
            todo, options, NullReporter(), changed=changed, counts=counts, build_bodies=False
        ):
            pass
    summary.chunks_total, summary.bytes_total = counts.chunks, counts.bytes
    summary.items_total, summary.rows_unchanged = counts.items, counts.rows_unchanged


def validate_all(
    todo: list[tuple[int, Prepared]],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    sync: SyncRun | None = None,
    spill: ItemSpill | None = None,
) -> None:
    """Pass 1 over the sources to send, (index, source) in order: the rejects file, row counts,
    and the items and chunks they make (cut over the whole import, as pass 2 will); under
    --changed-only, each valid row's contributions go to ``sync``; the items to ``spill``."""
    reporter.emit(PhaseStarted(Phase.VALIDATING, row_total([p for _, p in todo])))
    writer = RejectsWriter(options.rejects)
    summary.rejects = str(options.rejects)
    chunker = new_chunker(todo, options, build_bodies=False)
    try:
        for index, item in todo:
            per_source = summary.sources[index]
            _validate_source(
                index, item, per_source, options, summary, reporter, writer, chunker, sync, spill
            )
        for _ in chunker.finish():
            pass
    finally:
        writer.close()
        summary.total_rows()
    summary.chunks_total += chunker.chunks
    summary.bytes_total += chunker.bytes


def _validate_source(
    index: int,
    item: Prepared,
    per_source: SourceSummary,
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    writer: RejectsWriter,
    chunker: Chunker,
    sync: SyncRun | None,
    spill: ItemSpill | None,
) -> None:
    seen = [0]  # rows in the file, whatever the shard
    for batch, result in transformed(item, options.shard, seen, contribute=sync is not None):
        if sync is not None:
            sync.contribute(item.transformer, result, index)
        if spill is not None:
            spill.write(index, batch.height, result.items)
        writer.write(item.source.name, result.rejects)
        summary.add_rows(
            per_source,
            read=batch.height,
            rejected=result.rejects.height,
            valid=result.rows_valid,
            filtered=result.rows_filtered,
        )
        summary.items_total += result.items.height
        for _ in chunker.add(result.items, index):
            pass
        reporter.emit(RowsRead(batch.height))
    # A file whose rows all fall in other shards is not empty: with --shard K/N over a small
    # file, some shards simply have nothing to send.
    if seen[0] == 0 and not options.settings.allow_empty:
        raise SourceError(
            f"{item.source.name}: no data rows (only a header)",
            hint="pass --allow-empty if an empty export is expected",
        )


def check_reject_rate(summary: RunSummary, settings: Settings) -> None:
    """Stop before sending when more rows are invalid than --max-reject-rate allows.

    The rate is a fraction of the rows the mapping's filter kept (valid + rejected): a row the
    filter leaves out is neither, so a filter that drops most of a file cannot hide its bad rows.
    """
    rejected = summary.rows_rejected
    kept = summary.rows_read - summary.rows_filtered
    if kept and rejected / kept > settings.max_reject_rate:
        of = f"{kept} rows the filter kept" if summary.rows_filtered else f"{kept} rows"
        raise RejectRateError(
            f"{rejected} of {of} are invalid ({rejected / kept:.1%}), over "
            f"--max-reject-rate {settings.max_reject_rate:g}; nothing was sent",
            hint=f"see the reasons in {summary.rejects}; fix the export or raise --max-reject-rate",
        )
