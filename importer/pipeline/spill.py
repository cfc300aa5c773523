"""What pass 1 built, kept for pass 2: the items of every batch, in an Arrow IPC stream.

The validation pass builds every item anyway (to count chunks and bytes); writing them to a
private temporary file lets the sending pass read them back instead of reading and transforming
the sources again. The file lives in a directory only its owner may read (``tempfile`` makes it
0700), is read back one batch at a time (bounded memory), and is removed when the run ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from importer.transform import ITEM_SCHEMA

# lz4 frames: a tenth of the item text on disk, for less CPU than writing it plain
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True, slots=True)
class _Batch:
    source: int  # the batch's source index
    rows: int  # rows it was read from (for progress)
    items: int  # items it made (0: nothing written for it)


@dataclass
class ItemSpill:
    """Items of pass 1, batch by batch, in import order."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fyno-import-")))
    _batches: list[_Batch] = field(default_factory=list)
    _writer: Any = None
    _sink: Any = None

    @property
    def path(self) -> Path:
        """The stream file."""
        return self.folder / "items.arrow"

    def write(self, source: int, rows: int, items: pl.DataFrame) -> None:
        """Keep one batch's items (with the rows it was read from)."""
        self._batches.append(_Batch(source, rows, items.height))
        if not items.height:
            return
        table = items.select(*ITEM_SCHEMA).to_arrow()
        if self._writer is None:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = ipc.new_stream(self._sink, table.schema, options=_OPTIONS)
        self._writer.write_table(table)

    def finish(self) -> None:
        """Close the stream (before reading it)."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def batches(self) -> Iterator[tuple[int, int, pl.DataFrame]]:
        """Every batch again, in order: (source index, rows read, items)."""
        self.finish()
        empty = pl.DataFrame(schema=ITEM_SCHEMA)
        tables: Iterator[pa.RecordBatch] = iter(())
        source_file = None
        if self.path.exists():
            source_file = pa.OSFile(str(self.path), "rb")
            tables = iter(ipc.open_stream(source_file))
        try:
            pending: list[pa.RecordBatch] = []
            for batch in self._batches:
                if not batch.items:
                    yield batch.source, batch.rows, empty
                    continue
                pending, got = _take(tables, pending, batch.items)
                frame = pl.from_arrow(pa.Table.from_batches(got))
                assert isinstance(frame, pl.DataFrame)
                yield batch.source, batch.rows, frame
        finally:
            if source_file is not None:
                source_file.close()

    def close(self) -> None:
        """Remove the file and its folder."""
        self.finish()
        shutil.rmtree(self.folder, ignore_errors=True)


def _take(
    tables: Iterator[pa.RecordBatch], pending: list[pa.RecordBatch], rows: int
) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
    """``rows`` rows from the stream (record batches may not line up with written tables)."""
    got: list[pa.RecordBatch] = []
    while rows > 0:
        record = pending.pop(0) if pending else next(tables)
        if record.num_rows > rows:
            got.append(record.slice(0, rows))
            pending.insert(0, record.slice(rows))
            break
        got.append(record)
        rows -= record.num_rows
    return pending, got
