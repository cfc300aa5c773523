"""The record-shape scanner against polars 2.1 (pinned cases, and its own reading of random files),
csv.reader, and a byte-at-a-time model of the same rules."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.errors import SourceError
from importer.sources.records import RecordShape, file_blocks, scan_record_shapes


def polars_frame(path: Path, delimiter: str = ",") -> pl.DataFrame:
    """The file as the importer reads it."""
    return pl.scan_csv(
        path,
        separator=delimiter,
        infer_schema=False,
        truncate_ragged_lines=True,
        empty_string_is_null=False,
    ).collect()


def in_blocks(data: bytes, size: int) -> list[bytes]:
    """``data`` cut every ``size`` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def shape_of(data: bytes, delimiter: str = ",", block_size: int = 1 << 20) -> RecordShape:
    """The scanner's answer for ``data`` in blocks of ``block_size``."""
    return scan_record_shapes(in_blocks(data, block_size), delimiter=delimiter)


def bad(shape: RecordShape) -> list[tuple[int, int]]:
    """The (row, fields) pairs the scanner reports."""
    return list(zip(shape.bad_rows.tolist(), shape.bad_fields.tolist(), strict=True))


# name: (file bytes, delimiter, header fields, data records, (row, fields) of the ragged ones)
PINNED: dict[str, tuple[bytes, str, int, int, list[tuple[int, int]]]] = {
    "LF": (b"a,b\n1,2\n3,4\n", ",", 2, 2, []),
    "CRLF": (b"a,b\r\n1,2\r\n3\r\n", ",", 2, 2, [(2, 1)]),
    "BOM before the header": (b"\xef\xbb\xbfa,b\n1,2\n", ",", 2, 1, []),
    "BOM before a quoted header": (b'\xef\xbb\xbf"a",b\n1,2\n', ",", 2, 1, []),
    "empty lines before the header": (b"\n\r\n\na,b\n1\n", ",", 2, 1, [(1, 1)]),
    "BOM then an empty line": (b"\xef\xbb\xbf\r\na,b\n1,2\n", ",", 2, 1, []),
    "a line of CR CR is a header": (b"\r\r\na,b\n", ",", 1, 1, [(1, 2)]),
    "a line of one space is a header": (b" \na,b\n", ",", 1, 1, [(1, 2)]),
    "quoted delimiter": (b'a,b\n"x,y",2\n"p,q,r"\n', ",", 2, 2, [(2, 1)]),
    "quoted newlines": (b'a,b\n"x\ny",2\n"p\r\n\nq"\n3,4\n', ",", 2, 3, [(2, 1)]),
    "quoted newline in the header": (b'"a\nb",c\n1,2\n', ",", 2, 1, []),
    "doubled quotes": (b'a,b\n"say ""hi,\n""",2\n"""",""\n', ",", 2, 2, []),
    "long record with quoted newline": (b'a,b\n1,2,"x\ny"\n3,4\n', ",", 2, 2, [(1, 3)]),
    "short record": (b"a,b,c\n1,2\n4,5,6\n", ",", 3, 2, [(1, 2)]),
    "long record": (b"a,b,c\n1,2,3,4\n4,5,6\n", ",", 3, 2, [(1, 4)]),
    "empty line in the middle": (b"a,b\n1,2\n\n3,4\n", ",", 2, 3, [(2, 1)]),
    "empty CRLF line in the middle": (b"a,b\r\n1,2\r\n\r\n3,4\r\n", ",", 2, 3, [(2, 1)]),
    "empty line, one column": (b"a\n1\n\n2\n", ",", 1, 3, []),
    "empty lines at the end": (b"a,b\n1,2\n\n\n", ",", 2, 3, [(2, 1), (3, 1)]),
    "a CR after the last newline": (b"a,b\n1,2\n\r", ",", 2, 2, [(2, 1)]),
    "a line of spaces": (b"a,b\n \n1,2\n", ",", 2, 2, [(1, 1)]),
    "last line without newline": (b"a,b\n1,2\n3", ",", 2, 2, [(2, 1)]),
    "quoted last line without newline": (b'a,b\n1,"2\n3"', ",", 2, 1, []),
    "header only": (b"a,b,c\n", ",", 3, 0, []),
    "header only, no newline": (b"a,b,c", ",", 3, 0, []),
    "header only, CRLF and BOM": (b"\xef\xbb\xbfa,b\r\n", ",", 2, 0, []),
    "lone CR is not a newline": (b"a,b\n1,2\r3,4\n5\n", ",", 2, 2, [(1, 3), (2, 1)]),
    "empty header fields": (b",\n1,2\n3\n", ",", 2, 2, [(2, 1)]),
    "tab": (b'a\tb\n1\t2\n"x\ty"\t3\n4,5\n', "\t", 2, 3, [(3, 1)]),
    "semicolon": (b"a;b\n1;2;3\n", ";", 2, 1, [(1, 3)]),
}


