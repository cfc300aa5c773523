"""Tests of the chunker: full, bounded request bodies cut over the whole import, every item once,
in import order, stable ids, whatever the split of the rows into files and read batches."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.chunker import Chunker, ChunkSettings, cut_points, shard_of
from importer.model import Chunk
from importer.sources import ROW
from importer.transform import BODY_OVERHEAD, ITEM_SCHEMA

IDS = ["u-1", "u-2", "u-3", "ü-4", "u-5", "Ω", "42", "u-8", "x y", 'q"t']


def make_items(specs: list[tuple[str, int, bool]], first_row: int = 1) -> pl.DataFrame:
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
                ROW: first_row + k,
                "distinct_id": distinct_id,
                "item": item,
                "nbytes": len(item.encode()),
                "has_add": add,
                "id_json": json.dumps(distinct_id, ensure_ascii=False),
            }
        )
    return pl.DataFrame(rows, schema=ITEM_SCHEMA)


def chunker(settings: ChunkSettings, *, key: str = "import-1", **kw: Any) -> Chunker:
    """A chunker of an import with up to 1,000 sources."""
    names = [f"part-{i:02d}.csv" for i in range(1000)]
    return Chunker(import_key=key, settings=settings, sources=names, **kw)


def run_chunker(
    c: Chunker, items: pl.DataFrame, files: list[int] | None = None, cuts: list[int] | None = None
) -> list[Chunk]:
    """Feed items as an import: split into sources at ``files`` (item offsets), each source read
    in batches cut at ``cuts`` (offsets within the whole), then finish. Rows restart per file."""
    file_bounds = [0, *sorted(set(files or [])), items.height]
    out: list[Chunk] = []
    for index, (start, end) in enumerate(pairwise(file_bounds)):
        inside = sorted({c for c in cuts or [] if start < c < end})
        part = items.slice(start, end - start).with_columns(
            pl.int_range(1, end - start + 1).alias(ROW)
        )
        for a, b in pairwise([0, *(c - start for c in inside), end - start]):
            out.extend(c.add(part.slice(a, b - a), index))
    out.extend(c.finish())
    return out


def decoded(chunk: Chunk) -> list[dict[str, Any]]:
    """The items of a chunk's body."""
    body = json.loads(chunk.body)
    assert list(body) == ["batch"]
    batch: list[dict[str, Any]] = body["batch"]
    return batch


def k_of(item: dict[str, Any]) -> int:
    """The position an item was made at."""
    return int(item["action"][next(iter(item["action"]))]["k"])


