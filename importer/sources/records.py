"""Which records of a CSV file have another number of fields than its header.

polars cannot say it: with ``truncate_ragged_lines=True`` it pads a short record with empty cells,
which look like real empty cells (so ``on_null: unset`` would clear properties the file never
meant to touch), and cuts a long record silently; without it, one long record stops the file.
So the importer reads with ``truncate_ragged_lines=True`` and rejects the rows this scanner names.

The scanner reads bytes with numpy, a window of a block at a time, never a byte or a record at a
time: it finds the delimiters, newlines and quotes of a window at once and carries to the next
what an unfinished record needs (quote state, delimiters so far). It numbers records as polars
2.1's ``pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=True)`` does, pinned in
``tests/test_csv_records.py``:

- one UTF-8 BOM at the start is skipped, and so are empty lines (``\n`` or ``\r\n``) before
  the header; a file with nothing else has no header;
- records end at a ``\n`` outside quotes; a ``\r`` is an ordinary byte (it changes no count);
- an empty line after the header is a record of one field; a last line without ``\n`` is a
  record unless it is empty;
- a field is quoted when its first byte is a quote, and then every quote in it toggles (opener,
  closer, each half of a ``""`` escape): a delimiter or newline is inside quotes after an odd
  number of them. A quote elsewhere (``12" pipe``) is text, as for csv.reader and mostly for
  polars; but polars 2.1 counts it when it comes soon after a quoted field (seen within about 64
  bytes, on a long enough input), and refuses a file when that changes its count of records. So
  a record holding such a stray quote is reported: polars may split and number it otherwise.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from importer.errors import SourceError

DEFAULT_BLOCK_SIZE = 4 << 20  # few reads, little memory
_WINDOW = 256 << 10  # how much of a block numpy works on at once (see _Scanner.feed)
MARK_RECORDS = 10_000  # the scanner notes where every this many data records end

_BOM = b"\xef\xbb\xbf"
_BLANK_LINES = re.compile(rb"(?:\r?\n)*")
_NEWLINE = ord("\n")
GZIP_MAGIC = b"\x1f\x8b"
# polars also decompresses these by their first bytes; scanning them as text would be nonsense
_OTHER_COMPRESSIONS = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x78\x01": "zlib",
    b"\x78\x9c": "zlib",
    b"\x78\xda": "zlib",
}

Rows = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]
Bytes = npt.NDArray[np.uint8]
Indices = npt.NDArray[np.intp]
_NO_INDICES: Indices = np.zeros(0, dtype=np.intp)


@dataclass(frozen=True, eq=False)
class RecordShape:
    """How many fields a CSV's header has, how many data records follow, and which differ."""

    header_fields: int  # 0 when the file has no header: empty, or only empty lines
    records: int  # data records, the header not counted
    bad_rows: Rows  # 1-based data-record numbers whose field count is not header_fields
    bad_fields: Rows  # the field count of each of those records
    stray_quote_rows: Rows  # records with a quote inside an unquoted field (0 is the header)
    # where the header ends, then where every MARK_RECORDS-th data record ends: offsets into the
    # bytes scanned (from the header on), so a reader can cut the file at record boundaries
    marks: Rows = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scanned: int = 0  # bytes scanned, from the header on

    @property
    def is_rectangular(self) -> bool:
        """True when every data record has as many fields as the header."""
        return self.bad_rows.size == 0

    @property
    def is_cleanly_quoted(self) -> bool:
        """True when no quote stands inside an unquoted field, so polars reads as counted here."""
        return self.stray_quote_rows.size == 0


def scan_record_shapes(
    blocks: Iterable[bytes], *, delimiter: str, quote: str | None = '"'
) -> RecordShape:
    """Count the header's fields and find the records with another count, block by block."""
    scanner = _Scanner(_single_byte(delimiter, "delimiter"), _quote_byte(quote, delimiter))
    for block in _skip_preamble(blocks):
        if block:
            scanner.feed(block)
    return scanner.finish()