@pytest.mark.parametrize("name", PINNED)
def test_pinned_against_polars(name: str, tmp_path: Path) -> None:
    """Header width, record count and ragged rows are as pinned, and polars reads as many."""
    data, delimiter, header_fields, records, ragged = PINNED[name]
    shape = shape_of(data, delimiter)
    assert (shape.header_fields, shape.records, bad(shape)) == (header_fields, records, ragged)
    assert shape.is_cleanly_quoted
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    frame = polars_frame(path, delimiter)
    assert (frame.width, frame.height) == (header_fields, records)


@pytest.mark.parametrize("name", PINNED)
def test_pinned_in_one_byte_blocks(name: str) -> None:
    """Cutting every byte apart (BOM, CRLF, escapes) changes nothing."""
    data, delimiter, *_ = PINNED[name]
    whole, bytewise = shape_of(data, delimiter), shape_of(data, delimiter, block_size=1)
    assert (bytewise.header_fields, bytewise.records, bad(bytewise)) == (
        whole.header_fields,
        whole.records,
        bad(whole),
    )


def test_rows_are_numbered_as_polars_numbers_them(tmp_path: Path) -> None:
    """The row named ragged is the row polars holds at that number (quoted newlines inside)."""
    data = b'id,x,y\nr1,"a\nb",1\n\nr3,2\nr4,"p,q",3,4\r\nr5,"""\n""",5\nr6'
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    ids = polars_frame(path)["id"].to_list()
    shape = shape_of(data, block_size=5)
    assert [ids[row - 1] for row in shape.bad_rows.tolist()] == ["", "r3", "r4", "r6"]
    assert shape.bad_fields.tolist() == [1, 2, 4, 1]
    assert shape.records == len(ids) == 6


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n\n", b"\r", b"\n\r", b"\xef\xbb\xbf\n"])
def test_no_header(data: bytes, tmp_path: Path) -> None:
    """An empty file, or one of empty lines only, has no header for polars nor the scanner."""
    shape = shape_of(data, block_size=1)
    assert (shape.header_fields, shape.records, shape.is_rectangular) == (0, 0, True)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    with pytest.raises(pl.exceptions.NoDataError):
        polars_frame(path)


PAD = b"".join(b"%d,x,y\n" % i for i in range(10))  # input enough for polars' fast path


def test_stray_quotes_are_reported() -> None:
    """Records with a quote inside an unquoted field are named (0 is the header), once each."""
    data = b'a"b,c\n1,2\n12" pipe,3\n"x",y\n4,5 "z" 6\n"p,""q"""\n'
    for size in (1, 2, 5, len(data)):
        shape = shape_of(data, block_size=size)
        assert shape.stray_quote_rows.tolist() == [0, 2, 4]
        assert (shape.records, bad(shape)) == (5, [(5, 1)])
    assert shape_of(b'a,b\n"x",y\n').is_cleanly_quoted


