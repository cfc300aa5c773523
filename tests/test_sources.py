"""Tests of SOURCE resolution and reading: files, directories, globs, formats, encodings."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.cli import main
from importer.errors import SourceError
from importer.mapping import SourceOptions
from importer.sources import RAGGED, RAGGED_COLUMN, ROW, Source, resolve_sources


def names(sources: list[Source]) -> list[str]:
    """The file names (not the directories) of resolved sources, in order."""
    return [Path(s.name).name for s in sources]


def read_all(source: Source, batch_rows: int = 1000) -> list[dict[str, object]]:
    """Every row of a source (with its row number), through the streaming reader."""
    rows: list[dict[str, object]] = []
    for batch in source.batches(source.columns(), batch_rows):
        rows.extend(batch.to_dicts())
    return rows


def one(path: Path, **options: object) -> Source:
    """The single source a path resolves to."""
    sources, _ = resolve_sources([str(path)], options=SourceOptions.model_validate(options))
    assert len(sources) == 1
    return sources[0]


# --- resolving ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.tsv", "csv"),
        ("a.csv.gz", "csv"),
        ("A.CSV", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_a_file_resolves_by_its_suffix(tmp_path: Path, name: str, fmt: str) -> None:
    """A file argument becomes one source whose format comes from its suffix."""
    path = tmp_path / name
    path.write_bytes(b"")
    sources, notices = resolve_sources([str(path)])
    assert [(s.name, s.format) for s in sources] == [(str(path), fmt)]
    assert notices == []


def test_a_directory_is_read_in_name_order_without_recursion(tmp_path: Path) -> None:
    """A directory gives its CSV/Parquet files in name order; sub-folders are not searched."""
    for name in ["b.csv", "a.parquet", "c.tsv", "d.csv.gz"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.csv").write_text("id\n1\n")
    sources, _ = resolve_sources([str(tmp_path)])
    assert names(sources) == ["a.parquet", "b.csv", "c.tsv", "d.csv.gz"]


def test_a_directory_ignores_markers_crc_and_hidden_files_with_a_notice(tmp_path: Path) -> None:
    """_SUCCESS, .crc and hidden files in a directory are skipped, each with a notice naming it."""
    (tmp_path / "part-0.csv").write_text("id\n1\n")
    for name in ["_SUCCESS", "part-0.csv.crc", ".part-0.csv.crc", ".hidden.csv"]:
        (tmp_path / name).write_text("")
    sources, notices = resolve_sources([str(tmp_path)])
    assert names(sources) == ["part-0.csv"]
    assert len(notices) == 4
    for name in ["_SUCCESS", "part-0.csv.crc", ".part-0.csv.crc", ".hidden.csv"]:
        assert any(n.path == str(tmp_path / name) for n in notices), name


def test_several_sources_keep_the_order_given(tmp_path: Path) -> None:
    """Several SOURCE arguments are one import, in the order given on the command line."""
    for name in ["a.csv", "b.csv", "c.csv"]:
        (tmp_path / name).write_text("id\n1\n")
    args = [str(tmp_path / "c.csv"), str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    sources, _ = resolve_sources(args)
    assert names(sources) == ["c.csv", "a.csv", "b.csv"]


def test_a_glob_matches_in_name_order(tmp_path: Path) -> None:
    """A glob gives its matching CSV/Parquet files in name order and skips other suffixes."""
    for name in ["2024-03.csv", "2024-01.csv", "2024-02.csv", "2024-01.csv.crc", "_x.csv"]:
        (tmp_path / name).write_text("id\n1\n")
    sources, notices = resolve_sources([str(tmp_path / "2024-*")])
    assert names(sources) == ["2024-01.csv", "2024-02.csv", "2024-03.csv"]
    assert any("2024-01.csv.crc" in n.path for n in notices)


def test_a_glob_over_dated_folders_is_in_path_order(tmp_path: Path) -> None:
    """A glob such as day-*/users.csv takes the files in path order, not the disk's order."""
    days = [f"2024-01-{d:02d}" for d in range(1, 13)]
    for day in reversed(days):
        (tmp_path / day).mkdir()
        (tmp_path / day / "users.csv").write_text("id\n1\n")
    sources, _ = resolve_sources([str(tmp_path / "2024-01-*" / "users.csv")])
    assert [Path(s.name).parent.name for s in sources] == days


