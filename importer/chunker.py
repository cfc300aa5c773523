"""Items → chunks, cut over the whole import, each as full as the two bounds allow.

The items of every source arrive in import order (sources in the order given, rows in file
order, split pieces in order) and are cut greedily into consecutive chunks: a chunk closes when
it holds ``batch_size`` items, or when the next item would push its body over
``max_batch_bytes``. The open remainder carries over to the next batch of rows and the next
source, so the chunks do not depend on how the rows are spread over files or read batches: a
run of I items makes ceil(I / batch size) chunks when the byte bound does not bind, and a later
run recomputes the same chunk ids. A chunk may carry rows of several sources.

Per-profile order is not the chunker's to keep: items stay in import order inside a chunk and
across chunks, and the sender starts a chunk only once every earlier chunk holding one of its
profiles has its final answer (``Chunk.id_keys``).

Cut points come from a prefix sum and ``searchsorted`` (one Python step per chunk, not per item);
the bodies of a batch's closed chunks are sliced out of one joined buffer per column.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from importer import config
from importer.model import Chunk
from importer.sources import ROW
from importer.transform import BODY_OVERHEAD
from importer.transform.values import xxh3

CHUNKER = "import-order-v2"  # the cutting rule: part of every chunk id
SOURCE = "__src__"
STATE_SOURCE = -1  # the source index of items made from the sync state (--missing unset)
STATE_SOURCE_NAME = "(profiles missing from this import)"
_KEY_SEED = 0x5EED  # within one process only: which chunks share a profile


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkSettings:
    """What decides how items are cut into chunks (and so the chunk ids)."""

    batch_size: int = config.DEFAULT_BATCH_SIZE
    max_batch_bytes: int = config.DEFAULT_MAX_BATCH_BYTES
    shard: config.Shard | None = None
    sync: str | None = None  # --changed-only: the state (and mode) the chunks are cut against

    def key(self) -> str:
        """A hash of the settings and of the cutting rule."""
        data = {
            "batch_size": self.batch_size,
            "max_batch_bytes": self.max_batch_bytes,
            "shard": list(self.shard) if self.shard else None,
            "chunker": CHUNKER,
            "sync": self.sync,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def budget(self) -> int:
        """The bound on the sum of (item bytes + 1) in one chunk.

        body bytes = overhead + sum(item bytes) + (n - 1) commas = overhead - 1 + sum(item + 1)
        """
        return self.max_batch_bytes - BODY_OVERHEAD + 1


def shard_of(ids: pl.Series, shards: int) -> pl.Series:
    """The 0-based shard of each id: first 8 bytes of SHA-256 of the UTF-8 id, mod N.

    Vectorised: the first 16 hex digits of the digest, as two 32-bit halves, reduced mod N
    without overflowing 64 bits.
    """
    import polars_hash as plh

    digest = plh.col(ids.name).chash.sha2_256()
    high = digest.str.slice(0, 8).str.to_integer(base=16).cast(pl.Int64)
    low = digest.str.slice(8, 8).str.to_integer(base=16).cast(pl.Int64)
    shard = ((high % shards) * ((1 << 32) % shards) + low) % shards
    frame = ids.to_frame()
    return frame.select(pl.when(pl.col(ids.name) != "").then(shard).otherwise(0)).to_series()


def cut_points(sizes: np.ndarray, *, most: int, budget: int, final: bool) -> list[int]:
    """The end index of each chunk that closes in ``sizes`` (item bytes + 1), greedily.

    A chunk still open at the end of ``sizes`` (fewer than ``most`` items, and ``final`` false)
    is not cut: more items may join it.
    """
    prefix = np.concatenate(([0], np.cumsum(sizes)))
    ends: list[int] = []
    start, n = 0, len(sizes)
    while start < n:
        fits = int(np.searchsorted(prefix, prefix[start] + budget, side="right")) - 1
        end = min(start + most, fits, n)
        if end == n and end - start < most and not final:
            break
        end = max(end, start + 1)  # an item alone always fits (the transform rejects bigger rows)
        ends.append(end)
        start = end
    return ends


@dataclass
class Chunker:
    """Cuts the import's items into chunks; ``add`` per batch of a source, ``finish`` at the end.

    ``import_key`` identifies the import (its sources' fingerprints in order, the mapping, the
    shard, and under --changed-only the sync state): chunk ids hash it with the settings and the
    chunk's position, so the same import cut again gives the same ids.
    """

    import_key: str
    settings: ChunkSettings
    sources: Sequence[str]  # the import's source names, by index
    build_bodies: bool = True  # False: count chunks and bytes only (validate, dry run)
    chunks: int = 0
    bytes: int = 0
    _open: pl.DataFrame | None = field(default=None, repr=False)

    @functools.cached_property
    def _id_prefix(self) -> str:
        return f"{self.import_key}|{self.settings.key()}|"

    def _name(self, index: int) -> str:
        return STATE_SOURCE_NAME if index == STATE_SOURCE else self.sources[index]

    def chunk_id(self, seq: int) -> str:
        """The deterministic id of the import's seq-th chunk."""
        return hashlib.sha256(f"{self._id_prefix}{seq}".encode()).hexdigest()[:32]

    @property
    def open_seq(self) -> int:
        """The position the chunk being filled now will have."""
        return self.chunks

    @property
    def open_items(self) -> int:
        """Items waiting in the chunk being filled."""
        return 0 if self._open is None else self._open.height

    def add(self, items: pl.DataFrame, source_index: int) -> Iterator[Chunk]:
        """Append a batch of one source's items (in file order); yield every chunk that closes."""
        if items.height == 0:
            return
        batch = items.with_columns(pl.lit(source_index, pl.Int32).alias(SOURCE))
        if not self.build_bodies:
            batch = batch.select("nbytes")
        buffer = batch if self._open is None else pl.concat([self._open, batch], how="vertical")
        yield from self._cut(buffer, final=False)

    def finish(self) -> Iterator[Chunk]:
        """Close the last, partly filled chunk."""
        if self._open is not None:
            buffer, self._open = self._open, None
            yield from self._cut(buffer, final=True)

    def _cut(self, buffer: pl.DataFrame, *, final: bool) -> Iterator[Chunk]:
        sizes = buffer["nbytes"].to_numpy() + 1
        ends = cut_points(
            sizes, most=self.settings.batch_size, budget=self.settings.budget, final=final
        )
        done = ends[-1] if ends else 0
        self._open = buffer.slice(done) if done < buffer.height else None
        if not ends:
            return
        starts = [0, *ends[:-1]]
        prefix = np.concatenate(([0], np.cumsum(sizes[:done])))
        first_seq = self.chunks
        self.chunks += len(ends)
        self.bytes += len(ends) * (BODY_OVERHEAD - 1) + int(prefix[done])
        if self.build_bodies:
            yield from self._build(buffer.slice(0, done), starts, ends, first_seq)

    def _build(
        self, closed: pl.DataFrame, starts: list[int], ends: list[int], first_seq: int
    ) -> Iterator[Chunk]:
        """Every closed chunk of a buffer. Chunks are consecutive runs of items, so each column
        becomes one buffer of comma-separated texts (joined by polars, no copy per item) and
        each chunk's part is a byte slice of it."""
        texts = closed.select("item", pl.col(ROW).cast(pl.String), "id_json")
        (items, item_ends), (rows, row_ends), (ids, id_ends) = map(_buffer, texts.get_columns())
        row_numbers = closed[ROW].to_numpy()
        adds = closed["has_add"].to_numpy()
        key_values = closed.select(xxh3(pl.col("distinct_id"))).to_series().to_numpy()
        sources = closed[SOURCE].to_numpy()
        for offset, (a, b) in enumerate(zip(starts, ends, strict=True)):
            seq = first_seq + offset
            runs = _runs(sources[a:b])
            yield Chunk(
                chunk_id=self.chunk_id(seq),
                seq=seq,
                body=b'{"batch":[' + _part(items, item_ends, a, b) + b"]}",
                items=b - a,
                rows_json=b"[" + _part(rows, row_ends, a, b) + b"]",
                ids_json=b"[" + _part(ids, id_ends, a, b) + b"]",
                sources=runs,
                source=self._name(runs[0][0]),
                first_row=int(row_numbers[a]),
                last_row=int(row_numbers[b - 1]),
                has_add=bool(adds[a:b].any()),
                id_keys=frozenset(key_values[a:b].tolist()),
            )


def _buffer(column: pl.Series) -> tuple[bytes, np.ndarray]:
    """A text column's texts joined by commas (one copy), and the offset just after each
    text's comma (one past the end for the last)."""
    joined = column.str.join(",").cast(pl.Binary).item()
    ends = (column.str.len_bytes().cast(pl.Int64) + 1).cum_sum().to_numpy()
    return joined, ends


def _part(joined: bytes, ends: np.ndarray, a: int, b: int) -> bytes:
    """Texts ``a`` to ``b`` (exclusive) of a buffer of comma-separated texts, with the commas
    between them."""
    start = int(ends[a - 1]) if a else 0
    return joined[start : int(ends[b - 1]) - 1]


def _runs(sources: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Runs of (source index, items) in order."""
    edges = np.flatnonzero(np.diff(sources)) + 1
    starts = np.concatenate(([0], edges))
    counts = np.diff(np.concatenate((starts, [len(sources)])))
    return tuple((int(sources[i]), int(c)) for i, c in zip(starts, counts, strict=True))