def file_blocks(
    path: str | os.PathLike[str], block_size: int = DEFAULT_BLOCK_SIZE
) -> Iterator[bytes]:
    """Yield a file's bytes in blocks of at most ``block_size``, gunzipped if it is gzip."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(4)
            raw.seek(0)
            for prefix, name in _OTHER_COMPRESSIONS.items():
                if magic.startswith(prefix):
                    raise SourceError(
                        f"{os.fspath(path)}: compressed with {name}, which is not supported",
                        hint="decompress it, or recompress it with gzip",
                    )
            # by content, not by name: polars decompresses a gzip file whatever it is called
            handle = gzip.GzipFile(fileobj=raw) if magic.startswith(GZIP_MAGIC) else raw
            while block := handle.read(block_size):
                yield block
    except (OSError, EOFError) as exc:  # EOFError: a truncated gzip stream
        raise SourceError(f"{os.fspath(path)}: cannot read: {exc}") from None


def _single_byte(char: str, what: str) -> int:
    encoded = char.encode()
    if len(encoded) != 1 or encoded in b"\r\n":
        raise ValueError(f"the {what} must be one ASCII character other than CR and LF: {char!r}")
    return encoded[0]


def _quote_byte(quote: str | None, delimiter: str) -> int | None:
    if quote is None:
        return None
    if quote == delimiter:
        raise ValueError(f"the quote and the delimiter must differ: {quote!r}")
    return _single_byte(quote, "quote")


def _skip_preamble(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the bytes from the header on, without the BOM and empty lines polars skips."""
    blocks = iter(blocks)
    head = b""
    for block in blocks:
        head += block  # small: the skipped bytes are dropped as they are found
        if len(head) < len(_BOM) and _BOM.startswith(head):
            continue  # could still become a BOM
        head = head.removeprefix(_BOM)
        # only the file's first bytes may be a BOM: later blocks are not looked at for one
        yield from _after_bom(head, blocks)
        return
    if head:  # a partial BOM alone: polars reads it as a header
        yield head


def _after_bom(head: bytes, blocks: Iterator[bytes]) -> Iterator[bytes]:
    head = _strip_blank_lines(head)
    # a lone "\r" may start an empty "\r\n" line; at EOF polars finds no header in it
    while not head or head == b"\r":
        block = next(blocks, None)
        if block is None:
            return
        head = _strip_blank_lines(head + block)
    yield head
    yield from blocks


def _strip_blank_lines(head: bytes) -> bytes:
    match = _BLANK_LINES.match(head)
    return head[match.end() :] if match else head


def _buffer() -> Flags:
    return np.empty(_WINDOW, dtype=np.bool_)


