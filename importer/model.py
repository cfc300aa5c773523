"""Value objects passed between the stages: chunks going out, outcomes coming back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ChunkStatus(StrEnum):
    """Where a chunk stands in the ledger; the predicates are the only place its rules live."""

    PENDING = "pending"  # not applied: never sent, or waiting for a retry after a 429/500/503
    IN_FLIGHT = "in_flight"  # recorded before sending; final answer not yet recorded
    ACCEPTED = "accepted"  # 202 received
    FAILED = "failed"  # transient failures until retries ran out (429, 5xx, connection)
    REFUSED = "refused"  # the API answered 400: resending unchanged cannot help
    AMBIGUOUS = "ambiguous"  # carries $add and may have been applied: never resent blindly
    ABANDONED = "abandoned"  # closed by a person with `ledger resolve --as abandoned`

    @property
    def is_settled(self) -> bool:
        """Final for `run`: a resumed run does not send it again (retry or a person may)."""
        return self in _SETTLED

    @property
    def is_open(self) -> bool:
        """Someone still has to deal with it: `retry`, or a person with `ledger resolve`."""
        return self in _OPEN

    @property
    def is_failure(self) -> bool:
        """Not applied as asked: reported, exported with `ledger export --failures`."""
        return self in _FAILURES

    @property
    def is_resolvable(self) -> bool:
        """A person may close it with `ledger resolve`."""
        return self in _FAILURES

    @property
    def is_resolution(self) -> bool:
        """What `ledger resolve --as` may set."""
        return self in (ChunkStatus.ACCEPTED, ChunkStatus.ABANDONED)

    def resendable(self, *, include_ambiguous: bool = False) -> bool:
        """`retry` resends it: failed transiently, left in flight or pending by a killed process
        (an in-flight $add chunk is made ambiguous before this is asked), or ambiguous if asked."""
        return self in _RESENDABLE or (include_ambiguous and self is ChunkStatus.AMBIGUOUS)

    @classmethod
    def resendable_set(cls, *, include_ambiguous: bool = False) -> frozenset[ChunkStatus]:
        """Every status that ``resendable`` accepts."""
        return frozenset(s for s in cls if s.resendable(include_ambiguous=include_ambiguous))


_SETTLED = frozenset(
    {ChunkStatus.ACCEPTED, ChunkStatus.AMBIGUOUS, ChunkStatus.REFUSED, ChunkStatus.ABANDONED}
)
_FAILURES = frozenset({ChunkStatus.FAILED, ChunkStatus.REFUSED, ChunkStatus.AMBIGUOUS})
_OPEN = _FAILURES | {ChunkStatus.IN_FLIGHT, ChunkStatus.PENDING}
_RESENDABLE = frozenset({ChunkStatus.FAILED, ChunkStatus.IN_FLIGHT, ChunkStatus.PENDING})


class RunStatus(StrEnum):
    """Where a run stands in the ledger."""

    RUNNING = "running"  # started; a process holds the ledger's lock (or was killed holding it)
    FINISHED = "finished"  # every chunk has its final answer
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM; run the same command again to resume
    ABORTED = "aborted"  # stopped by an error (401, a ledger write); resumable once fixed

    @property
    def is_finished(self) -> bool:
        """The run came to its end (its chunks may still have failed)."""
        return self is RunStatus.FINISHED


class SourceStatus(StrEnum):
    """Where one source of a run stands in the ledger."""

    PENDING = "pending"  # not completely read and chunked yet
    CHUNKED = "chunked"  # every chunk carrying its rows is known
    SKIPPED = "skipped"  # already imported by another run


@dataclass(frozen=True, slots=True)
class PackedChunk:
    """A chunk's body, rows and ids, compressed as the ledger stores them before sending."""

    body_z: bytes
    rows_z: bytes
    ids_z: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request body's worth of items, in import order; it may carry rows of several sources.

    The per-item columns (rows, ids) are kept as the JSON arrays the ledger stores, so building a
    chunk creates no Python object per item; ``rows()`` and ``distinct_ids()`` decode them.
    """

    chunk_id: str  # deterministic: the same import and chunk settings give the same id
    seq: int  # position among the import's chunks, from 0 (the order of sending)
    body: bytes  # the exact request body: {"batch":[item,...]} in compact JSON
    items: int
    rows_json: bytes = field(repr=False)  # JSON array: each item's 1-based source row
    ids_json: bytes = field(repr=False)  # JSON array: each item's distinct_id
    sources: tuple[tuple[int, int], ...]  # runs of (source index, items), in body order
    source: str  # the first source's name, for messages
    first_row: int  # the first item's source row
    last_row: int  # the last item's source row
    has_add: bool = False  # carries $add: not idempotent, never resent when its fate is unknown
    # one key per distinct profile, comparable within this process only: the sender starts a
    # chunk only when no earlier unsettled chunk shares one
    id_keys: frozenset[int] = field(default=frozenset(), repr=False, compare=False)
    # compressed for the ledger off the event loop (by the reader thread), when it will be sent
    packed: PackedChunk | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        *,
        chunk_id: str,
        seq: int,
        body: bytes,
        rows: list[int],
        distinct_ids: list[str],
        sources: tuple[tuple[int, int], ...] | None = None,
        source: str = "",
        has_add: bool = False,
    ) -> Chunk:
        """A chunk from plain lists (the ledger's stored chunks, tests)."""
        import orjson

        return cls(
            chunk_id=chunk_id,
            seq=seq,
            body=body,
            items=len(rows),
            rows_json=orjson.dumps(rows),
            ids_json=orjson.dumps(distinct_ids),
            sources=sources if sources is not None else ((0, len(rows)),),
            source=source,
            first_row=rows[0] if rows else 0,
            last_row=rows[-1] if rows else 0,
            has_add=has_add,
            id_keys=frozenset(hash(i) for i in distinct_ids),
        )

    @property
    def first_source(self) -> int:
        """Index of the source of the first item."""
        return self.sources[0][0] if self.sources else 0

    @property
    def last_source(self) -> int:
        """Index of the source of the last item."""
        return self.sources[-1][0] if self.sources else 0

    def rows(self) -> list[int]:
        """Each item's source row, in body order."""
        import orjson

        rows: list[int] = orjson.loads(self.rows_json)
        return rows

    def distinct_ids(self) -> list[str]:
        """Each item's distinct_id, in body order."""
        import orjson

        ids: list[str] = orjson.loads(self.ids_json)
        return ids

    def item_sources(self) -> list[int]:
        """Each item's source index, in body order."""
        return [index for index, count in self.sources for _ in range(count)]


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