_specs = st.lists(
    st.tuples(st.sampled_from(IDS), st.integers(0, 120), st.booleans()), min_size=1, max_size=80
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[pl.DataFrame, ChunkSettings, list[int], list[int]]:
    items = make_items(draw(_specs))
    smallest = BODY_OVERHEAD + int(items["nbytes"].max())  # type: ignore[arg-type]
    if draw(st.booleans()):
        limit = smallest + draw(st.integers(0, 900))
    else:  # exactly the body of some run of items, give or take a byte: the edge of the bound
        n = draw(st.integers(1, items.height))
        exact = BODY_OVERHEAD + int(items["nbytes"].head(n).sum()) + n - 1
        limit = max(smallest, exact + draw(st.sampled_from([-1, 0, 1])))
    chunk_settings = ChunkSettings(batch_size=draw(st.integers(1, 12)), max_batch_bytes=limit)
    offsets = st.integers(1, max(1, items.height - 1))
    files = draw(st.lists(offsets, max_size=8))
    cuts = draw(st.lists(offsets, max_size=6))
    return items, chunk_settings, files, cuts


Case = tuple[pl.DataFrame, ChunkSettings, list[int], list[int]]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_concatenated_chunks_give_back_every_item_once_in_order_within_bounds(case: Case) -> None:
    """However the items are split into files and batches: the chunks in order are exactly the
    items in import order (so each profile's updates keep their order), every chunk is within
    both bounds, and its rows, ids, sources and $add flag describe its body."""
    items, chunk_settings, files, cuts = case
    chunks = run_chunker(chunker(chunk_settings), items, files, cuts)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [k_of(i) for c in chunks for i in decoded(c)] == list(range(items.height))
    file_of = [sum(1 for f in set(files) if f <= k) for k in range(items.height)]
    k = 0
    for chunk in chunks:
        batch = decoded(chunk)
        assert 1 <= len(batch) == chunk.items <= chunk_settings.batch_size
        assert len(chunk.body) <= chunk_settings.max_batch_bytes
        texts = [items["item"][k_of(i)] for i in batch]
        assert chunk.body == ('{"batch":[' + ",".join(texts) + "]}").encode()
        assert chunk.distinct_ids() == [i["distinct_id"] for i in batch]
        assert chunk.item_sources() == file_of[k : k + len(batch)]
        assert chunk.source == f"part-{chunk.first_source:02d}.csv"
        assert (chunk.first_row, chunk.last_row) == (chunk.rows()[0], chunk.rows()[-1])
        assert chunk.has_add == any("$add" in i["action"] for i in batch)
        k += len(batch)
    assert len({c.chunk_id for c in chunks}) == len(chunks)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_chunks_are_full_whatever_the_file_layout(case: Case) -> None:
    """A chunk closes only when full: the next chunk's first item would not have fit. So the
    count is ceil(items / batch size) whenever the byte bound does not bind."""
    items, chunk_settings, files, cuts = case
    chunks = run_chunker(chunker(chunk_settings), items, files, cuts)
    for current, following in pairwise(chunks):
        first_next = len(
            json.dumps(decoded(following)[0], ensure_ascii=False, separators=(",", ":")).encode()
        )
        full = current.items == chunk_settings.batch_size
        too_big = len(current.body) + 1 + first_next > chunk_settings.max_batch_bytes
        assert full or too_big
    if all(c.items == chunk_settings.batch_size for c in chunks[:-1]):
        assert len(chunks) == math.ceil(items.height / chunk_settings.batch_size)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_the_bodies_do_not_depend_on_files_or_batches_and_ids_are_stable(case: Case) -> None:
    """One file in one batch, many files, many batches: the same bodies; the same import cut
    twice, in any batches: the same ids."""
    items, chunk_settings, files, cuts = case
    whole = [c.body for c in run_chunker(chunker(chunk_settings), items)]
    split = run_chunker(chunker(chunk_settings), items, files, cuts)
    assert [c.body for c in split] == whole
    one_by_one = run_chunker(chunker(chunk_settings), items, files, list(range(1, items.height)))
    assert [c.chunk_id for c in one_by_one] == [c.chunk_id for c in split]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_counting_without_bodies_gives_the_same_chunks_and_bytes(case: Case) -> None:
    """build_bodies=False (validate, dry run) counts exactly the chunks and bytes a run sends."""
    items, chunk_settings, files, cuts = case
    built = chunker(chunk_settings)
    chunks = run_chunker(built, items, files, cuts)
    counted = chunker(chunk_settings, build_bodies=False)
    assert run_chunker(counted, items, files) == []
    assert counted.chunks == built.chunks == len(chunks)
    assert counted.bytes == built.bytes == sum(len(c.body) for c in chunks)


def test_a_thousand_small_files_make_full_chunks() -> None:
    """1,000 part files of 7 items each: 14 full 500-item chunks, not one or more per file."""
    items = make_items([(f"u-{i}", 5, False) for i in range(7000)])
    chunks = run_chunker(chunker(ChunkSettings()), items, files=list(range(7, 7000, 7)))
    assert [c.items for c in chunks] == [500] * 14
    assert sum(len(c.sources) > 1 for c in chunks) == 14  # each spans several files


def _ids(**overrides: Any) -> list[str]:
    """Chunk ids of a fixed item set under the given chunker settings and import key."""
    items = make_items([(IDS[i % len(IDS)], i % 30, False) for i in range(200)])
    kw: dict[str, Any] = {"batch_size": 7, "max_batch_bytes": 2000}
    kw.update({k: overrides.pop(k) for k in list(overrides) if k in kw or k == "shard"})
    return [c.chunk_id for c in run_chunker(chunker(ChunkSettings(**kw), **overrides), items)]


def test_chunk_ids_change_with_what_shapes_the_chunks() -> None:
    """Batch size, byte limit, shard and the import (sources, mapping) each change every id."""
    base = set(_ids())
    for variant in (
        _ids(batch_size=8),
        _ids(max_batch_bytes=2001),
        _ids(shard=(1, 2)),
        _ids(key="import-2"),
    ):
        assert variant and base.isdisjoint(variant)
    assert _ids() == _ids()


def test_settings_key_is_stable() -> None:
    """Equal chunk settings give equal keys; any field change gives another key."""
    assert ChunkSettings().key() == ChunkSettings(batch_size=500, max_batch_bytes=1_000_000).key()
    keys = {
        ChunkSettings().key(),
        ChunkSettings(batch_size=499).key(),
        ChunkSettings(max_batch_bytes=999_999).key(),
        ChunkSettings(shard=(1, 4)).key(),
    }
    assert len(keys) == 4


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
    assert [c.rows() for c in chunks] == [[1], [2]]


def test_chunks_of_one_profile_share_its_key() -> None:
    """Chunks carrying one distinct_id share a key (the sender orders them); others do not."""
    items = make_items(
        [("u-1", 0, False)] + [(f"v-{i}", 0, False) for i in range(8)] + [("u-1", 0, False)]
    )
    chunks = run_chunker(chunker(ChunkSettings(batch_size=5)), items)
    assert len(chunks) == 2
    assert len(chunks[0].id_keys & chunks[1].id_keys) == 1
    assert len(chunks[0].id_keys) == 5 and len(chunks[1].id_keys) == 5


def test_cut_points_leave_an_open_chunk_open() -> None:
    """Only closed chunks are cut; the last, partly filled one waits unless final."""
    sizes = pl.Series([10] * 7).to_numpy()
    assert cut_points(sizes, most=3, budget=1000, final=False) == [3, 6]
    assert cut_points(sizes, most=3, budget=1000, final=True) == [3, 6, 7]
    assert cut_points(sizes, most=10, budget=25, final=False) == [2, 4, 6]


def test_shard_of_follows_the_contract() -> None:
    """Shard of an id: first 8 bytes of SHA-256 of the UTF-8 id, big-endian, mod N (0-based)."""
    import hashlib

    ids = ["u-1", "ü-4", "42", "x y"]
    expected = [int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") % 5 for i in ids]
    assert shard_of(pl.Series("distinct_id", ids), 5).to_list() == expected
