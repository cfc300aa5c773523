"""A local CSV file read a window of records at a time, cut where the record scanner saw
records end.

polars' batch stream reads a CSV far ahead of a slower consumer (measured: about 150 MB of a
125 MB file before the first batch is used), so peak memory grew with the file. The record
scanner (``records``) reads every file once anyway, quote-aware; it notes where the header and
every ``MARK_RECORDS``-th record end. Each window is those bytes, read with ``pl.read_csv``
behind a copy of the header line, so polars parses it exactly as it parses the whole file
(same header, same options, a blank first line a record as it is mid-file), and rows are
numbered from the marks. Only plain local files are windowed: a gzip file's offsets are not
the scanner's, and remote objects are streamed by polars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from importer.errors import SourceError
from importer.sources.records import GZIP_MAGIC, MARK_RECORDS, RecordShape


@dataclass(frozen=True)
class CsvWindows:
    """Where a CSV's windows start and end, and the header line put before each."""

    path: str  # the file read (for latin1, its UTF-8 transcoding)
    name: str  # the source, as errors name it
    header: bytes  # the header record, with its newline
    bounds: list[int]  # file offsets: window i holds bytes bounds[i] to bounds[i + 1]
    window_rows: int  # records in every window but the last
    records: int  # data records in the file

    def read(self, parse: Callable[[bytes], pl.DataFrame]) -> Iterator[tuple[int, pl.DataFrame]]:
        """Every window parsed, in order, with the number of its first record (1-based)."""
        with open(self.path, "rb") as file:
            for index, (start, end) in enumerate(zip(self.bounds, self.bounds[1:], strict=False)):
                file.seek(start)
                first = index * self.window_rows + 1
                frame = parse(self.header + file.read(end - start))
                expected = min(self.window_rows, self.records - first + 1)
                if frame.height != expected:
                    raise SourceError(
                        f"{self.name}: records {first:,} to {first + expected - 1:,} were read "
                        f"as {frame.height:,} rows, not {expected:,}",
                        hint="the file's quoting confuses the reader; check its quotes, and "
                        "report the file if they look right",
                    )
                yield first, frame


def plan_windows(path: str, shape: RecordShape, batch_rows: int, *, name: str) -> CsvWindows | None:
    """Windows of about ``batch_rows`` records for a plain local CSV, or None to stream it."""
    if shape.header_fields == 0 or shape.records == 0 or shape.marks.size == 0:
        return None
    with open(path, "rb") as file:
        if file.read(2) == GZIP_MAGIC:
            return None
        size = file.seek(0, 2)
        skipped = size - shape.scanned  # the BOM and blank lines before the header
        if skipped < 0:
            return None
        file.seek(skipped)
        header = file.read(int(shape.marks[0]))
    step = max(1, -(-batch_rows // MARK_RECORDS))
    bounds = [int(mark) + skipped for mark in shape.marks[::step]]
    if bounds[-1] < size:  # else the last mark is the file's end: no empty window after it
        bounds.append(size)
    if len(bounds) < 2:
        return None
    return CsvWindows(path, name, header, bounds, step * MARK_RECORDS, shape.records)
