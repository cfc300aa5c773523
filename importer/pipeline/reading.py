"""Reading an import: its sources, checked against the mapping, as transformed batches in order.

Shared by both passes (validating, then building what is sent) and by ``preview``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, cast

import polars as pl

from importer import config
from importer.chunker import shard_of
from importer.config.settings import Settings
from importer.errors import EmptySourceError, MappingError, SourceError, UsageError
from importer.events import Reporter, SkipReason, SourceSkipped
from importer.files import open_private
from importer.mapping import Mapping
from importer.sources import ROW, Format, Source, resolve_sources
from importer.transform import Transformer, TransformResult

READ_BATCH_ROWS = 50_000
TRANSFORM_AHEAD = 2  # batches transformed at once (this machine class has two cores)
REJECT_COLUMNS = ("source", "row", "column", "reason", "values")


@dataclass
class Prepared:
    """One source, checked against the mapping, with the transformer for its columns."""

    source: Source
    transformer: Transformer
    fingerprint: str


class RejectsWriter:
    """The rejects CSV: rewritten by each run or validate, readable by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = cast(IO[bytes], open_private(path, "wb"))
        self._handle.write((",".join(REJECT_COLUMNS) + "\n").encode())

    def write(self, source: str, rejects: pl.DataFrame) -> None:
        """Append one batch's rejected rows."""
        if rejects.height:
            rejects.select(
                pl.lit(source).alias("source"),
                pl.col(ROW).alias("row"),
                "column",
                "reason",
                "values",
            ).write_csv(self._handle, include_header=False)

    def close(self) -> None:
        """Flush and close the file."""
        self._handle.close()


def open_sources(
    args: list[str], mapping: Mapping, fmt: str | None, reporter: Reporter, allow_empty: bool
) -> list[Source]:
    """The files the SOURCE arguments name; none at all is an error unless allowed."""
    if fmt not in (None, "csv", "parquet"):
        raise UsageError(f"--format {fmt!r}: use csv or parquet")
    sources, ignored = resolve_sources(
        args, format=cast(Format | None, fmt), options=mapping.source
    )
    for event in ignored:
        reporter.emit(event)
    if not sources and not allow_empty:
        raise SourceError(
            f"no CSV or Parquet file matches {' '.join(args)}",
            hint="check the path or glob, or pass --allow-empty for a night with no export",
        )
    return sources


@contextlib.contextmanager
def naming_the_source(source: Source) -> Iterator[None]:
    """A MappingError names the file: with several sources, which one lacks a column, or holds
    the value an expression fails on?"""
    try:
        yield
    except MappingError as exc:
        raise MappingError(f"{source.name}: {exc.message}", hint=exc.hint) from None


def prepare(
    source: Source,
    mapping: Mapping,
    settings: Settings,
    transformers: dict[tuple[str, ...], Transformer] | None = None,
) -> Prepared:
    """Check that the source has what the mapping reads; its transformer and fingerprint.

    Sources of one schema share a transformer (``transformers``, by column names and types):
    building one costs milliseconds, which a directory of a thousand part files paid a
    thousand times."""
    columns = source.columns()
    schema = source.scan().collect_schema()
    typed = {c: schema[c] for c in columns}
    key = tuple(f"{name}:{dtype!r}" for name, dtype in typed.items())
    transformer = transformers.get(key) if transformers is not None else None
    if transformer is None:
        with naming_the_source(source):
            transformer = Transformer(mapping, typed, max_batch_bytes=settings.max_batch_bytes)
        if transformers is not None:
            transformers[key] = transformer
    return Prepared(source=source, transformer=transformer, fingerprint=source.fingerprint())


def prepare_all(
    sources: list[Source], mapping: Mapping, settings: Settings, reporter: Reporter
) -> list[Prepared]:
    """Check every source against the mapping; empty files are skipped with --allow-empty."""
    prepared = []
    transformers: dict[tuple[str, ...], Transformer] = {}
    for source in sources:
        try:
            prepared.append(prepare(source, mapping, settings, transformers))
        except EmptySourceError:
            if not settings.allow_empty:
                raise
            reporter.emit(SourceSkipped(source.name, SkipReason.EMPTY_FILE))
    return prepared


def row_total(prepared: list[Prepared]) -> int | None:
    """The rows of every source, when each one knows it cheaply (Parquet), else None."""
    total = 0
    for item in prepared:
        hint = item.source.row_count_hint()
        if hint is None:
            return None
        total += hint
    return total


def shard_filter(
    batch: pl.DataFrame, transformer: Transformer, shard: config.Shard | None
) -> pl.DataFrame:
    """Keep the rows of shard K (rows without an id are kept by shard 1, which rejects them)."""
    if shard is None:
        return batch
    k, n = shard
    ids = transformer.distinct_ids(batch)
    shards = shard_of(ids.fill_null(""), n)
    keep = (shards == k - 1) & ids.is_not_null()
    if k == 1:
        keep = keep | ids.is_null()
    return batch.filter(keep)


def batches(
    prepared: Prepared, shard: config.Shard | None, seen: list[int] | None = None
) -> Iterator[pl.DataFrame]:
    """The source's batches, filtered to the shard; ``seen[0]`` counts the rows before that."""
    columns = prepared.source.columns()
    for batch in prepared.source.batches(columns, READ_BATCH_ROWS):
        if seen is not None:
            seen[0] += batch.height
        yield shard_filter(batch, prepared.transformer, shard)


def transformed(
    prepared: Prepared,
    shard: config.Shard | None,
    seen: list[int] | None = None,
    *,
    keep: pl.DataFrame | None = None,
    contribute: bool = False,
) -> Iterator[tuple[pl.DataFrame, TransformResult]]:
    """Each batch with its transform result, in file order (``keep``, ``contribute``: as
    ``Transformer.apply`` takes them).

    Two batches are transformed at once: polars releases the GIL, so this keeps both cores
    busy while memory stays bounded (at most ``TRANSFORM_AHEAD`` batches in flight). An
    expression of the mapping that fails on a batch is a MappingError naming the source.
    """
    apply = partial(prepared.transformer.apply, keep=keep, contribute=contribute)
    with naming_the_source(prepared.source):
        read = batches(prepared, shard, seen)
        first = next(read, None)
        if first is None:
            return
        second = next(read, None)
        if second is None:  # a file of one batch (a small part file): no threads to start
            yield first, apply(first)
            return
        with ThreadPoolExecutor(TRANSFORM_AHEAD, thread_name_prefix="transform") as pool:
            pending: deque[tuple[pl.DataFrame, Future[TransformResult]]] = deque()
            for batch in itertools.chain((first, second), read):
                pending.append((batch, pool.submit(apply, batch)))
                if len(pending) >= TRANSFORM_AHEAD:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()


def close_all(sources: list[Source]) -> None:
    """Remove every source's temporary files."""
    for source in sources:
        source.close()