def test_a_glob_without_matches_gives_no_source(tmp_path: Path) -> None:
    """A glob that matches nothing resolves to no source (the command turns that into exit 2)."""
    sources, notices = resolve_sources([str(tmp_path / "nothing-*.csv")])
    assert sources == [] and notices == []


def test_an_explicit_file_with_an_unknown_suffix_is_an_error(tmp_path: Path) -> None:
    """Naming a .txt file is an error that names it and suggests --format."""
    path = tmp_path / "export.txt"
    path.write_text("id\n1\n")
    with pytest.raises(SourceError) as info:
        resolve_sources([str(path)])
    assert str(path) in str(info.value) and "unknown format" in str(info.value)
    assert "--format csv" in str(info.value)


def test_format_overrides_the_suffix(tmp_path: Path) -> None:
    """--format csv reads a file whatever its suffix."""
    path = tmp_path / "export.txt"
    path.write_text("id,x\n1,a\n")
    sources, _ = resolve_sources([str(path)], format="csv")
    assert [s.format for s in sources] == ["csv"]
    assert read_all(sources[0]) == [{ROW: 1, "id": "1", "x": "a"}]


def test_format_parquet_reads_a_parquet_file_under_another_name(tmp_path: Path) -> None:
    """--format parquet reads Parquet bytes in a file named .dat."""
    path = tmp_path / "export.dat"
    pl.DataFrame({"id": [7, 8]}).write_parquet(path)
    sources, _ = resolve_sources([str(path)], format="parquet")
    assert read_all(sources[0]) == [{ROW: 1, "id": 7}, {ROW: 2, "id": 8}]


def test_a_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    """A SOURCE that does not exist is an error naming it."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError) as info:
        resolve_sources([str(missing)])
    assert f"{missing}: no such file or directory" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused(tmp_path: Path) -> None:
    """A named pipe is refused (a source is read twice), with a hint to write a file first."""
    fifo = tmp_path / "users.csv"
    os.mkfifo(fifo)
    with pytest.raises(SourceError) as info:
        resolve_sources([str(fifo)])
    assert "pipe (FIFO)" in str(info.value) and "write the data to a file" in str(info.value)


# --- reading CSV --------------------------------------------------------------------------------


def test_csv_cells_are_read_as_text(tmp_path: Path) -> None:
    """CSV cells stay text, so 00123 stays 00123 and a late type change cannot break the read."""
    lines = ["id,code"] + [f"{i},{i}" for i in range(1, 200)] + ["200,00123", "201,abc"]
    path = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    rows = read_all(one(path), batch_rows=50)
    assert rows[-2:] == [
        {ROW: 200, "id": "200", "code": "00123"},
        {ROW: 201, "id": "201", "code": "abc"},
    ]


def test_tsv_is_read_with_tabs(tmp_path: Path) -> None:
    """A .tsv file is split on tabs, not commas."""
    path = tmp_path / "a.tsv"
    path.write_text("id\tname\n1\tSmith, Jane\n")
    assert read_all(one(path)) == [{ROW: 1, "id": "1", "name": "Smith, Jane"}]


def test_delimiter_option_is_used(tmp_path: Path) -> None:
    """source: delimiter: ';' splits on semicolons."""
    path = tmp_path / "a.csv"
    path.write_text("id;name\n1;Smith, Jane\n")
    assert read_all(one(path, delimiter=";")) == [{ROW: 1, "id": "1", "name": "Smith, Jane"}]


def test_null_values_option_is_used(tmp_path: Path) -> None:
    """source: null_values lists the cells read as null."""
    path = tmp_path / "a.csv"
    path.write_text("id,x\n1,NULL\n2,n/a\n")
    assert read_all(one(path, null_values=["NULL"])) == [
        {ROW: 1, "id": "1", "x": None},
        {ROW: 2, "id": "2", "x": "n/a"},
    ]
    assert read_all(one(path, null_values=["n/a"])) == [
        {ROW: 1, "id": "1", "x": "NULL"},
        {ROW: 2, "id": "2", "x": None},
    ]


def test_csv_gz_is_read(tmp_path: Path) -> None:
    """A gzip-compressed .csv.gz is read directly."""
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("id,name\n1,Zoë\n2,Ann\n")
    source = one(path)
    assert source.columns() == ["id", "name"]
    assert read_all(source) == [
        {ROW: 1, "id": "1", "name": "Zoë"},
        {ROW: 2, "id": "2", "name": "Ann"},
    ]


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark does not end up in the first header name."""
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffuser_id,email\nu1,a@x.io\n".encode())
    source = one(path)
    assert source.columns() == ["user_id", "email"]
    assert read_all(source) == [{ROW: 1, "user_id": "u1", "email": "a@x.io"}]


