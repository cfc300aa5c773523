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

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from importer import config
from importer.model import Chunk
from importer.sources import ROW
from importer.transform import BODY_OVERHEAD

LANES = 64  # fixed: part of every chunk id; the most useful concurrency is bounded by it
_LANE_SEED = 0x5EED


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkSettings:
    """What decides how items are cut into chunks (and so the chunk ids)."""

    batch_size: int = config.DEFAULT_BATCH_SIZE
    max_batch_bytes: int = config.DEFAULT_MAX_BATCH_BYTES
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
    """A lane's open chunk: the items not yet cut, as plain arrays and lists."""

    seq: int = 0
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # bytes + 1
    adds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    items: list[str] = field(default_factory=list)  # only when building bodies
    rows: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


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

    @functools.cached_property
    def _settings_key(self) -> str:
        return self.settings.key()  # a JSON dump and a SHA-256: once, not per chunk

    def _budget(self) -> int:
        # body bytes = overhead + sum(item bytes) + (n - 1) commas = overhead - 1 + sum(item + 1)
        return self.settings.max_batch_bytes - BODY_OVERHEAD + 1

    def chunk_id(self, lane: int, seq: int) -> str:
        """The deterministic id of a lane's seq-th chunk of this source."""
        text = "|".join(
            [self.source_fingerprint, self.mapping_hash, self._settings_key, str(lane), str(seq)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def add(self, items: pl.DataFrame) -> Iterator[Chunk]:
        """Route a batch of items (in file order) to lanes; yield every chunk that closes."""
        if items.height == 0:
            return
        lanes = items.select(lane_of(pl.col("distinct_id"), self.settings.lanes)).to_series()
        # One stable sort groups the batch by lane and keeps file order inside each lane.
        order = np.argsort(lanes.to_numpy(), kind="stable")
        sorted_lanes = lanes.to_numpy()[order]
        sizes = items["nbytes"].to_numpy()[order] + 1
        adds = items["has_add"].to_numpy()[order]
        texts: list[str] = []
        rows: list[int] = []
        ids: list[str] = []
        if self.build_bodies:
            picked = items.select(pl.col("item", ROW, "distinct_id").gather(order))
            texts = picked["item"].to_list()
            rows = picked[ROW].to_list()
            ids = picked["distinct_id"].to_list()
        starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_lanes)) + 1))
        ends = np.concatenate((starts[1:], [len(order)]))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            lane = int(sorted_lanes[a])
            state = self._lanes.setdefault(lane, _Lane())
            state.sizes = np.concatenate((state.sizes, sizes[a:b]))
            state.adds = np.concatenate((state.adds, adds[a:b]))
            if self.build_bodies:
                state.items.extend(texts[a:b])
                state.rows.extend(rows[a:b])
                state.ids.extend(ids[a:b])
            yield from self._cut(lane, state, final=False)

    def finish(self) -> Iterator[Chunk]:
        """Close every lane's open remainder, in lane order."""
        for lane in sorted(self._lanes):
            yield from self._cut(lane, self._lanes[lane], final=True)
        self._lanes.clear()

    def _cut(self, lane: int, state: _Lane, *, final: bool) -> Iterator[Chunk]:
        """Emit the lane's closed chunks; the open remainder stays for more items."""
        sizes = state.sizes
        prefix = np.concatenate(([0], np.cumsum(sizes)))
        n, start, budget, most = len(sizes), 0, self._budget(), self.settings.batch_size
        while start < n:
            fits = int(np.searchsorted(prefix, prefix[start] + budget, side="right")) - 1
            end = min(start + most, fits, n)
            if end == n and end - start < most and not final:
                break  # still open: more items may join it
            end = max(end, start + 1)  # an item alone always fits (transform rejects bigger rows)
            chunk = self._emit(lane, state, start, end, int(prefix[end] - prefix[start]))
            if chunk is not None:
                yield chunk
            start = end
        if start:
            state.sizes, state.adds = state.sizes[start:], state.adds[start:]
            if self.build_bodies:
                del state.items[:start], state.rows[:start], state.ids[:start]

    def _emit(self, lane: int, state: _Lane, start: int, end: int, sized: int) -> Chunk | None:
        seq, state.seq = state.seq, state.seq + 1
        self.chunks += 1
        self.bytes += BODY_OVERHEAD - 1 + sized
        if not self.build_bodies:
            return None
        return Chunk(
            chunk_id=self.chunk_id(lane, seq),
            source_index=self.source_index,
            source=self.source,
            lane=lane,
            seq=seq,
            body=('{"batch":[' + ",".join(state.items[start:end]) + "]}").encode(),
            rows=state.rows[start:end],
            distinct_ids=state.ids[start:end],
            has_add=bool(state.adds[start:end].any()),
        )
