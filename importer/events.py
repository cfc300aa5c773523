"""What the library tells its caller while it works: typed events, and the Reporter receiving them.

The library never prints and never words advice for a terminal: it emits these small frozen
events, and the CLI turns each into a line for a person or a JSON log line (``importer.cli``).
Tests may record them. Each event carries facts only (paths, counts, ids, statuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from importer.model import ChunkStatus


class Phase(StrEnum):
    """The long steps of a command, each with its own progress bar."""

    VALIDATING = "validating"
    SENDING = "sending"
    RETRYING = "retrying"


class IgnoreReason(StrEnum):
    """Why a file met in a directory, glob or prefix is not part of the import."""

    HIDDEN = "hidden, marker or not a regular file"
    NOT_DATA = "not a CSV or Parquet file"


class SkipReason(StrEnum):
    """Why a source of the import is not read."""

    ALREADY_IMPORTED = "already imported"
    SAME_CONTENT = "same content as another source"
    GIVEN_TWICE = "given twice"
    EMPTY_FILE = "empty file"


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    """A long step starts; ``total_rows`` when it is cheap to know."""

    phase: Phase
    total_rows: int | None


@dataclass(frozen=True, slots=True)
class RowsRead:
    """More rows were read (for progress)."""

    count: int


@dataclass(frozen=True, slots=True)
class FileIgnored:
    """A file of a directory, glob or prefix that is not imported."""

    path: str
    reason: IgnoreReason


@dataclass(frozen=True, slots=True)
class SourceSkipped:
    """A source that is not read; ``other`` is the run that imported it, or the twin source."""

    source: str
    reason: SkipReason
    other: str | None = None


@dataclass(frozen=True, slots=True)
class RunStarted:
    """Sending starts (after every source was validated)."""

    run_id: str
    resumed: bool
    sources: tuple[str, ...]
    rows_valid: int
    chunks_total: int


@dataclass(frozen=True, slots=True)
class RetryStarted:
    """`retry` starts resending a run's chunks."""

    run_id: str


@dataclass(frozen=True, slots=True)
class NothingToRetry:
    """No run of the ledger has chunks left to resend."""

    ledger: str


@dataclass(frozen=True, slots=True)
class RunUnfinished:
    """`retry` of a run that did not finish: chunks it never sent are not in the ledger."""

    run_id: str
    status: str


@dataclass(frozen=True, slots=True)
class ChunksRefused:
    """Chunks the API refused (HTTP 400): reported and exported, never resent unchanged."""

    count: int


@dataclass(frozen=True, slots=True)
class ProfilesSuperseded:
    """Profiles in the chunks about to be resent that received later updates."""

    count: int


@dataclass(frozen=True, slots=True)
class ChunkSettled:
    """A chunk got its final outcome in this command (``earlier``: in an earlier try)."""

    run_id: str
    chunk_id: str
    source: str
    status: ChunkStatus
    http_status: int | None = None
    attempts: int = 0
    item_errors: int = 0
    error: str | None = None
    earlier: bool = False

    @property
    def needs_attention(self) -> bool:
        """Not accepted, or accepted with refused items."""
        return self.status is not ChunkStatus.ACCEPTED or self.item_errors > 0


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A request failed transiently and will be resent after a wait."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stopping:
    """Ctrl-C or SIGTERM: no new requests; those in flight get their answer."""


Event = (
    PhaseStarted
    | RowsRead
    | FileIgnored
    | SourceSkipped
    | RunStarted
    | RetryStarted
    | NothingToRetry
    | RunUnfinished
    | ChunksRefused
    | ProfilesSuperseded
    | ChunkSettled
    | RetryScheduled
    | Stopping
)


class Reporter(Protocol):
    """Where the library reports what it does; called from the event loop and reader threads."""

    def emit(self, event: Event) -> None:
        """Take one event."""


class NullReporter:
    """A reporter that drops every event."""

    def emit(self, event: Event) -> None:
        """Ignore the event."""


class RecordingReporter:
    """A reporter that keeps every event, in order (for tests and for library callers)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        """Keep the event."""
        self.events.append(event)