@dataclass
class _Scanner:
    """What a record needs from the windows before it: quote state and its delimiters."""

    delimiter: int
    quote: int | None
    in_quotes: bool = False  # parity of the quotes polars counts
    last_counted: bool = False  # whether the last quote so far was counted (not literal)
    separator_since_quote: bool = True  # the header's start is a field start
    after_separator: bool = True  # whether the byte before the window is a delimiter or newline
    open_delimiters: int = 0  # delimiters of the record not yet ended by a newline
    open_bytes: bool = False  # whether that record has any byte at all
    header_fields: int | None = None
    records: int = 0
    bad_rows: list[Rows] = field(default_factory=list)
    bad_fields: list[Rows] = field(default_factory=list)
    stray_rows: list[Rows] = field(default_factory=list)
    marks: list[Rows] = field(default_factory=list)
    fed: int = 0  # bytes fed before the window being scanned
    # made once: fresh temporaries of a window's size cost a page fault per 4 KiB, which made
    # building the masks five times slower
    _separators: Flags = field(default_factory=_buffer, init=False, repr=False)
    _quotes: Flags = field(default_factory=_buffer, init=False, repr=False)
    _either: Flags = field(default_factory=_buffer, init=False, repr=False)

    def feed(self, block: bytes) -> None:
        """Count the fields of the records that end in ``block``; carry the unfinished one."""
        data = np.frombuffer(block, dtype=np.uint8)
        # a window's masks stay in the CPU cache: measured 1.5 times faster than a 4 MiB block
        for start in range(0, data.size, _WINDOW):
            window = data[start : start + _WINDOW]
            self._feed_window(window)
            self.fed += window.size

    def _feed_window(self, data: Bytes) -> None:
        found, outside, strays, positions = self._classify(data)
        if outside is not None and strays.size:
            self._note_strays(found, outside, strays)
        tokens = found if outside is None else np.compress(outside, found)
        newlines = np.flatnonzero(tokens == _NEWLINE)
        if newlines.size == 0:
            self.open_delimiters += tokens.size
            self.open_bytes = True
            return
        self._note_marks(data, newlines, None if outside is None else positions[outside])
        # tokens are delimiters and newlines only: a record's fields are the tokens from the
        # one after the previous newline to its own newline (np.diff, without its overhead)
        fields = np.empty(newlines.size, dtype=np.int64)
        fields[0] = newlines[0] + 1 + self.open_delimiters
        np.subtract(newlines[1:], newlines[:-1], out=fields[1:])
        self.open_delimiters = int(tokens.size - 1 - newlines[-1])
        # the last byte is not a quote, so the parity after the window is its own
        self.open_bytes = not (data[-1] == _NEWLINE and not self.in_quotes)
        self._count(fields)

    def _note_marks(self, data: Bytes, newlines: Indices, at: Indices | None) -> None:
        """Note where the header and every MARK_RECORDS-th data record end, if in this window.

        ``newlines`` index the window's tokens outside quotes; ``at`` gives each such token's
        byte in the window (None when the window has no quote, so every newline counts)."""
        ended = self.records + (self.header_fields is not None)  # records before, header too
        first = -ended % MARK_RECORDS  # the newline ending data record k * MARK_RECORDS
        if first >= newlines.size:
            return
        if at is None:
            at = np.flatnonzero(data == _NEWLINE)  # the tokens' newlines are the window's
            byte_at = at[first::MARK_RECORDS]
        else:
            byte_at = at[newlines[first::MARK_RECORDS]]
        self.marks.append(byte_at.astype(np.int64) + (self.fed + 1))

    def _classify(self, data: Bytes) -> tuple[Bytes, Flags | None, Indices, Indices]:
        """``data``'s delimiters, newlines and quotes; which are outside quotes; stray quotes;
        where in ``data`` each of them is (only when there are quotes)."""
        n = data.size
        separators, quotes, either = self._separators[:n], self._quotes[:n], self._either[:n]
        np.equal(data, self.delimiter, out=separators)
        np.equal(data, _NEWLINE, out=either)
        np.logical_or(separators, either, out=separators)
        if self.quote is not None:
            np.equal(data, self.quote, out=quotes)
        if self.quote is None or not quotes.any():
            found = np.compress(separators, data)
            self.separator_since_quote |= found.size > 0
            self.after_separator = bool(separators[-1])
            return (found[:0] if self.in_quotes else found), None, _NO_INDICES, _NO_INDICES
        np.logical_or(separators, quotes, out=either)
        positions = np.flatnonzero(either)
        found = data[positions]
        outside, strays = self._split_quotes(found, positions, separators)
        self.after_separator = bool(separators[-1])
        return found, outside, strays, positions

    def _split_quotes(
        self, found: Bytes, positions: Indices, separators: Flags
    ) -> tuple[Flags, Indices]:
        """Which of ``found`` are outside quotes, and which quotes are stray; carry the state."""
        is_quote = found == self.quote
        # int32 may wrap on a huge window but keeps the parity, and sums faster than int64
        outside = (np.cumsum(is_quote, dtype=np.int32) & 1) == self.in_quotes
        np.logical_and(outside, ~is_quote, out=outside)
        if self._every_quote_counts(is_quote, outside, positions):
            strays, self.last_counted = _NO_INDICES, True
        else:
            quote_at = np.flatnonzero(is_quote)  # indices into found
            counted = self._counted(quote_at, positions, separators)
            toggles = np.zeros(found.size, dtype=np.bool_)
            toggles[quote_at[counted]] = True
            outside = (np.cumsum(toggles, dtype=np.int32) & 1) == self.in_quotes
            np.logical_and(outside, ~is_quote, out=outside)
            strays, self.last_counted = quote_at[~counted], bool(counted[-1])
        self.in_quotes ^= bool((np.count_nonzero(is_quote) - strays.size) & 1)
        self.separator_since_quote = not is_quote[-1]
        return outside, strays

    def _every_quote_counts(self, is_quote: Flags, outside: Flags, positions: Indices) -> bool:
        """Whether every quote counts, as in a well-quoted file: the usual case, and cheap.

        Counting them all (as ``outside`` was computed) is right unless some quote taken for an
        opener is not at a field start. The first such quote has a delimiter or newline outside
        quotes as the token before it, but not as the byte before it.
        """
        if is_quote[0]:  # its token before is in an earlier window
            if not self.separator_since_quote:
                if not self.last_counted:
                    return False  # it goes on with a stray run
            elif not self.in_quotes and not (positions[0] == 0 and self.after_separator):
                return False
        openers = np.flatnonzero(outside[:-1] & is_quote[1:])  # each is the token before one
        return bool(np.all(positions[openers + 1] - positions[openers] == 1))

    def _counted(self, quote_at: Indices, positions: Indices, separators: Flags) -> Flags:
        """Which quotes count (see _counted_quotes), where some may not."""
        # a run of quotes starts at a quote with a delimiter or newline since the one before
        new_run = np.empty(quote_at.size, dtype=np.bool_)
        new_run[0] = quote_at[0] > 0 or self.separator_since_quote
        np.greater(quote_at[1:] - quote_at[:-1], 1, out=new_run[1:])
        heads = np.flatnonzero(new_run)
        # a run opens when its first quote is at a field start: just after a delimiter or newline
        head_at = positions[quote_at[heads]]
        opens = separators[head_at - 1]
        if head_at.size and head_at[0] == 0:  # the byte before is the previous window's
            opens[0] = self.after_separator
        return _counted_quotes(quote_at.size, heads, opens, self.in_quotes, self.last_counted)

    def _note_strays(self, found: Bytes, outside: Flags, strays: Indices) -> None:
        """Note the records (0 the header) holding the stray quotes at ``strays`` in ``found``."""
        ends = np.flatnonzero((found == _NEWLINE) & outside)
        before = self.records + (self.header_fields is not None)  # records ended before
        self.stray_rows.append(np.unique(np.searchsorted(ends, strays)) + before)

    def _count(self, fields: Rows) -> None:
        """Take the header from the first record, then note the data records that differ."""
        if self.header_fields is None:
            self.header_fields = int(fields[0])
            fields = fields[1:]
        bad = np.flatnonzero(fields != self.header_fields)
        if bad.size:
            self.bad_rows.append(bad.astype(np.int64) + (self.records + 1))
            self.bad_fields.append(fields[bad])
        self.records += int(fields.size)

    def finish(self) -> RecordShape:
        """The shape of the whole file, counting a last record that has no newline."""
        if self.open_bytes:
            self._count(np.array([self.open_delimiters + 1], dtype=np.int64))
        return RecordShape(
            header_fields=self.header_fields or 0,
            records=self.records,
            bad_rows=_frozen(self.bad_rows),
            bad_fields=_frozen(self.bad_fields),
            stray_quote_rows=_frozen(self.stray_rows, unique=True),  # a record may span windows
            marks=_frozen(self.marks),
            scanned=self.fed,
        )


