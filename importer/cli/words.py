"""The library's events in words: the sentences a person reads on the terminal (and the
``message`` of a ``notice`` line with ``--log-format json``)."""

from __future__ import annotations

from importer.events import (
    ChunksRefused,
    Event,
    FileIgnored,
    NothingToRetry,
    ProfilesSuperseded,
    RunStarted,
    RunUnfinished,
    SkipReason,
    SourceSkipped,
    Stopping,
)


def notice(event: Event) -> str | None:
    """The sentence for an event a person should read, or None for progress and counts."""
    match event:
        case FileIgnored(path=path, reason=reason):
            return f"ignored {path}: {reason}"
        case SourceSkipped():
            return _skipped(event)
        case RunStarted(run_id=run_id, resumed=True):
            return f"resuming run {run_id}"
        case Stopping():
            return "stopping: no new requests; waiting for those in flight…"
        case NothingToRetry(ledger=ledger):
            return f"no run in {ledger} has failed chunks: nothing to retry"
        case RunUnfinished(run_id=run_id, status=status):
            return (
                f"run {run_id} did not finish ({status}): chunks it never sent are not in the "
                "ledger; run the same `run` command again to send them"
            )
        case ChunksRefused(count=count):
            return (
                f"{count} chunk(s) were refused by the API (HTTP 400) and are not resent; "
                "`fyno-import ledger export --failures FILE` lists their rows"
            )
        case ProfilesSuperseded(count=count):
            return (
                f"{count} profile(s) in these chunks received later updates; resending now may "
                "overwrite newer values with older ones"
            )
    return None


def _skipped(event: SourceSkipped) -> str:
    once = "; a source is imported once per run"
    match event.reason:
        case SkipReason.EMPTY_FILE:
            return f"skipped {event.source}: empty file (--allow-empty)"
        case SkipReason.GIVEN_TWICE:
            return f"skipped {event.source}: given twice{once}"
        case SkipReason.SAME_CONTENT:
            return f"skipped {event.source}: same content as {event.other}{once}"
    return (
        f"skipped {event.source}: already imported by run {event.other} (--force imports it again)"
    )