def test_a_quoted_newline_does_not_start_a_new_record(tmp_path: Path) -> None:
    """Rows are numbered by record: a quoted newline inside a cell is one record."""
    path = tmp_path / "a.csv"
    path.write_text('id,note\n1,"two\nlines"\n2,plain\n3,"three\nmore\nlines"\n4,end\n')
    rows = read_all(one(path))
    assert [(r[ROW], r["id"]) for r in rows] == [(1, "1"), (2, "2"), (3, "3"), (4, "4")]
    assert rows[0]["note"] == "two\nlines"


def test_row_numbers_continue_across_read_batches(tmp_path: Path) -> None:
    """Row numbers are the record's place in the file, whatever the reader's batch size."""
    path = tmp_path / "a.csv"
    path.write_text("id\n" + "".join(f"{i}\n" for i in range(1, 251)))
    rows = read_all(one(path), batch_rows=7)
    assert [r[ROW] for r in rows] == list(range(1, 251))
    assert all(r["id"] == str(r[ROW]) for r in rows)


def test_duplicate_column_names_are_an_error_naming_them(tmp_path: Path) -> None:
    """A header with repeated names is an error listing each repeated name."""
    path = tmp_path / "a.csv"
    path.write_text("id,email,plan,email,plan,x\n1,a,b,c,d,e\n")
    with pytest.raises(SourceError) as info:
        one(path).columns()
    message = str(info.value)
    assert str(path) in message and "'email', 'plan'" in message and "more than once" in message
    assert "'x'" not in message and "'id'" not in message


