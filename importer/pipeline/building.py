"""Pass 2: the chunks of a source, built in file order, exactly as ``run`` sends them."""

from __future__ import annotations

from collections.abc import Iterator

from importer.chunker import Chunker
from importer.events import NullReporter, Reporter, RowsRead
from importer.model import Chunk
from importer.pipeline.options import ImportOptions
from importer.pipeline.reading import Prepared, close_all, open_sources, prepare, transformed


def source_chunks(
    index: int, prepared: Prepared, options: ImportOptions, reporter: Reporter
) -> Iterator[Chunk]:
    """Pass 2 for one source: its chunks, in the order they close."""
    chunker = Chunker(
        source_index=index,
        source=prepared.source.name,
        source_fingerprint=prepared.fingerprint,
        mapping_hash=options.mapping.fingerprint(),
        settings=options.chunk_settings(),
    )
    for batch, result in transformed(prepared, options.shard):
        yield from chunker.add(result.items)
        reporter.emit(RowsRead(batch.height))
    yield from chunker.finish()


def preview(options: ImportOptions, count: int, reporter: Reporter | None = None) -> list[bytes]:
    """The first ``count`` request bodies, exactly as ``run`` would send them."""
    reporter = reporter or NullReporter()
    sources = open_sources(options.sources, options.mapping, options.format, reporter, True)
    bodies: list[bytes] = []
    try:
        for index, source in enumerate(sources):
            prepared = prepare(source, options.mapping, options.settings)
            for chunk in source_chunks(index, prepared, options, NullReporter()):
                bodies.append(chunk.body)
                if len(bodies) >= count:
                    return bodies
    finally:
        close_all(sources)
    return bodies
