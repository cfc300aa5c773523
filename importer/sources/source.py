"""One source file (or object) of an import, read in bounded batches.

Each ``Source`` is one file. It knows its format, gives a polars ``LazyFrame`` with a 1-based
``__row__`` column (the data record number, header not counted) and is read in bounded batches,
never whole. CSV cells are all read as text, so ``00123`` stays ``00123``; the mapping's ``type``
converts them later. A source's fingerprint is a hash of its whole content (local files) or of its
ETag and size (remote objects): the path is not part of it, so a renamed file is still recognised.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl

from importer.errors import EmptySourceError, SourceError
from importer.mapping import SourceOptions
from importer.sources.footer import row_group_rows
from importer.sources.problems import locate_csv_problem, transcode_latin1

if TYPE_CHECKING:
    from importer.sources.records import RecordShape
    from importer.sources.windows import CsvWindows

Format = Literal["csv", "parquet"]
ROW = "__row__"
# On a CSV batch holding records with another field count than the header: why (else null), and
# the first column the record lacks (or "" when it has too many).
RAGGED = "__ragged__"
RAGGED_COLUMN = "__ragged_column__"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "https://", "http://")
_WINDOW_BATCHES = 4  # small row groups are read together, up to about this many batches


def is_remote(name: str) -> bool:
    """True for an object-store or web URL."""
    return name.lower().startswith(REMOTE_SCHEMES)


@dataclass
class Source:
    """One file (or object) of the import."""

    name: str  # as the user named it (or as a glob/directory expanded it)
    format: Format
    options: SourceOptions = field(default_factory=SourceOptions)
    _fingerprint: str | None = field(default=None, repr=False)
    _transcoded: Path | None = field(default=None, repr=False)
    _ragged: pl.DataFrame | None = field(default=None, repr=False)
    _shape: RecordShape | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        """True for an object-store or web URL."""
        return is_remote(self.name)

    @property
    def delimiter(self) -> str:
        """The CSV delimiter: the mapping's, else tab for .tsv, else comma."""
        if self.options.delimiter:
            return self.options.delimiter
        return "\t" if ".tsv" in self.name.lower() else ","

    # --- identity -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A stable hash of the content (local) or of ETag and size (remote)."""
        if self._fingerprint is None:
            if self.remote:
                from importer.sources.remote import remote_fingerprint

                self._fingerprint = remote_fingerprint(self.name, self.options.storage_options)
            else:
                digest = hashlib.sha256()
                try:
                    with open(self.name, "rb") as handle:
                        while block := handle.read(1 << 20):
                            digest.update(block)
                except OSError as exc:
                    raise SourceError(f"{self.name}: cannot read: {exc.strerror}") from None
                self._fingerprint = "sha256:" + digest.hexdigest()
        return self._fingerprint

    # --- reading --------------------------------------------------------------------------

    def _csv_path(self) -> str:
        """The path polars reads: the file itself, or its UTF-8 transcoding for latin1."""
        if self.options.encoding == "utf8":
            return self.name
        if self._transcoded is None:
            if self.remote:
                from importer.sources.remote import download_latin1_as_utf8

                self._transcoded = download_latin1_as_utf8(self.name, self.options.storage_options)
            else:
                self._transcoded = transcode_latin1(Path(self.name))
        return str(self._transcoded)

    def columns(self) -> list[str]:
        """The column names, in file order; duplicated names are an error naming them."""
        try:
            if self.format == "parquet":
                names = self._scan_parquet().collect_schema().names()
            else:
                names = self._csv_header()
        except SourceError:
            raise
        except Exception as exc:
            raise self._read_error(exc) from None
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SourceError(
                f"{self.name}: column name(s) {', '.join(map(repr, duplicates))} appear more than "
                "once in the header",
                hint="rename the duplicated columns so each name is unique",
            )
        return names

    def _csv_header(self) -> list[str]:
        if self.remote:
            return self._scan_csv().collect_schema().names()
        path = self._csv_path()
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", newline="", errors="replace") as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            header = next(reader, None)
        if header is None:
            raise EmptySourceError(
                f"{self.name}: the file is empty (no header, no rows)",
                hint="check the export that produced it, or pass --allow-empty",
            )
        return header

    def _scan_csv(self) -> pl.LazyFrame:
        return pl.scan_csv(
            self._csv_path(),
            separator=self.delimiter,
            infer_schema=False,
            null_values=list(self.options.null_values),
            missing_columns="insert",
            # a record with extra fields is cut to the header's, and rejected by ragged_rows()
            truncate_ragged_lines=True,
            storage_options=self.options.storage_options or None,
            glob=False,
        )

    def _scan_parquet(self) -> pl.LazyFrame:
        return pl.scan_parquet(
            self.name, storage_options=self.options.storage_options or None, glob=False
        )

    def scan(self) -> pl.LazyFrame:
        """A LazyFrame of every column plus the 1-based record number in ``__row__``."""
        frame = self._scan_parquet() if self.format == "parquet" else self._scan_csv()
        return frame.with_row_index(ROW, offset=1)

    def batches(self, columns: list[str], batch_rows: int) -> Iterator[pl.DataFrame]:
        """Stream the given columns (plus ``__row__``) in bounded batches."""
        windows = self._parquet_windows(batch_rows) if self.format == "parquet" else None
        try:
            if self.format == "csv" and (planned := self._csv_windows(batch_rows)) is not None:
                yield from self._windowed_csv(planned, columns, batch_rows)
                return
            if windows is None:
                # the row number is added per batch: in the plan it makes polars read further
                # ahead of a slower consumer (measured on CSV)
                plain = self._scan_parquet() if self.format == "parquet" else self._scan_csv()
                ragged = self.ragged_rows() if self.format == "csv" else None
                first = 1
                for batch in plain.select(columns).collect_batches(chunk_size=batch_rows):
                    numbered = batch.with_row_index(ROW, offset=first)
                    first += batch.height
                    yield numbered if ragged is None else _mark_ragged(numbered, ragged)
                return
            frame = self.scan().select([ROW, *columns])
            # polars' batch stream reads a Parquet file ahead of a slower consumer (measured:
            # ~1 GB for 10M rows); a window of whole row groups at a time keeps memory bounded
            for start, length in windows:
                window = frame.slice(start, length).collect()
                for offset in range(0, window.height, batch_rows):
                    yield window.slice(offset, batch_rows)
        except SourceError:
            raise
        except Exception as exc:
            raise self._read_error(exc) from None

    def _csv_windows(self, batch_rows: int) -> CsvWindows | None:
        """A plain local CSV's windows of records (see ``windows``); None to stream it."""
        if self.remote:
            return None
        self.ragged_rows()  # scans the file once, noting where records end
        assert self._shape is not None
        from importer.sources.windows import plan_windows

        return plan_windows(self._csv_path(), self._shape, batch_rows, name=self.name)

    def _windowed_csv(
        self, planned: CsvWindows, columns: list[str], batch_rows: int
    ) -> Iterator[pl.DataFrame]:
        """The CSV's batches, read window by window."""
        ragged = self.ragged_rows()

        def parse(data: bytes) -> pl.DataFrame:
            return pl.read_csv(
                data,
                columns=columns,
                separator=self.delimiter,
                infer_schema=False,
                null_values=list(self.options.null_values),
                truncate_ragged_lines=True,
            )

        for first, window in planned.read(parse):
            numbered = window.with_row_index(ROW, offset=first).select([ROW, *columns])
            marked = numbered if ragged is None else _mark_ragged(numbered, ragged)
            for offset in range(0, marked.height, batch_rows):
                yield marked.slice(offset, batch_rows)

    def ragged_rows(self) -> pl.DataFrame | None:
        """The CSV's records with another field count than the header, and why; None if none.

        The whole file is scanned once (quote-aware, vectorised, ``records``) and the result is
        kept for the second pass. A quote inside an unquoted value makes polars misread the
        records after it, so such a file is refused, naming the row.
        """
        if self._ragged is None:
            from importer.sources.records import scan_record_shapes

            shape = self._shape = scan_record_shapes(self._blocks(), delimiter=self.delimiter)
            if not shape.is_cleanly_quoted:
                row = int(shape.stray_quote_rows[0])
                raise SourceError(
                    f"{self.name}: {'the header' if row == 0 else f'row {row}'}: a quote stands "
                    "inside an unquoted value, which the CSV reader would misread",
                    hint='quote the whole value (write "12"" pipe" for 12" pipe) and export again',
                )
            self._ragged = _ragged_frame(shape, self.columns())
        return self._ragged if self._ragged.height else None

    def _blocks(self) -> Iterator[bytes]:
        """The CSV's bytes (UTF-8), in blocks."""
        if self.remote and self.options.encoding == "utf8":
            from importer.sources.remote import object_blocks

            return object_blocks(self.name, self.options.storage_options)
        from importer.sources.records import file_blocks

        return file_blocks(self._csv_path())

    def _parquet_windows(self, batch_rows: int) -> list[tuple[int, int]] | None:
        """(first row, rows) windows of whole row groups, from the footer; None for remote files."""
        if self.remote:
            return None
        try:
            groups = row_group_rows(self.name)
        except (OSError, ValueError):
            return None  # polars' own reader gives the error message
        windows: list[tuple[int, int]] = []
        start = length = 0
        for rows in groups:
            length += rows
            if length >= batch_rows * _WINDOW_BATCHES:
                windows.append((start, length))
                start, length = start + length, 0
        if length:
            windows.append((start, length))
        return windows

    def row_count_hint(self) -> int | None:
        """The row count when it is cheap to know (Parquet metadata), else None."""
        if self.format != "parquet":
            return None
        try:
            return int(self._scan_parquet().select(pl.len()).collect().item())
        except Exception:
            return None

    def close(self) -> None:
        """Remove any temporary transcoding."""
        if self._transcoded is not None:
            with contextlib.suppress(OSError):
                self._transcoded.unlink()
            self._transcoded = None

    # --- errors ---------------------------------------------------------------------------

    def _read_error(self, exc: Exception) -> SourceError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pl.exceptions.NoDataError) or "empty CSV" in text:
            return EmptySourceError(
                f"{self.name}: the file is empty (no header, no rows)",
                hint="check the export that produced it, or pass --allow-empty",
            )
        if self.format == "csv" and not self.remote:
            located = locate_csv_problem(self._csv_path(), self.delimiter)
            if located is not None:
                where, problem, hint = located
                return SourceError(f"{self.name}: {where}: {problem}", hint=hint)
        if self.format == "parquet":
            return SourceError(
                f"{self.name}: not a readable Parquet file ({text})",
                hint="the file may be truncated or still being written; export it again",
            )
        return SourceError(f"{self.name}: cannot read the file: {text}")


def _ragged_frame(shape: RecordShape, header: list[str]) -> pl.DataFrame:
    """ROW, the reason and the first missing column of each ragged record (rare: a Python list
    over those records only)."""
    total = len(header)
    fields = shape.bad_fields.tolist()
    frame = pl.DataFrame(
        {
            ROW: pl.Series(shape.bad_rows, dtype=pl.UInt32),
            "__fields": pl.Series(fields, dtype=pl.Int64),
            RAGGED_COLUMN: pl.Series(
                [header[n] if n < total else "" for n in fields], dtype=pl.String
            ),
        }
    )
    reason = pl.format("the record has {} field(s), the header has {}", "__fields", pl.lit(total))
    return frame.select(ROW, reason.alias(RAGGED), RAGGED_COLUMN)


def _mark_ragged(batch: pl.DataFrame, ragged: pl.DataFrame) -> pl.DataFrame:
    """The batch with the ragged records' reasons joined on (null for whole records)."""
    return batch.join(ragged, on=ROW, how="left", maintain_order="left")
