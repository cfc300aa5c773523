"""Finding what makes a CSV unreadable, for an error that names the line or row, and transcoding
Latin-1 (polars reads only UTF-8) as a stream.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import os
import tempfile
from pathlib import Path

from importer.errors import SourceError


def transcode_latin1(path: Path) -> Path:
    """Write a UTF-8 copy of a Latin-1 file, block by block (never the whole file in memory)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    fd, tmp = tempfile.mkstemp(prefix="fyno-import-", suffix=".csv")
    try:
        with opener(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block.decode("latin-1").encode("utf-8"))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return Path(tmp)


def locate_csv_problem(path: str, delimiter: str) -> tuple[str, str, str | None] | None:
    """Find the first invalid UTF-8 byte or ragged record of a CSV, for the error message."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    try:
        with opener(path, "rb") as handle:
            while block := handle.read(1 << 16):
                # exc.start counts from the bytes the decoder held back from the previous
                # block (a partial character), so index that same buffer, not the block alone
                held = decoder.getstate()[0]
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:
                    data = held + block
                    bad = offset - len(held) + exc.start
                    bad_line = line + data[: exc.start].count(b"\n")
                    return (
                        f"line {bad_line}, byte {bad}",
                        f"not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                        "if the file is Latin-1, add `source: encoding: latin1` to the mapping",
                    )
                offset += len(block)
                line += block.count(b"\n")
        with opener(path, "rt", encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text, delimiter=delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                return None
            number = 0
            while True:
                number += 1
                line = reader.line_num + 1  # where this record starts
                try:
                    record = next(reader)
                except StopIteration:
                    return None
                except csv.Error as exc:
                    return (
                        f"row {number} (from line {line})",
                        f"not valid CSV: {exc}",
                        "a quote opened there is never closed, or a quote stands inside an "
                        "unquoted value; fix the export's quoting",
                    )
                if len(record) > len(header):
                    return (
                        f"row {number}",
                        f"{len(record)} fields where the header has {len(header)}",
                        "fix the row (a delimiter inside an unquoted value?) and export again",
                    )
    except (OSError, csv.Error, EOFError):
        return None
