"""Value objects passed between the stages: chunks going out, outcomes coming back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ChunkStatus(StrEnum):
    """Where a chunk stands in the ledger."""

    PENDING = "pending"  # not applied: never sent, or waiting for a retry after a 429/500/503
    IN_FLIGHT = "in_flight"  # recorded before sending; final answer not yet recorded
    ACCEPTED = "accepted"  # 202 received
    FAILED = "failed"  # transient failures until retries ran out (429, 5xx, connection)
    REFUSED = "refused"  # the API answered 400: resending unchanged cannot help
    AMBIGUOUS = "ambiguous"  # carries $add and may have been applied: never resent blindly
    ABANDONED = "abandoned"  # closed by a person with `ledger resolve --as abandoned`


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request body's worth of items, all from one source and one lane."""

    chunk_id: str  # deterministic: same source, mapping and chunk settings give the same id
    source_index: int  # position of its source in the run
    source: str  # the source as the user named it (path or URL)
    lane: int  # every item of one distinct_id goes to the same lane
    seq: int  # position among its lane's chunks of this source, from 0
    body: bytes  # the exact request body: {"batch":[item,...]} in compact JSON
    rows: list[int] = field(repr=False)  # 1-based source row of each item, in body order
    distinct_ids: list[str] = field(repr=False)  # distinct_id of each item, in body order
    has_add: bool = False  # carries $add: not idempotent, never resent when its fate is unknown

    @property
    def items(self) -> int:
        """Number of items in the body."""
        return len(self.rows)

    @property
    def first_row(self) -> int:
        """Smallest source row in the chunk."""
        return min(self.rows)

    @property
    def last_row(self) -> int:
        """Largest source row in the chunk."""
        return max(self.rows)


@dataclass(frozen=True, slots=True)
class ItemError:
    """One operator of one item that a 202 answer did not mark "ok"."""

    index: int  # position of the item in the chunk's body
    operator: str  # "$set", "$add", …
    status: str  # the status the API gave instead of "ok"


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """The final answer for one chunk after all its tries."""

    status: ChunkStatus
    attempts: int  # requests actually sent (or started) for this chunk in this try
    http_status: int | None = None
    request_id: str | None = None
    error: str | None = None  # a short, key-free description of the last failure
    item_errors: tuple[ItemError, ...] = ()
