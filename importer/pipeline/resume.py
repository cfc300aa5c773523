"""The rules that make a run resumable: which run to resume, which sources are already imported,
which chunks a killed process left in flight. Each rule lives here once, used by `run` and
`retry` alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from importer import config
from importer.errors import RunConflictError
from importer.events import Reporter, SkipReason, SourceSkipped
from importer.ledger import Ledger, RunInfo
from importer.pipeline.reading import Prepared
from importer.pipeline.summary import RunSummary, SourceSummary

STRANDED_ADD = "was in flight when an earlier try stopped; carries $add, so it is not resent"


def source_key(fingerprints: Sequence[str], shard: config.Shard | None) -> str:
    """Identifies "the same command again": the ordered source fingerprints and the shard."""
    data = json.dumps({"sources": list(fingerprints), "shard": list(shard) if shard else None})
    return hashlib.sha256(data.encode()).hexdigest()


def resumable_run(
    ledger: Ledger,
    key: str,
    *,
    mapping_hash: str,
    chunk_key: str,
    force: bool,
    changed_only: bool = False,
) -> RunInfo | None:
    """The unfinished run of these sources to resume, if any; one with other settings is an
    error (exit 2) unless ``force`` starts afresh.

    Under --changed-only a run that finished is done even with failed chunks: it advanced the
    state for what was accepted, and the next run's comparison sends the rest again.
    """
    run = ledger.find_resumable_run(key)
    if run is None or force or (changed_only and run.status.is_finished):
        return None
    if run.mapping_hash != mapping_hash or run.chunk_key != chunk_key:
        what = "unfinished" if not run.status.is_finished else "left chunks not accepted"
        other = (
            "another mapping"
            if run.mapping_hash != mapping_hash
            else "other chunk settings (batch size, max batch bytes, or --changed-only and the "
            "state it compared with)"
        )
        raise RunConflictError(
            f"run {run.run_id} on these sources {what} and used {other}",
            hint="run it again with its own mapping and settings to finish it (or `retry "
            f"--run {run.run_id}`), or pass --force to start afresh",
        )
    return run


def sources_to_send(
    prepared: list[Prepared], imported: dict[str, str], summary: RunSummary, reporter: Reporter
) -> list[tuple[int, Prepared]]:
    """The sources this run sends, as (index, source): not imported by an earlier run, and each
    content once.

    Chunk ids come from the content, not the path: a second source with the same content would
    reuse the first one's ids, and the ledger could no longer tell their chunks apart (a resume
    would skip the copy). So a source is imported once per run.
    """
    todo: list[tuple[int, Prepared]] = []
    for index, item in enumerate(prepared):
        name = item.source.name
        earlier = imported.get(item.fingerprint)
        twin = next((t.source.name for _, t in todo if t.fingerprint == item.fingerprint), None)
        if earlier is not None:
            skipped = SourceSkipped(name, SkipReason.ALREADY_IMPORTED, earlier)
        elif twin is not None:
            reason = SkipReason.GIVEN_TWICE if twin == name else SkipReason.SAME_CONTENT
            skipped = SourceSkipped(name, reason, twin)
        else:
            summary.sources.append(SourceSummary(source=name))
            todo.append((index, item))
            continue
        summary.sources.append(SourceSummary(source=name, skipped=True))
        summary.sources_skipped += 1
        reporter.emit(skipped)
    if not todo:
        runs = ", ".join(sorted(set(imported.values())))
        raise RunConflictError(
            f"every source was already imported ({runs}); nothing sent",
            hint="pass --force to import them again",
        )
    return todo


def settle_stranded(ledger: Ledger, run_id: str) -> None:
    """Chunks a killed process left in flight: $add ones become ambiguous, idempotent ones stay
    in flight and are resent. The caller holds the run lock, so nothing is sending them now."""
    ledger.settle_stranded(run_id, STRANDED_ADD)
