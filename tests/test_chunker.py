"""Tests of the chunker: bounded request bodies, every item once, per-profile order, stable ids."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.chunker import LANES, Chunker, ChunkSettings, shard_of
from importer.model import Chunk
from importer.sources import ROW
from importer.transform import BODY_OVERHEAD, ITEM_SCHEMA

IDS = ["u-1", "u-2", "u-3", "ü-4", "u-5", "Ω", "42", "u-8", "x y", "u-10"]


def make_items(specs: list[tuple[str, int, bool]]) -> pl.DataFrame:
    """Items as the transform makes them; each carries its position ``k`` to check order."""
    rows = []
    for k, (distinct_id, pad, add) in enumerate(specs):
        op = "$add" if add else "$set"
        item = json.dumps(
            {"distinct_id": distinct_id, "action": {op: {"k": k, "pad": "é" * pad}}},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        rows.append(
            {
                ROW: k + 1,
                "distinct_id": distinct_id,
                "item": item,
                "nbytes": len(item.encode()),
                "has_add": add,
            }
        )
    return pl.DataFrame(rows, schema=ITEM_SCHEMA)


def chunker(
    settings: ChunkSettings, *, fingerprint: str = "sha256:abc", mapping_hash: str = "m1", **kw: Any
) -> Chunker:
    """A chunker for one source."""
    return Chunker(
        source_index=kw.pop("source_index", 0),
        source=kw.pop("source", "users.csv"),
        source_fingerprint=fingerprint,
        mapping_hash=mapping_hash,
        settings=settings,
        **kw,
    )


def run_chunker(c: Chunker, items: pl.DataFrame, cuts: list[int] | None = None) -> list[Chunk]:
    """Feed items to a chunker in the batches given by ``cuts`` (row offsets), then finish."""
    bounds = [0, *sorted(set(cuts or [])), items.height]
    out: list[Chunk] = []
    for start, end in pairwise(bounds):
        if end > start:
            out.extend(c.add(items.slice(start, end - start)))
    out.extend(c.finish())
    return out


def decoded(chunk: Chunk) -> list[dict[str, Any]]:
    """The items of a chunk's body."""
    body = json.loads(chunk.body)
    assert list(body) == ["batch"]
    batch: list[dict[str, Any]] = body["batch"]
    return batch


