"""--changed-only in the pipeline: opening the state, comparing after pass 1, advancing it once
every chunk has its answer. The comparison and the state are ``importer.sync``'s."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import polars as pl

from importer.errors import UsageError
from importer.ledger import Ledger
from importer.pipeline.building import ChangedOnly
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import Prepared
from importer.pipeline.summary import RunSummary
from importer.send import Target
from importer.sync import SyncRun, SyncState, state_files
from importer.sync.state import ID


def check_sync_options(options: ImportOptions) -> None:
    """--full-resync and missing: unset only mean something with --changed-only."""
    if options.changed_only:
        return
    if options.full_resync:
        raise UsageError("--full-resync goes with --changed-only (or changed_only: true)")
    if options.settings.missing == "unset":
        raise UsageError(
            "missing: unset goes with --changed-only (or changed_only: true): only a changed-only "
            "run knows which profiles left the import"
        )


@contextlib.contextmanager
def opened_sync(
    options: ImportOptions, target: Target | None, summary: RunSummary, *, rows_hint: int
) -> Iterator[SyncRun | None]:
    """The run's sync (None without --changed-only), its state locked for the run.

    With --emulator and no --state the state is temporary, as the ledger is: the emulator
    forgets its profiles when the run ends.
    """
    if not options.changed_only:
        yield None
        return
    with contextlib.ExitStack() as stack:
        where = options.state
        if where is None and options.emulator:
            where = stack.enter_context(tempfile.TemporaryDirectory(prefix="fyno-import-state-"))
        where = where or options.state_path()
        summary.state = where
        files = state_files(where, options.mapping.source.storage_options)
        state = SyncState.open(files, rewrite=options.full_resync)
        stack.callback(state.close)
        if target is not None:
            state.check(target, options.shard)
        sync = SyncRun(
            state,
            mapping=options.mapping,
            full_resync=options.full_resync,
            missing=options.settings.missing,
            max_missing_rate=options.settings.max_missing_rate,
            expected_rows=rows_hint,
        )
        stack.callback(sync.close)
        yield sync


def compare(sync: SyncRun, summary: RunSummary) -> ChangedOnly:
    """After pass 1: what to send; the counts go to the summary."""
    comparison = sync.compare()
    summary.profiles_changed = comparison.profiles_changed
    summary.profiles_missing = comparison.profiles_missing
    summary.chunks_full = summary.chunks_total
    return ChangedOnly(key=sync.key, keep=comparison.keep, missing_items=comparison.missing_items)


def advance(
    sync: SyncRun,
    ledger: Ledger,
    run_id: str,
    options: ImportOptions,
    target: Target,
    summary: RunSummary,
) -> None:
    """The state after this run: its accepted items' values (those of profiles in a chunk that
    was not accepted stay as they were)."""
    batches = [pl.Series(ID, ids, dtype=pl.String) for ids in ledger.ids_not_accepted(run_id)]
    failed = pl.DataFrame({ID: pl.concat(batches) if batches else pl.Series(ID, [], pl.String)})
    summary.state_advanced = False
    sync.advance(failed=failed.unique(), target=target, shard=options.shard, run_id=run_id)
    summary.state_advanced = True


def expected_rows(prepared: list[Prepared]) -> int:
    """A guess of the import's rows, to size a new state's partitions: Parquet knows its rows;
    a local CSV is taken at about 100 bytes a row."""
    total = 0
    for item in prepared:
        hint = item.source.row_count_hint()
        if hint is None and not item.source.remote:
            with contextlib.suppress(OSError):
                hint = os.path.getsize(item.source.name) // 100
        total += hint or 0
    return total
