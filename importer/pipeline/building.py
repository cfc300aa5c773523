"""Pass 2: the import's chunks, cut over all its sources in order, exactly as ``run`` sends them."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from importer.chunker import STATE_SOURCE, Chunker
from importer.events import NullReporter, Reporter, RowsRead
from importer.model import Chunk
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import Prepared, close_all, open_sources, prepare, transformed
from importer.pipeline.spill import ItemSpill
from importer.transform import REJECT_SCHEMA, Transformer, TransformResult

_NO_REJECTS = pl.DataFrame(schema=REJECT_SCHEMA)


@dataclass(frozen=True, slots=True)
class SourceChunked:
    """Every item of source ``index`` is in a chunk, from ``first_chunk`` to ``last_chunk``
    (chunk positions; both None when the source made no item). The last may still be filling."""

    index: int
    first_chunk: int | None
    last_chunk: int | None


def import_key(fingerprints: Sequence[str], mapping_hash: str) -> str:
    """What identifies the import in its chunk ids: the sent sources' contents in order and the
    mapping (the chunk settings, shard and sync state included, are added by the chunker)."""
    data = json.dumps({"sources": list(fingerprints), "mapping": mapping_hash})
    return hashlib.sha256(data.encode()).hexdigest()


def new_chunker(
    todo: Sequence[tuple[int, Prepared]],
    options: ImportOptions,
    *,
    build_bodies: bool,
    sync: str | None = None,
) -> Chunker:
    """The chunker of an import of these (index, source) pairs (cut against ``sync``)."""
    names = {index: p.source.name for index, p in todo}
    return Chunker(
        import_key=import_key([p.fingerprint for _, p in todo], options.mapping.fingerprint()),
        settings=options.chunk_settings(sync),
        sources=[names.get(i, "") for i in range(max(names, default=-1) + 1)],
        build_bodies=build_bodies,
    )


@dataclass(frozen=True)
class ChangedOnly:
    """What --changed-only sends: the properties ``keep`` names (None: everything), then the
    $unset items of profiles the import no longer has."""

    key: str  # the state (and mode) the chunks are cut against
    keep: pl.DataFrame | None
    missing_items: pl.DataFrame


@dataclass
class BuildCounts:
    """What pass 2 counted on the way."""

    rows_unchanged: int = 0
    chunks: int = 0
    items: int = 0
    bytes: int = 0


def import_chunks(
    todo: Sequence[tuple[int, Prepared]],
    options: ImportOptions,
    reporter: Reporter,
    *,
    changed: ChangedOnly | None = None,
    counts: BuildCounts | None = None,
    build_bodies: bool = True,
    spill: ItemSpill | None = None,
) -> Iterator[Chunk | SourceChunked]:
    """Every chunk of the import in order, and after each source where its items went; from
    pass 1's ``spill`` when there is one, else by reading and transforming the sources again."""
    chunker = new_chunker(
        todo, options, build_bodies=build_bodies, sync=changed.key if changed else None
    )
    counts = counts if counts is not None else BuildCounts()
    for index, made in _items_by_source(todo, options, reporter, changed, spill):
        first: int | None = None
        for result in made:
            if first is None and result.items.height:
                first = chunker.open_seq
            counts.rows_unchanged += result.rows_unchanged
            counts.items += result.items.height
            yield from chunker.add(result.items, index)
        last = None
        if first is not None:
            last = chunker.open_seq if chunker.open_items else chunker.open_seq - 1
        yield SourceChunked(index, first, last)
    if changed is not None and changed.missing_items.height:
        counts.items += changed.missing_items.height
        yield from chunker.add(changed.missing_items, STATE_SOURCE)
    yield from chunker.finish()
    counts.chunks, counts.bytes = chunker.chunks, chunker.bytes


def _items_by_source(
    todo: Sequence[tuple[int, Prepared]],
    options: ImportOptions,
    reporter: Reporter,
    changed: ChangedOnly | None,
    spill: ItemSpill | None,
) -> Iterator[tuple[int, Iterator[TransformResult]]]:
    """Each source's index and its batches' results, in import order."""
    if spill is not None:  # a source without batches (an empty file) has no group
        groups = itertools.groupby(spill.batches(), key=lambda b: b[0])
        group = next(groups, None)
        for index, _ in todo:
            if group is not None and group[0] == index:
                yield index, _spilled(group[1], reporter)
                group = next(groups, None)
            else:
                yield index, iter(())
        return
    keep = changed.keep if changed else None
    for index, prepared in todo:
        yield index, _transformed(prepared, options, reporter, keep)


def _spilled(
    batches: Iterator[tuple[int, int, pl.DataFrame]], reporter: Reporter
) -> Iterator[TransformResult]:
    for _, rows, items in batches:
        reporter.emit(RowsRead(rows))
        yield TransformResult(items=items, rejects=_NO_REJECTS, rows_valid=items.height)


def _transformed(
    prepared: Prepared, options: ImportOptions, reporter: Reporter, keep: pl.DataFrame | None
) -> Iterator[TransformResult]:
    for batch, result in transformed(prepared, options.shard, keep=keep):
        reporter.emit(RowsRead(batch.height))
        yield result


def preview(options: ImportOptions, count: int, reporter: Reporter | None = None) -> list[bytes]:
    """The first ``count`` request bodies of the import, exactly as ``run`` would send them."""
    reporter = reporter or NullReporter()
    sources = open_sources(options.sources, options.mapping, options.format, reporter, True)
    bodies: list[bytes] = []
    try:
        shared: dict[tuple[str, ...], Transformer] = {}
        todo = [
            (i, prepare(s, options.mapping, options.settings, shared))
            for i, s in enumerate(sources)
        ]
        for chunk in import_chunks(todo, options, NullReporter()):
            if isinstance(chunk, Chunk):
                bodies.append(chunk.body)
                if len(bodies) >= count:
                    break
    finally:
        close_all(sources)
    return bodies