def _frozen(parts: list[Rows], *, unique: bool = False) -> Rows:
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if unique:
        joined = np.unique(joined)
    joined.setflags(write=False)
    return joined


def _counted_quotes(
    n: int, heads: Indices, opens: Flags, in_quotes: bool, last_counted: bool
) -> Flags:
    """Which quotes polars counts (opening, closing, escaping); the others are literal text.

    polars quotes a field only when its first byte is a quote, and then toggles on every quote
    of the field, so a quote in a field that starts otherwise (``12" x``) is text. Quotes split
    into runs at each quote with a delimiter or newline since the one before: a run's quotes are
    in one field, so all are counted or none. A run whose first quote is at a field start is
    counted (it opens, or is inside quotes); any other run is counted only inside quotes. So the
    parity after a run is the one before flipped (counted, odd length), reset to even (counted
    only inside quotes, odd length) or kept (even length): a prefix scan numpy can do.
    """
    counted = np.empty(n, dtype=np.bool_)
    first = int(heads[0]) if heads.size else n
    counted[:first] = last_counted  # quotes before the first head go on with the last run
    if heads.size == 0:
        return counted
    parity = int(in_quotes) ^ (int(last_counted) & first & 1)
    lengths = np.diff(heads, append=n)
    odd = (lengths & 1).astype(np.bool_)
    flips = np.cumsum(opens & odd)  # inclusive: flips up to and including each run
    resets = np.where(~opens & odd, np.arange(heads.size), -1)
    last_reset = np.maximum.accumulate(resets)  # inclusive as well
    reset_before = np.concatenate(([-1], last_reset[:-1]))
    flips_before: Indices = flips - (opens & odd)
    # after a reset the parity is even, so only the flips since it count (mod 2, so the
    # parity at the first head can be added by subtracting it)
    base = np.where(reset_before >= 0, flips[reset_before], parity)
    inside = ((flips_before - base) & 1).astype(np.bool_)
    counted[first:] = np.repeat(opens | inside, lengths)
    return counted
