"""Items → chunks bounded by item count and body bytes, with deterministic ids.

Each item goes to one of ``LANES`` lanes by a hash of its ``distinct_id``, so every update of a
profile travels in one lane; a lane's chunks are cut in file order and the sender keeps at most
one chunk of a lane in flight. That is how per-profile order holds at any concurrency without a
per-row dependency graph.

Cutting is greedy and exact: a chunk closes when it holds ``batch_size`` items or when the next
item would push the body over ``max_batch_bytes``. The cut points of a lane's buffer come from a
prefix sum and ``searchsorted`` (one Python step per chunk, not per item). A lane's open remainder
carries over to the next batch of rows, so the chunks do not depend on how the reader batched the
file, and a later run recomputes the same chunk ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from importer.model import Chunk
from importer.sources import ROW
from importer.transform import BODY_OVERHEAD

LANES = 64  # fixed: part of every chunk id; the most useful concurrency is bounded by it
_LANE_SEED = 0x5EED


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkSettings:
    """What decides how items are cut into chunks (and so the chunk ids)."""

    batch_size: int = 500
    max_batch_bytes: int = 1_000_000
    shard: tuple[int, int] | None = None  # (K, N)
    lanes: int = LANES

    def key(self) -> str:
        """A hash of the settings, plus the polars version whose hash routes items to lanes."""
        data = {
            "batch_size": self.batch_size,
            "max_batch_bytes": self.max_batch_bytes,
            "shard": list(self.shard) if self.shard else None,
            "lanes": self.lanes,
            "lane_hash": f"polars-{pl.__version__}/{_LANE_SEED}",
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def lane_of(distinct_id: pl.Expr, lanes: int = LANES) -> pl.Expr:
    """The lane of each item: a seeded polars hash of its distinct_id, modulo the lane count."""
    return (distinct_id.hash(seed=_LANE_SEED) % lanes).cast(pl.Int32)


def shard_of(ids: pl.Series, shards: int) -> pl.Series:
    """The 0-based shard of each id: first 8 bytes of SHA-256 of the UTF-8 id, mod N."""
    values = [
        int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") % shards if i else 0
        for i in ids.to_list()
    ]
    return pl.Series(ids.name, values, dtype=pl.Int64)


@dataclass
class _Lane:
    pending: pl.DataFrame | None = None
    seq: int = 0


@dataclass
class Chunker:
    """Cuts one source's items into chunks; ``add`` per batch of items, ``finish`` at the end."""

    source_index: int
    source: str
    source_fingerprint: str
    mapping_hash: str
    settings: ChunkSettings
    build_bodies: bool = True  # False: count chunks and bytes only (validate, dry run)
    chunks: int = 0
    bytes: int = 0
    _lanes: dict[int, _Lane] = field(default_factory=dict)

    def _budget(self) -> int:
        # body bytes = overhead + sum(item bytes) + (n - 1) commas = overhead - 1 + sum(item + 1)
        return self.settings.max_batch_bytes - BODY_OVERHEAD + 1

    def chunk_id(self, lane: int, seq: int) -> str:
        """The deterministic id of a lane's seq-th chunk of this source."""
        text = "|".join(
            [self.source_fingerprint, self.mapping_hash, self.settings.key(), str(lane), str(seq)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def add(self, items: pl.DataFrame) -> Iterator[Chunk]:
        """Route a batch of items (in file order) to lanes; yield every chunk that closes."""
        if items.height == 0:
            return
        routed = items.with_columns(
            lane_of(pl.col("distinct_id"), self.settings.lanes).alias("lane")
        )
        for (lane,), part in routed.partition_by("lane", as_dict=True, maintain_order=True).items():
            state = self._lanes.setdefault(int(lane), _Lane())
            buffer = part if state.pending is None else pl.concat([state.pending, part])
            state.pending = None
            yield from self._cut(int(lane), state, buffer, final=False)

    def finish(self) -> Iterator[Chunk]:
        """Close every lane's open remainder, in lane order."""
        for lane in sorted(self._lanes):
            state = self._lanes[lane]
            if state.pending is not None and state.pending.height:
                buffer, state.pending = state.pending, None
                yield from self._cut(lane, state, buffer, final=True)
        self._lanes.clear()

    def _cut(
        self, lane: int, state: _Lane, buffer: pl.DataFrame, *, final: bool
    ) -> Iterator[Chunk]:
        sizes = buffer["nbytes"].to_numpy() + 1
        prefix = np.concatenate(([0], np.cumsum(sizes)))
        n, start, budget, most = buffer.height, 0, self._budget(), self.settings.batch_size
        while start < n:
            fits = int(np.searchsorted(prefix, prefix[start] + budget, side="right")) - 1
            end = min(start + most, fits, n)
            if end == n and end - start < most and not final:
                state.pending = buffer.slice(start)  # still open: more items may join it
                return
            end = max(end, start + 1)  # an item alone always fits (transform rejects bigger rows)
            chunk = self._emit(lane, state, buffer.slice(start, end - start))
            if chunk is not None:
                yield chunk
            start = end

    def _emit(self, lane: int, state: _Lane, part: pl.DataFrame) -> Chunk | None:
        seq, state.seq = state.seq, state.seq + 1
        self.chunks += 1
        self.bytes += BODY_OVERHEAD + int(part["nbytes"].sum()) + part.height - 1
        if not self.build_bodies:
            return None
        body = ('{"batch":[' + ",".join(part["item"].to_list()) + "]}").encode()
        return Chunk(
            chunk_id=self.chunk_id(lane, seq),
            source_index=self.source_index,
            source=self.source,
            lane=lane,
            seq=seq,
            body=body,
            rows=part[ROW].to_list(),
            distinct_ids=part["distinct_id"].to_list(),
            has_add=bool(part["has_add"].any()),
        )