def test_stray_quotes_count_as_text(tmp_path: Path) -> None:
    """A stray quote is text, as for polars on a short file: `12" x, 3" pipe` is two fields."""
    data = b'id,desc,size\n1,12" x, 3" pipe,large\n2,bolt,small\n'
    shape = shape_of(data)
    assert (bad(shape), shape.stray_quote_rows.tolist()) == ([(1, 4)], [1])
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    # polars reads the four fields and drops the last: why the importer must reject the row
    assert polars_frame(path).row(0) == ("1", '12" x', ' 3" pipe')


@pytest.mark.parametrize(
    ("data", "polars_fields"),
    [(b'h0,h1,h2\n"x",a",b"\n', 3), (b'h0,h1,h2\n"x",a",b"\n' + PAD, 2)],
)
def test_polars_reads_stray_quotes_by_position(
    data: bytes, polars_fields: int, tmp_path: Path
) -> None:
    """polars 2.1 counts a stray quote near a quoted field on a long input: rows must be refused."""
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    first = polars_frame(path).row(0)
    assert sum(cell != "" for cell in first) == polars_fields
    shape = shape_of(data)
    assert (shape.stray_quote_rows.tolist(), shape.is_rectangular) == ([1], True)


def test_polars_refuses_some_stray_quotes(tmp_path: Path) -> None:
    """Where polars' own record counts disagree it refuses the file; the scanner still answers."""
    data = b'id,desc\n1,12" pipe\n2,3" bolt\n'
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    with pytest.raises(pl.exceptions.ComputeError, match="malformed"):
        polars_frame(path)
    shape = shape_of(data)
    assert (shape.records, shape.stray_quote_rows.tolist()) == (2, [1, 2])


@pytest.mark.parametrize("data", [b'a,b\n1,"2\n3\n', b'"' * 10_001, b'a,"b""' * 5000])
def test_unclosed_quotes_run_to_the_end(data: bytes) -> None:
    """A quote never closed runs to the end of the file, as in polars; nothing crashes or hangs."""
    shape = shape_of(data, block_size=7)
    got = (shape.header_fields, shape.records, bad(shape), shape.stray_quote_rows.tolist())
    assert got == reference(data)
    assert shape.records <= 1


def test_without_quoting() -> None:
    """With ``quote=None`` a quote is an ordinary byte, as polars' ``quote_char=None``."""
    shape = scan_record_shapes([b'a,b\n"x,y"\n"p\nq"\n'], delimiter=",", quote=None)
    assert (shape.records, bad(shape)) == (3, [(2, 1), (3, 1)])


@pytest.mark.parametrize(("delimiter", "quote"), [("ab", '"'), ("\n", '"'), ("é", '"'), (",", ",")])
def test_rejects_unusable_delimiter_or_quote(delimiter: str, quote: str) -> None:
    """A delimiter or quote that is not one plain byte, or both the same, is a ValueError."""
    with pytest.raises(ValueError, match="must"):
        scan_record_shapes([b"a\n"], delimiter=delimiter, quote=quote)


def test_result_arrays_are_read_only() -> None:
    """The frozen result cannot be changed through its arrays either."""
    shape = shape_of(b"a,b\n1\n")
    assert shape.bad_rows.dtype == shape.bad_fields.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        shape.bad_rows[0] = 2


MIXED = b"".join(
    b'%d,"n,%d\r\nx",""""\n' % (i, i) if i % 3 else b"%d,%d\r\n\n" % (i, i) for i in range(400)
)


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 64, 4096, len(MIXED)])
def test_block_size_does_not_change_the_result(block_size: int) -> None:
    """Every block size gives the same answer as reading the file whole."""
    whole = shape_of(b"a,b,c\n" + MIXED, block_size=len(MIXED) + 6)
    split = shape_of(b"a,b,c\n" + MIXED, block_size=block_size)
    assert (split.records, bad(split)) == (whole.records, bad(whole))
    assert whole.records == 400 + 134  # each unquoted-row pair adds an empty line