def test_an_empty_file_is_a_source_error(tmp_path: Path) -> None:
    """A zero-byte CSV is an error saying the file is empty."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError) as info:
        one(path).columns()
    assert f"{path}: the file is empty" in str(info.value)


def test_ragged_records_are_marked_for_rejection_and_the_rest_read(tmp_path: Path) -> None:
    """Records with more or fewer fields than the header are marked with why (for the rejects
    file); the file is read to its end."""
    path = tmp_path / "a.csv"
    path.write_text('id,x,y\n1,a,b\n2,b\n3,c,d,"e,f"\n4,d,e\n')
    rows = read_all(one(path))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    marks = [(r[ROW], r[RAGGED], r[RAGGED_COLUMN]) for r in rows if r[RAGGED] is not None]
    assert marks == [
        (2, "the record has 2 field(s), the header has 3", "y"),
        (3, "the record has 4 field(s), the header has 3", ""),
    ]


def test_a_quote_inside_an_unquoted_value_is_refused_naming_its_row(tmp_path: Path) -> None:
    """A bare quote inside a value (which the reader would misread) stops the file, naming the
    row and how to quote it."""
    path = tmp_path / "a.csv"
    path.write_text('id,x\n1,a\n2,12" pipe\n3,c\n')
    with pytest.raises(SourceError) as info:
        read_all(one(path))
    assert f"{path}: row 2: a quote stands inside an unquoted value" in str(info.value)


def test_non_utf8_csv_names_line_and_byte_and_suggests_latin1(tmp_path: Path) -> None:
    """A Latin-1 byte in a UTF-8 read names the line, the byte offset and `encoding: latin1`."""
    path = tmp_path / "a.csv"
    data = "id,name\n1,Ann\n2,José\n".encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(SourceError) as info:
        read_all(one(path))
    message = str(info.value)
    assert f"{path}: line 3, byte {data.index(0xE9)}: not valid UTF-8 (byte 0xe9)" in message
    assert "encoding: latin1" in message


def test_non_utf8_error_is_exact_past_a_read_block(tmp_path: Path) -> None:
    """The bad byte is located exactly even after a multi-byte character split across blocks."""
    path = tmp_path / "a.csv"
    head = b"id,name\n" + b"1,abcdefgh\n" * 5957  # 65,535 bytes: 'é' straddles the 64 KiB mark
    data = head + "é".encode() + b"\n2,Jos\xe9\n"
    path.write_bytes(data)
    with pytest.raises(SourceError) as info:
        read_all(one(path))
    bad = data.index(0xE9)
    line = data[:bad].count(b"\n") + 1
    assert f"line {line}, byte {bad}: not valid UTF-8 (byte 0xe9)" in str(info.value)


def test_latin1_is_transcoded(tmp_path: Path) -> None:
    """With encoding: latin1 the file is transcoded and its accented text read correctly."""
    path = tmp_path / "a.csv"
    path.write_bytes("id,name\n1,José\n2,Müller\n".encode("latin-1"))
    source = one(path, encoding="latin1")
    assert read_all(source) == [
        {ROW: 1, "id": "1", "name": "José"},
        {ROW: 2, "id": "2", "name": "Müller"},
    ]
    transcoded = source._transcoded
    assert transcoded is not None and transcoded.exists()
    source.close()
    assert not transcoded.exists()


def test_latin1_csv_gz_is_transcoded(tmp_path: Path) -> None:
    """A gzip-compressed Latin-1 CSV is transcoded too."""
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write("id,name\n1,Ça va\n".encode("latin-1"))
    source = one(path, encoding="latin1")
    try:
        assert read_all(source) == [{ROW: 1, "id": "1", "name": "Ça va"}]
    finally:
        source.close()


# --- reading Parquet ----------------------------------------------------------------------------


def test_parquet_keeps_its_types_and_numbers_rows(tmp_path: Path) -> None:
    """A Parquet file is read with its own column types and 1-based row numbers."""
    path = tmp_path / "a.parquet"
    pl.DataFrame({"id": [10, 11, 12], "ok": [True, False, None]}).write_parquet(path)
    source = one(path)
    assert source.scan().collect_schema()["id"] == pl.Int64
    assert read_all(source, batch_rows=2) == [
        {ROW: 1, "id": 10, "ok": True},
        {ROW: 2, "id": 11, "ok": False},
        {ROW: 3, "id": 12, "ok": None},
    ]
    assert source.row_count_hint() == 3


def test_a_truncated_parquet_file_is_a_clear_error(tmp_path: Path) -> None:
    """A Parquet file cut short says it is not readable and that it may be truncated."""
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({"id": list(range(100))}).write_parquet(whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(SourceError) as info:
        one(cut).columns()
    message = str(info.value)
    assert f"{cut}: not a readable Parquet file" in message and "truncated" in message


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_follows_content_not_name(tmp_path: Path) -> None:
    """A copy under another name has the same fingerprint; one changed byte gives another."""
    original = tmp_path / "users.csv"
    original.write_text("id,x\n1,a\n2,b\n")
    copy = tmp_path / "renamed" / "users-2024.csv"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    changed = tmp_path / "changed.csv"
    changed.write_text("id,x\n1,a\n2,c\n")
    assert one(original).fingerprint() == one(copy).fingerprint()
    assert one(original).fingerprint() != one(changed).fingerprint()
    assert one(original).fingerprint().startswith("sha256:")


def test_fingerprint_of_a_vanished_file_is_a_source_error(tmp_path: Path) -> None:
    """A file removed after it was resolved gives a SourceError naming it, not a traceback."""
    path = tmp_path / "a.csv"
    path.write_text("id\n1\n")
    source = one(path)
    path.unlink()
    with pytest.raises(SourceError) as info:
        source.fingerprint()
    assert str(path) in str(info.value)


# --- through the command line -------------------------------------------------------------------


@pytest.fixture
def id_mapping(tmp_path: Path) -> Path:
    """A mapping of columns id and email."""
    return write(
        tmp_path / "m.yaml",
        """
        distinct_id: id
        properties:
          - {column: email, op: set}
        """,
    )


def validate(*args: str) -> tuple[int, str]:
    """Run `fyno-import validate` and return its exit code and stderr."""
    result = CliRunner().invoke(main, ["validate", "--no-progress", *args])
    return result.exit_code, result.stderr


def test_header_only_file_is_exit_2_unless_allow_empty(tmp_path: Path, id_mapping: Path) -> None:
    """A file with a header and no rows stops validate (exit 2) unless --allow-empty (exit 0)."""
    path = tmp_path / "a.csv"
    path.write_text("id,email\n")
    rejects = str(tmp_path / "r.csv")
    code, err = validate(str(path), "-m", str(id_mapping), "--rejects", rejects)
    assert code == 2
    assert f"{path}: no data rows" in err and "--allow-empty" in err
    code, _ = validate(str(path), "-m", str(id_mapping), "--rejects", rejects, "--allow-empty")
    assert code == 0


def test_no_matching_file_is_exit_2_unless_allow_empty(tmp_path: Path, id_mapping: Path) -> None:
    """A glob matching nothing stops validate (exit 2) unless --allow-empty (exit 0)."""
    pattern = str(tmp_path / "none-*.csv")
    rejects = str(tmp_path / "r.csv")
    code, err = validate(pattern, "-m", str(id_mapping), "--rejects", rejects)
    assert code == 2 and "no CSV or Parquet file matches" in err and pattern in err
    code, _ = validate(pattern, "-m", str(id_mapping), "--rejects", rejects, "--allow-empty")
    assert code == 0


def test_directory_notices_reach_the_user(tmp_path: Path, id_mapping: Path) -> None:
    """Files skipped in a directory are named on stderr by validate."""
    data = tmp_path / "export"
    data.mkdir()
    (data / "part-0.csv").write_text("id,email\n1,a@x.io\n")
    (data / "_SUCCESS").write_text("")
    code, err = validate(str(data), "-m", str(id_mapping), "--rejects", str(tmp_path / "r.csv"))
    assert code == 0
    assert "ignored" in err and "_SUCCESS" in err


def test_non_utf8_source_stops_validate_with_exit_2(tmp_path: Path, id_mapping: Path) -> None:
    """validate on a Latin-1 file without encoding: latin1 exits 2 naming line and encoding."""
    path = tmp_path / "a.csv"
    path.write_bytes("id,email\n1,jos\xe9@x.io\n".encode("latin-1"))
    code, err = validate(str(path), "-m", str(id_mapping), "--rejects", str(tmp_path / "r.csv"))
    assert code == 2
    assert "line 2, byte" in err and "encoding: latin1" in err


# -- the Parquet footer ---------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["polars", "pyarrow"])
@pytest.mark.parametrize("group_rows", [1_000, 7_777, 50_000])
def test_row_groups_are_read_from_the_footer_as_arrow_reads_them(
    tmp_path: Path, writer: str, group_rows: int
) -> None:
    """The reader's windows follow the file's row groups: their sizes, read from the footer
    alone, are what pyarrow reads, for files written by polars and by pyarrow (nested columns,
    nulls, statistics and key-value metadata included)."""
    import pyarrow.parquet as pq

    from importer.sources.footer import row_group_rows

    n = 50_000
    frame = pl.DataFrame(
        {
            "id": [f"u{i}" for i in range(n)],
            "n": list(range(n)),
            "tags": [["a", "b"]] * n,
            "ok": [True, None] * (n // 2),
        }
    )
    path = tmp_path / "t.parquet"
    if writer == "polars":
        frame.write_parquet(path, row_group_size=group_rows, statistics=True)
    else:
        table = frame.to_arrow().replace_schema_metadata({"origin": "warehouse"})
        pq.write_table(table, path, row_group_size=group_rows)
    metadata = pq.ParquetFile(path).metadata
    expected = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert row_group_rows(path) == expected
    assert sum(expected) == n


def test_a_file_without_a_parquet_footer_is_left_to_polars_to_word(tmp_path: Path) -> None:
    """A truncated or foreign file raises ValueError (the caller then lets polars read it and
    name what is wrong), never an IndexError or a hang."""
    from importer.sources.footer import row_group_rows

    good = tmp_path / "good.parquet"
    pl.DataFrame({"id": ["u1", "u2"]}).write_parquet(good)
    data = good.read_bytes()
    cases = {
        "short": b"PAR1",
        "foreign": b"id,email\nu1,a@x.io\n" * 10,
        "cut": data[:4] + data[len(data) // 2 :],  # footer length points before the start
        "garbled": data[:-8] + (5).to_bytes(4, "little") + b"PAR1",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(content)
        with pytest.raises(ValueError):
            row_group_rows(path)


# -- CSV windows ----------------------------------------------------------------------------------

_FIELDS = st.sampled_from(["a", "", "x y", '"q,1"', '"two\nlines"', '"say ""hi"""', "é", "1.5"])
_RECORD = st.lists(_FIELDS, min_size=1, max_size=4).map(",".join)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(_RECORD | st.just(""), min_size=0, max_size=60),
    preamble=st.sampled_from(["", "\ufeff", "\n\n", "\ufeff\r\n"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    last_newline=st.booleans(),
    mark=st.integers(1, 7),
    batch_rows=st.integers(1, 20),
)
def test_a_csv_read_in_windows_gives_every_record_as_polars_reads_the_whole_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    records: list[str],
    preamble: str,
    newline: str,
    last_newline: bool,
    mark: int,
    batch_rows: int,
) -> None:
    """Windows cut where the record scanner saw records end (quoted newlines, blank lines,
    ragged records, a BOM and CRLF included) read back every record, numbered and valued as
    polars reads the file whole, in batches of at most the batch size."""
    from importer.sources import records as record_scanner
    from importer.sources import windows

    monkeypatch.setattr(record_scanner, "MARK_RECORDS", mark)
    monkeypatch.setattr(windows, "MARK_RECORDS", mark)
    text = preamble + "h1,h2,h3" + newline + newline.join(records)
    if records and last_newline:
        text += newline
    path = tmp_path / "w.csv"
    path.write_bytes(text.encode())
    whole = (
        pl.scan_csv(path, infer_schema=False, truncate_ragged_lines=True)
        .with_row_index(ROW, offset=1)
        .collect()
    )
    source = Source(name=str(path), format="csv")
    batches = list(source.batches(["h1", "h2", "h3"], batch_rows))
    assert all(batch.height <= batch_rows for batch in batches)
    got = pl.concat(batches) if batches else whole.clear()
    assert got.select(whole.columns).rows() == whole.rows()
