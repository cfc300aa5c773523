"""The row counts of a Parquet file's row groups, from its footer alone.

The reader cuts a Parquet file into windows of whole row groups; all it needs is how many rows
each group holds. That is in the file's footer (Thrift compact protocol, ``FileMetaData``
field 4, each ``RowGroup``'s field 3), so this reads the footer and walks it, skipping every
other field, instead of importing an Arrow library for it (which costs a process tens of MB).
Anything unexpected is a ``ValueError``: the caller then lets polars read the file whole and
word its error.
"""

from __future__ import annotations

import struct
from pathlib import Path

_MAGIC = b"PAR1"
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = range(9)
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12
_ROW_GROUPS = 4  # FileMetaData.row_groups: list<RowGroup>
_NUM_ROWS = 3  # FileMetaData.num_rows and RowGroup.num_rows: i64


class _Reader:
    """A cursor over Thrift compact-protocol bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise ValueError("the Parquet footer ends early")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def field(self, last: int) -> tuple[int, int]:
        """The next field's (id, type) of a struct; type 0 at its end."""
        header = self.byte()
        kind, delta = header & 0x0F, header >> 4
        if kind == _STOP:
            return 0, _STOP
        return (last + delta if delta else self.zigzag()), kind

    def collection(self) -> tuple[int, int]:
        """A list's or set's (size, element type)."""
        header = self.byte()
        size = header >> 4
        return (self.varint() if size == 15 else size), header & 0x0F

    def skip(self, kind: int) -> None:
        """Pass over one value of this type."""
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self.byte()
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.at += 8
        elif kind == _BINARY:
            length = self.varint()  # read before ``at`` moves past it
            self.at += length
        elif kind in (_LIST, _SET):
            size, element = self.collection()
            for _ in range(size):
                if element in (_TRUE, _FALSE):
                    self.byte()  # in a collection a boolean takes a byte
                else:
                    self.skip(element)
        elif kind == _MAP:
            self._skip_map()
        elif kind == _STRUCT:
            self._skip_struct()
        else:
            raise ValueError(f"the Parquet footer holds an unknown Thrift type {kind}")

    def _skip_map(self) -> None:
        size = self.varint()
        if size:
            types = self.byte()
            for _ in range(size):
                self.skip(types >> 4)
                self.skip(types & 0x0F)

    def _skip_struct(self) -> None:
        last = 0
        while True:
            last, kind = self.field(last)
            if kind == _STOP:
                return
            self.skip(kind)


def row_group_rows(path: str | Path) -> list[int]:
    """How many rows each row group of a local Parquet file holds, in file order."""
    with open(path, "rb") as file:
        file.seek(0, 2)
        size = file.tell()
        if size < 12:
            raise ValueError("too short for a Parquet file")
        file.seek(size - 8)
        length_bytes, magic = file.read(4), file.read(4)
        (length,) = struct.unpack("<I", length_bytes)
        if magic != _MAGIC or length + 12 > size:
            raise ValueError("no Parquet footer")
        file.seek(size - 8 - length)
        return _rows_of(_Reader(file.read(length)))


def _rows_of(reader: _Reader) -> list[int]:
    """Walk ``FileMetaData`` to its row groups and read each one's ``num_rows``; they must add
    up to the file's own ``num_rows``, or the footer was not read right."""
    rows: list[int] = []
    total, last = None, 0
    while True:
        last, kind = reader.field(last)
        if kind == _STOP:
            if total is None or sum(rows) != total:
                raise ValueError("the Parquet footer's row counts do not add up")
            return rows
        if last == _NUM_ROWS and kind == _I64:
            total = reader.zigzag()
            continue
        if last != _ROW_GROUPS or kind != _LIST:
            reader.skip(kind)
            continue
        count, element = reader.collection()
        if element != _STRUCT:
            raise ValueError("the Parquet footer's row groups are not structs")
        for _ in range(count):
            rows.append(_num_rows(reader))


def _num_rows(reader: _Reader) -> int:
    """One ``RowGroup``'s row count (the rest of the struct passed over)."""
    found, last = None, 0
    while True:
        last, kind = reader.field(last)
        if kind == _STOP:
            if found is None:
                raise ValueError("a Parquet row group without a row count")
            return found
        if last == _NUM_ROWS and kind == _I64:
            found = reader.zigzag()
        else:
            reader.skip(kind)