def test_file_blocks_reads_plain_and_gzip_files(tmp_path: Path) -> None:
    """Plain and gzip files (by content, whatever the name) give the same bounded blocks."""
    data = b"a,b\n" + b"1,2\n" * 1000
    plain, gz, named = tmp_path / "p.csv", tmp_path / "g.csv.gz", tmp_path / "g.csv"
    plain.write_bytes(data)
    gz.write_bytes(gzip.compress(data))
    named.write_bytes(gzip.compress(data))
    for path in (plain, gz, named):
        blocks = list(file_blocks(path, block_size=100))
        assert b"".join(blocks) == data
        assert max(map(len, blocks)) == 100


def test_file_blocks_refuses_zstd(tmp_path: Path) -> None:
    """A zstd file, which polars would decompress, is refused rather than scanned as text."""
    path = tmp_path / "z.csv"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 10)
    with pytest.raises(SourceError, match="zstd"):
        list(file_blocks(path))


@pytest.mark.parametrize("content", [None, gzip.compress(b"a,b\n1,2\n" * 100)[:-30]])
def test_file_blocks_unreadable(content: bytes | None, tmp_path: Path) -> None:
    """A missing file or a truncated gzip stream is a SourceError naming the file."""
    path = tmp_path / "bad.csv.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=r"bad\.csv\.gz: cannot read"):
        list(file_blocks(path))


def test_scans_a_gzip_file_end_to_end(tmp_path: Path) -> None:
    """file_blocks feeds the scanner; the answer is the plain file's."""
    data = b"a,b\n" + b'1,"x\ny"\n2\n' * 5000
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress(data))
    shape = scan_record_shapes(file_blocks(path, block_size=333), delimiter=",")
    assert shape.records == 10_000
    assert shape.bad_rows.tolist() == list(range(2, 10_001, 2))


def reference(
    raw: bytes, delimiter: str = ","
) -> tuple[int, int, list[tuple[int, int]], list[int]]:
    """The scanner's answer worked out one byte at a time, by a plain state machine."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    while raw.startswith((b"\n", b"\r\n")):
        raw = raw.removeprefix(b"\r").removeprefix(b"\n")
    counts: list[int] = []  # fields per record, the header first
    strays: list[int] = []  # records holding a quote inside an unquoted field
    fields, stray, field_start, quoted, inside, pending = 1, False, True, False, False, False
    for char in raw.decode("latin-1"):  # one char per byte
        pending = True
        if char == '"' and (quoted or field_start):
            quoted, inside = True, not inside  # opens, or toggles inside a quoted field
        elif char == '"':
            stray = True
        elif not inside and char in (delimiter, "\n"):
            if char == "\n":
                strays += [len(counts)] if stray else []
                counts.append(fields)
                fields, stray, pending = 0, False, False
            fields, field_start, quoted = fields + 1, True, False
            continue
        field_start = False
    if pending and raw != b"\r":  # a last line without newline (polars: no header in "\r")
        strays += [len(counts)] if stray else []
        counts.append(fields)
    header, *rest = counts or [0]
    return header, len(rest), [(r, n) for r, n in enumerate(rest, 1) if n != header], strays


RAW_PIECES = [b"a", b",", b";", b'"', b'""', b"\n", b"\r\n", b"\r", b" ", "é".encode()]


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(RAW_PIECES), max_size=40),
    prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\n", b"\r\n\n", b"\xef\xbb\xbf\r"]),
    delimiter=st.sampled_from([",", ";"]),
    data=st.data(),
)
def test_matches_a_byte_by_byte_model(
    pieces: list[bytes], prefix: bytes, delimiter: str, data: st.DataObject
) -> None:
    """On any bytes, well quoted or not, in any blocks, the answer is the plain model's."""
    raw = prefix + b"".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=8)))
    blocks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    shape = scan_record_shapes(blocks, delimiter=delimiter)
    got = (shape.header_fields, shape.records, bad(shape), shape.stray_quote_rows.tolist())
    assert got == reference(raw, delimiter)


