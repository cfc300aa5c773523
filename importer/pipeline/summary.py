"""What a command did, as counts: the contract's JSON summary, built up by the stages.

Each stage adds its own part through one method (``add_source``, ``add_send_stats``, …); the
exit code and elapsed time are set once, by ``finish``, at the end of the command.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from importer.errors import ImporterError

if TYPE_CHECKING:
    from importer.send import SendStats


@dataclass
class SourceSummary:
    """Per-source counts in the summary."""

    source: str
    rows_read: int = 0
    rows_rejected: int = 0
    skipped: bool = False


# Fields of RunSummary that are bookkeeping, not part of the JSON summary.
_PRIVATE = ("started", "profiles", "command", "ledger_temporary", "finished", "chunks_full")


@dataclass
class RunSummary:
    """What a command did; ``as_json`` is the contract's JSON summary."""

    command: str
    run_id: str | None = None
    exit_code: int = 0
    error: str | None = None
    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    rows_filtered: int = 0  # left out by the mapping's filter: neither valid nor rejected
    items_sent: int = 0
    bytes_sent: int = 0
    chunks_total: int = 0
    chunks_accepted: int = 0
    chunks_failed: int = 0
    chunks_ambiguous: int = 0
    chunks_skipped: int = 0
    item_errors: int = 0
    retries: int = 0
    sources_skipped: int = 0
    elapsed_s: float = 0.0
    ledger: str | None = None
    rejects: str | None = None
    sources: list[SourceSummary] = field(default_factory=list)
    dry_run: bool = False
    chunks_refused: int = 0
    profiles_superseded: int | None = None
    items_total: int = 0  # items the valid rows make (what would be sent)
    bytes_total: int = 0  # bytes of all chunk bodies (what would be sent)
    rows_unchanged: int = 0  # --changed-only: valid rows that needed nothing sent
    profiles_changed: int = 0  # --changed-only: profiles with something sent
    profiles_missing: int = 0  # --changed-only --missing unset: state profiles not imported
    state: str | None = None  # --changed-only: the state's path or URL
    state_advanced: bool | None = None  # --changed-only: the state was written at the end
    chunks_full: int = 0  # --changed-only: the requests a full import would have made
    profiles: dict[str, Any] = field(default_factory=dict)  # emulator profiles shown by --emulator
    ledger_temporary: bool = False  # --emulator without --ledger: removed when the run ends
    started: float = field(default_factory=time.monotonic, repr=False)
    finished: bool = field(default=False, repr=False)

    # -- what the stages add

    def add_rows(
        self, per_source: SourceSummary, *, read: int, rejected: int, valid: int, filtered: int
    ) -> None:
        """A batch of one source was validated."""
        per_source.rows_read += read
        per_source.rows_rejected += rejected
        self.rows_valid += valid
        self.rows_filtered += filtered

    def total_rows(self) -> None:
        """Sum the per-source row counts into the totals."""
        self.rows_read = sum(s.rows_read for s in self.sources)
        self.rows_rejected = sum(s.rows_rejected for s in self.sources)

    def add_send_stats(self, stats: SendStats) -> None:
        """What one sending pass did."""
        self.chunks_accepted += stats.chunks_accepted
        self.chunks_failed += stats.chunks_failed + stats.chunks_refused
        self.chunks_refused += stats.chunks_refused
        self.chunks_ambiguous += stats.chunks_ambiguous
        self.items_sent += stats.items_sent
        self.bytes_sent += stats.bytes_sent
        self.retries += stats.retries
        self.item_errors += stats.item_errors

    def add_refused(self, count: int) -> None:
        """Chunks refused (HTTP 400) in an earlier try: failed, and not resent."""
        self.chunks_failed += count
        self.chunks_refused += count

    # -- the end

    def outcome(self, error: ImporterError | None = None) -> tuple[int, str | None]:
        """(exit code, error text): 0 clean, 1 partial, 2 or 3 from the error."""
        if error is not None:
            return error.exit_code, str(error)
        problems = self.rows_rejected or self.chunks_failed or self.chunks_ambiguous
        return (1 if problems or self.item_errors else 0), None

    def finish(self, error: ImporterError | None = None) -> RunSummary:
        """Set elapsed time, error and exit code, once, at the end of the command."""
        if self.finished:
            raise RuntimeError("the summary of this command was already finished")
        self.finished = True
        self.elapsed_s = round(time.monotonic() - self.started, 3)
        self.exit_code, self.error = self.outcome(error)
        return self

    def as_json(self, error: ImporterError | None = None) -> dict[str, Any]:
        """The JSON summary of the contract (plus a few documented extras).

        Before ``finish``, the exit code and error are those the given error would give: the
        ledger keeps such a snapshot of a run that is still ending.
        """
        data = asdict(self)
        for key in _PRIVATE:
            data.pop(key)
        if not self.finished:
            data["exit_code"], data["error"] = self.outcome(error)
            data["elapsed_s"] = round(time.monotonic() - self.started, 3)
        if self.profiles_superseded is None:
            data.pop("profiles_superseded")
        return data