_specs = st.lists(
    st.tuples(st.sampled_from(IDS), st.integers(0, 120), st.booleans()), min_size=1, max_size=80
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[pl.DataFrame, ChunkSettings, list[int]]:
    items = make_items(draw(_specs))
    smallest = BODY_OVERHEAD + int(items["nbytes"].max())  # type: ignore[arg-type]
    if draw(st.booleans()):
        limit = smallest + draw(st.integers(0, 900))
    else:  # exactly the body of some run of items, give or take a byte: the edge of the bound
        n = draw(st.integers(1, items.height))
        exact = BODY_OVERHEAD + int(items["nbytes"].head(n).sum()) + n - 1
        limit = max(smallest, exact + draw(st.sampled_from([-1, 0, 1])))
    settings = ChunkSettings(
        batch_size=draw(st.integers(1, 12)),
        max_batch_bytes=limit,
        lanes=draw(st.sampled_from([1, 2, 5, LANES])),
    )
    cuts = draw(st.lists(st.integers(1, max(1, items.height - 1)), max_size=6))
    return items, settings, cuts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_chunks_are_bounded_complete_and_keep_per_profile_order(
    case: tuple[pl.DataFrame, ChunkSettings, list[int]],
) -> None:
    """No chunk exceeds the item or byte bound; every item appears once; per-id order is kept."""
    items, chunk_settings, cuts = case
    chunks = run_chunker(chunker(chunk_settings), items, cuts)
    seen: list[int] = []
    lanes_of: dict[str, set[int]] = defaultdict(set)
    for chunk in chunks:
        batch = decoded(chunk)
        assert 1 <= len(batch) <= chunk_settings.batch_size
        assert len(chunk.body) <= chunk_settings.max_batch_bytes
        texts = [items["item"][r - 1] for r in chunk.rows]
        assert chunk.body == ('{"batch":[' + ",".join(texts) + "]}").encode()
        assert chunk.distinct_ids == [i["distinct_id"] for i in batch]
        assert chunk.rows == [i["action"][next(iter(i["action"]))]["k"] + 1 for i in batch]
        assert chunk.has_add == any("$add" in i["action"] for i in batch)
        assert chunk.source == "users.csv" and chunk.source_index == 0
        for i in batch:
            seen.append(i["action"][next(iter(i["action"]))]["k"])
            lanes_of[i["distinct_id"]].add(chunk.lane)
    assert sorted(seen) == list(range(items.height))
    assert all(len(lanes) == 1 for lanes in lanes_of.values())
    by_id: dict[str, list[int]] = defaultdict(list)
    for chunk in sorted(chunks, key=lambda c: (c.lane, c.seq)):
        for i in decoded(chunk):
            by_id[i["distinct_id"]].append(i["action"][next(iter(i["action"]))]["k"])
    for ks in by_id.values():
        assert ks == sorted(ks)
    per_lane: dict[int, list[int]] = defaultdict(list)
    for chunk in chunks:
        per_lane[chunk.lane].append(chunk.seq)
    for seqs in per_lane.values():
        assert seqs == list(range(len(seqs)))
    assert len({c.chunk_id for c in chunks}) == len(chunks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_chunks_are_cut_greedily(case: tuple[pl.DataFrame, ChunkSettings, list[int]]) -> None:
    """A lane's chunk closes only when full: its next chunk's first item would not have fit."""
    items, chunk_settings, cuts = case
    chunks = run_chunker(chunker(chunk_settings), items, cuts)
    by_lane: dict[int, list[Chunk]] = defaultdict(list)
    for chunk in chunks:
        by_lane[chunk.lane].append(chunk)
    for lane_chunks in by_lane.values():
        lane_chunks.sort(key=lambda c: c.seq)
        for current, following in pairwise(lane_chunks):
            first_next = items["nbytes"][following.rows[0] - 1]
            full = current.items == chunk_settings.batch_size
            too_big = len(current.body) + 1 + first_next > chunk_settings.max_batch_bytes
            assert full or too_big


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_chunk_ids_do_not_depend_on_read_batches(
    case: tuple[pl.DataFrame, ChunkSettings, list[int]],
) -> None:
    """One batch or many small ones, and a second run: the same chunk ids with the same bodies."""
    items, chunk_settings, cuts = case
    whole = {c.chunk_id: c.body for c in run_chunker(chunker(chunk_settings), items)}
    pieces = {c.chunk_id: c.body for c in run_chunker(chunker(chunk_settings), items, cuts)}
    one_by_one = run_chunker(chunker(chunk_settings), items, list(range(1, items.height)))
    again = {c.chunk_id: c.body for c in run_chunker(chunker(chunk_settings), items, cuts)}
    assert whole == pieces == again == {c.chunk_id: c.body for c in one_by_one}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_counting_without_bodies_gives_the_same_chunks_and_bytes(
    case: tuple[pl.DataFrame, ChunkSettings, list[int]],
) -> None:
    """build_bodies=False (validate, dry run) counts exactly the chunks and bytes a run sends."""
    items, chunk_settings, cuts = case
    built = chunker(chunk_settings)
    chunks = run_chunker(built, items, cuts)
    counted = chunker(chunk_settings, build_bodies=False)
    assert run_chunker(counted, items) == []
    assert counted.chunks == built.chunks == len(chunks)
    assert counted.bytes == built.bytes == sum(len(c.body) for c in chunks)


def _ids(**overrides: Any) -> set[str]:
    """Chunk ids of a fixed item set under the given chunker settings."""
    items = make_items([(IDS[i % len(IDS)], i % 30, False) for i in range(200)])
    kw: dict[str, Any] = {"batch_size": 7, "max_batch_bytes": 2000}
    kw.update(
        {
            k: overrides.pop(k)
            for k in list(overrides)
            if k in ("batch_size", "max_batch_bytes", "shard")
        }
    )
    return {c.chunk_id for c in run_chunker(chunker(ChunkSettings(**kw), **overrides), items)}


def test_chunk_ids_change_with_what_shapes_the_chunks() -> None:
    """Batch size, byte limit, shard, source content and mapping each change every chunk id."""
    base = _ids()
    for variant in (
        _ids(batch_size=8),
        _ids(max_batch_bytes=2001),
        _ids(shard=(1, 2)),
        _ids(fingerprint="sha256:other"),
        _ids(mapping_hash="m2"),
    ):
        assert variant and base.isdisjoint(variant)


def test_chunk_ids_ignore_the_source_name() -> None:
    """A renamed file (same content) recomputes the same chunk ids: the path is not in them."""
    assert _ids(source="users.csv") == _ids(source="/elsewhere/renamed.csv", source_index=3)


def test_settings_key_is_stable() -> None:
    """Equal chunk settings give equal keys; any field change gives another key."""
    assert ChunkSettings().key() == ChunkSettings(batch_size=500, max_batch_bytes=1_000_000).key()
    keys = {
        ChunkSettings().key(),
        ChunkSettings(batch_size=499).key(),
        ChunkSettings(max_batch_bytes=999_999).key(),
        ChunkSettings(shard=(1, 4)).key(),
        ChunkSettings(lanes=32).key(),
    }
    assert len(keys) == 5


def test_the_byte_limit_is_exact() -> None:
    """Items making a body of exactly max_batch_bytes share a chunk; one byte less splits them."""
    items = make_items([("u-1", 10, False)] * 3)
    size = int(items["nbytes"][0])
    two = BODY_OVERHEAD + 2 * size + 1
    chunks = run_chunker(chunker(ChunkSettings(batch_size=10, max_batch_bytes=two)), items)
    assert [c.items for c in chunks] == [2, 1]
    assert len(chunks[0].body) == two
    chunks = run_chunker(chunker(ChunkSettings(batch_size=10, max_batch_bytes=two - 1)), items)
    assert [c.items for c in chunks] == [1, 1, 1]


def test_an_item_exactly_at_the_byte_limit_fits_alone() -> None:
    """An item whose body is exactly max_batch_bytes is sent alone, not refused or split."""
    items = make_items([("u-1", 10, False), ("u-1", 10, False)])
    limit = int(items["nbytes"][0]) + BODY_OVERHEAD
    chunks = run_chunker(chunker(ChunkSettings(batch_size=10, max_batch_bytes=limit)), items)
    assert [len(c.body) for c in chunks] == [limit, limit]
    assert [c.rows for c in chunks] == [[1], [2]]


def test_one_profile_stays_in_one_lane_in_file_order() -> None:
    """All updates of one distinct_id go to one lane, in file order across its chunks."""
    items = make_items([("u-1", 0, i % 3 == 0) for i in range(25)])
    chunks = run_chunker(chunker(ChunkSettings(batch_size=4)), items, [5, 11, 17])
    assert len({c.lane for c in chunks}) == 1
    ordered = sorted(chunks, key=lambda c: c.seq)
    assert [r for c in ordered for r in c.rows] == list(range(1, 26))
    assert [c.items for c in ordered] == [4, 4, 4, 4, 4, 4, 1]


def test_shard_of_follows_the_contract() -> None:
    """Shard of an id: first 8 bytes of SHA-256 of the UTF-8 id, big-endian, mod N (0-based)."""
    import hashlib

    ids = ["u-1", "ü-4", "42", "x y"]
    expected = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") % 5 for i in ids]
    assert shard_of(pl.Series("distinct_id", ids), 5).to_list() == expected
