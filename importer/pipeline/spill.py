"""What pass 1 built, kept for pass 2: the items of every batch, in one temporary file.

The validation pass builds every item anyway (to count chunks and bytes); writing them to a
private temporary file lets the sending pass read them back instead of reading and transforming
the sources again. Each batch is one lz4-compressed Arrow IPC stream appended to the file (about
a tenth of the item text, for less CPU than writing it plain), written and read by polars alone.
The file lives in a directory only its owner may read (``tempfile`` makes it 0700), is read back
one batch at a time (bounded memory), and is removed when the run ends.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

from importer.transform import ITEM_SCHEMA


@dataclass(frozen=True, slots=True)
class _Batch:
    source: int  # the batch's source index
    rows: int  # rows it was read from (for progress)
    items: int  # items it made (0: nothing written for it)
    size: int  # bytes of its stream in the file


@dataclass
class ItemSpill:
    """Items of pass 1, batch by batch, in import order."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fyno-import-")))
    _batches: list[_Batch] = field(default_factory=list)
    _sink: IO[bytes] | None = None

    @property
    def path(self) -> Path:
        """The file of streams."""
        return self.folder / "items.arrows"

    def write(self, source: int, rows: int, items: pl.DataFrame) -> None:
        """Keep one batch's items (with the rows it was read from)."""
        size = 0
        if items.height:
            if self._sink is None:
                self._sink = self.path.open("wb")
            start = self._sink.tell()
            items.select(*ITEM_SCHEMA).write_ipc_stream(self._sink, compression="lz4")
            size = self._sink.tell() - start
        self._batches.append(_Batch(source, rows, items.height, size))

    def finish(self) -> None:
        """Close the file (before reading it)."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def batches(self) -> Iterator[tuple[int, int, pl.DataFrame]]:
        """Every batch again, in order: (source index, rows read, items)."""
        self.finish()
        empty = pl.DataFrame(schema=ITEM_SCHEMA)
        with self.path.open("rb") if self.path.exists() else io.BytesIO() as stored:
            for batch in self._batches:
                if not batch.items:
                    yield batch.source, batch.rows, empty
                    continue
                frame = pl.read_ipc_stream(io.BytesIO(stored.read(batch.size)))
                yield batch.source, batch.rows, frame

    def close(self) -> None:
        """Remove the file and its folder."""
        self.finish()
        shutil.rmtree(self.folder, ignore_errors=True)