# Random CSV texts, built field by field. An unquoted field may hold the delimiter (a ragged
# record, on purpose) but no CR: csv.reader ends a line at a lone CR, polars does not (pinned
# above). A stray field has a quote after its first character.
def quoted(text: str) -> str:
    """``text`` as one quoted CSV field."""
    return '"' + text.replace('"', '""') + '"'


PLAIN = st.text(alphabet="ab é日 ;\t", max_size=4)
QUOTED = st.text(alphabet='ab,;\t"\n\r é', max_size=5).map(quoted)
STRAY = st.tuples(st.text("ab é", min_size=1, max_size=2), st.text('ab é"', max_size=2))
FIELD = st.one_of(
    PLAIN.map(lambda text: (text, False)),
    QUOTED.map(lambda text: (text, False)),
    STRAY.map(lambda parts: (f'{parts[0]}"{parts[1]}', True)),
)
ENDING = st.sampled_from(["\n", "\r\n"])


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[str, str, list[int]]:
    """A CSV text with ragged, empty and stray-quoted records; its delimiter; the stray records."""
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    header = draw(st.lists(FIELD, min_size=1, max_size=5))
    if header == [("", False)]:
        header = [("h", False)]  # an empty first line is skipped, not a header
    records = [header, *draw(st.lists(st.lists(FIELD, max_size=5), max_size=12))]
    text = "".join(delimiter.join(f for f, _ in record) + draw(ENDING) for record in records)
    if draw(st.booleans()):
        text = text.removesuffix("\r\n").removesuffix("\n")
    strays = [row for row, record in enumerate(records) if any(s for _, s in record)]
    return delimiter, text, strays


def csv_reader_fields(text: str, delimiter: str) -> list[int]:
    """Fields per record by Python's csv module, an empty line counted as polars does (1)."""
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return [len(row) or 1 for row in rows]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=csv_texts(), data=st.data())
def test_matches_csv_reader_and_polars(
    case: tuple[str, str, list[int]], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Field counts are csv.reader's, strays are found, and clean files have polars' records."""
    delimiter, text, strays = case
    prefix = data.draw(st.sampled_from(["", "\ufeff", "\n", "\ufeff\r\n\n"]))
    raw = (prefix + text).encode()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=8)))
    blocks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    shape = scan_record_shapes(blocks, delimiter=delimiter)

    header_fields, *fields = csv_reader_fields(text, delimiter)
    expected = [(row, n) for row, n in enumerate(fields, 1) if n != header_fields]
    assert (shape.header_fields, bad(shape)) == (header_fields, expected)
    assert (shape.records, shape.stray_quote_rows.tolist()) == (len(fields), strays)
    if not strays:  # with them polars may count otherwise, or refuse the file
        path = tmp_path_factory.mktemp("csv") / "f.csv"
        path.write_bytes(raw)
        assert polars_frame(path, delimiter).height == shape.records


WIDTH = 6
NONEMPTY = st.one_of(st.text("ab ", min_size=1, max_size=3), QUOTED)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(st.lists(NONEMPTY, max_size=WIDTH), ENDING), max_size=10),
    data=st.data(),
)
def test_field_counts_are_polars_own(
    records: list[tuple[list[str], str]],
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Cleanly quoted, no record wider than the header: each count is what polars reads."""
    header = ",".join(f"h{i}" for i in range(WIDTH)) + "\n"
    raw = (header + "".join(",".join(fields) + end for fields, end in records)).encode()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=8)))
    blocks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    shape = scan_record_shapes(blocks, delimiter=",")
    counts = [WIDTH] * shape.records
    for row, fields in bad(shape):
        counts[row - 1] = fields

    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_bytes(raw)
    # by default polars reads an unquoted empty cell, and a padded one, as null; none is empty
    # here but an empty line, which is one field
    frame = pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=True).collect()
    assert counts == [max(1, sum(cell is not None for cell in row)) for row in frame.rows()]
