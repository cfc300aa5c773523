"""Issue 6's bad-input catalogue, and property tests of validation and chunking.

Every hostile file is generated here, then fed to the real command line (`validate`, `run
--dry-run`, or `run` against the emulator). Each must end in its documented behaviour: a reject
with a reason in the rejects file, or a clear error (exit 2) naming the file and, where there is
one, the row or line. Never a traceback, never a row that silently disappears: for every input,
rows read = rows valid + rows rejected, and the rejects file holds exactly the rejected rows.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e_helpers import WORKSPACE, cli, emulator, one_json
from helpers import check_item_shape
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from importer.chunker import Chunker, ChunkSettings
from importer.mapping import Mapping
from importer.sources import ROW
from importer.transform import Transformer

CATALOGUE: list[str] = []  # every bad input tried, for the note's figures
csv.field_size_limit(1 << 30)  # the rejects file quotes a 10 MB cell whole

MAPPING = """\
distinct_id: id
properties:
  - column: name
    op: set
  - column: n
    op: add
    type: integer
"""


@pytest.fixture(autouse=True)
def _work_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default files (rejects, ledger) land in the test's directory, never in the repository."""
    monkeypatch.chdir(tmp_path)


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _mapping(tmp_path: Path, text: str = MAPPING) -> Path:
    return _write(tmp_path / "mapping.yaml", text)


def _validate(
    tmp_path: Path, source: Path | str, mapping: Path | None = None, *extra: str
) -> tuple[int, dict[str, Any], list[dict[str, str]], str]:
    """Run `validate --json`; return exit code, summary, rejected rows and stderr."""
    CATALOGUE.append(Path(str(source)).name)
    rejects = tmp_path / "rejects.csv"
    result = cli(
        [
            "validate",
            str(source),
            "-m",
            str(mapping or _mapping(tmp_path)),
            "--rejects",
            str(rejects),
            "--json",
            *extra,
        ]
    )
    assert "Traceback" not in result.stderr, result.stderr
    summary = one_json(result.stdout)
    assert summary["exit_code"] == result.exit_code
    rows: list[dict[str, str]] = []
    if rejects.exists():
        with rejects.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    if result.exit_code in (0, 1):
        # nothing silently dropped: every row read is valid or in the rejects file
        assert summary["rows_read"] == summary["rows_valid"] + summary["rows_rejected"], summary
        assert len(rows) == summary["rows_rejected"]
        assert (result.exit_code == 1) == (summary["rows_rejected"] > 0)
    return result.exit_code, summary, rows, result.stderr


def _error(summary: dict[str, Any]) -> str:
    assert summary["error"], summary
    return str(summary["error"])


# --- files that cannot be read -------------------------------------------------------------------


def test_empty_file_is_exit_2_naming_it(tmp_path: Path) -> None:
    """A 0-byte file is a clear error naming the file (exit 2), not an empty success."""
    code, summary, _, _ = _validate(tmp_path, _write(tmp_path / "empty.csv", b""))
    assert code == 2
    assert "empty.csv" in _error(summary) and "empty" in _error(summary)


def test_header_only_is_exit_2_unless_allow_empty(tmp_path: Path) -> None:
    """A header without rows is exit 2 naming the file; --allow-empty makes it exit 0."""
    source = _write(tmp_path / "header.csv", "id,name,n\n")
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 2 and "header.csv" in _error(summary) and "no data rows" in _error(summary)
    code, summary, _, _ = _validate(tmp_path, source, None, "--allow-empty")
    assert code == 0 and summary["rows_read"] == 0


def test_row_with_too_few_fields_is_not_silently_read_as_nulls(tmp_path: Path) -> None:
    """A record missing a field is rejected, naming its field count and the header's, and the
    rest of the file is read."""
    source = _write(tmp_path / "short.csv", "id,name,n\nu1,a,1\nu2,b\nu3,c,3\n")
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_valid"] == 2
    assert [(r["row"], r["column"]) for r in rejected] == [("2", "n")]
    assert rejected[0]["reason"] == "the record has 2 field(s), the header has 3"


def test_row_with_too_many_fields_is_rejected_and_the_rest_read(tmp_path: Path) -> None:
    """A record with an extra field is rejected alone; the file is not stopped."""
    source = _write(tmp_path / "long.csv", 'id,name,n\nu1,a,1\nu2,b,2,"x,y"\nu3,c,3\n')
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_valid"] == 2
    assert [(r["row"], r["column"]) for r in rejected] == [("2", "")]
    assert rejected[0]["reason"] == "the record has 4 field(s), the header has 3"


def test_unbalanced_quote_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    """A quote that never closes is a clear error naming the file, never a traceback."""
    source = _write(tmp_path / "quote.csv", 'id,name,n\nu1,a,1\nu2,"abc,2\nu3,c,3\n')
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 2 and "quote.csv" in _error(summary)


def test_unbalanced_quote_error_names_the_row_where_the_quote_opens(tmp_path: Path) -> None:
    """The error for an unclosed quote says where it opens, so a person can find it."""
    source = _write(tmp_path / "quote.csv", 'id,name,n\nu1,a,1\nu2,"abc,2\nu3,c,3\n')
    _, summary, _, _ = _validate(tmp_path, source)
    assert "row 2" in _error(summary) or "line 3" in _error(summary)


def test_stray_quote_inside_a_cell_is_a_clear_error(tmp_path: Path) -> None:
    """A bare quote inside an unquoted cell is exit 2 naming the file, not a traceback."""
    source = _write(tmp_path / "stray.csv", 'id,name,n\nu1,a"b,1\nu2,c,2\n')
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 2 and "stray.csv" in _error(summary)


def test_duplicate_column_names_are_exit_2_naming_them(tmp_path: Path) -> None:
    """A header with a name twice is exit 2 naming the file and the duplicated column."""
    source = _write(tmp_path / "dup.csv", "id,name,name,n\nu1,a,b,1\n")
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 2 and "dup.csv" in _error(summary) and "'name'" in _error(summary)


def test_truncated_parquet_is_exit_2_naming_it(tmp_path: Path) -> None:
    """A Parquet file cut short (an export still being written) is exit 2 with a hint."""
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({"id": ["p1", "p2"], "name": ["a", "b"], "n": [1, 2]}).write_parquet(whole)
    data = whole.read_bytes()
    cut = _write(tmp_path / "cut.parquet", data[: len(data) // 2])
    code, summary, _, _ = _validate(tmp_path, cut)
    assert code == 2 and "cut.parquet" in _error(summary) and "truncated" in _error(summary)


def test_latin1_bytes_name_line_and_byte_and_encoding_latin1_reads_them(tmp_path: Path) -> None:
    """Latin-1 bytes in a UTF-8 read name line and byte; `encoding: latin1` imports them."""
    source = _write(tmp_path / "latin.csv", b"id,name,n\nu1,ok,1\nu2,caf\xe9,2\n")
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 2
    assert "latin.csv" in _error(summary) and "line 3" in _error(summary)
    assert "latin1" in _error(summary)  # the hint says what to do
    latin = _mapping(tmp_path, MAPPING + "source:\n  encoding: latin1\n")
    with emulator() as (server, _):
        result = cli(
            ["run", str(source), "-m", str(latin), "--ledger", str(tmp_path / "l.db"), "--json"],
            base_url=server.url,
        )
        assert result.exit_code == 0, result.stderr
        assert server.profile("u2", workspace=WORKSPACE) == {"name": "café", "n": 2}


# --- files that read, with rows to accept or reject ----------------------------------------------


def test_quoted_newlines_do_not_shift_row_numbers(tmp_path: Path) -> None:
    """A quoted newline stays in its cell; the reject after it names the right record."""
    source = _write(tmp_path / "qnl.csv", 'id,name,n\nu1,"two\nlines",1\nu2,b,many\nu3,c,3\n')
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_read"] == 3
    assert [r["row"] for r in rejected] == ["2"]
    assert json.loads(rejected[0]["values"])["n"] == "many"


def test_utf8_bom_is_not_part_of_the_id_column_name(tmp_path: Path) -> None:
    """A UTF-8 BOM before the header does not hide the id column; every row is valid."""
    source = _write(tmp_path / "bom.csv", b"\xef\xbb\xbfid,name,n\nu1,a,1\nu2,b,2\n")
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 0 and summary["rows_valid"] == 2


def test_nul_bytes_in_a_cell_are_kept_and_sent_as_json_escapes(tmp_path: Path) -> None:
    """A NUL byte inside a cell neither breaks the read nor loses the row: it is sent as \\u0000."""
    source = _write(tmp_path / "nul.csv", b"id,name,n\nu0,z,1\nu1,a\x00b,1\nu2,b,2\n")
    code, summary, _, _ = _validate(tmp_path, source)
    assert code == 0 and summary["rows_valid"] == 3
    with emulator() as (server, _):
        result = cli(
            ["run", str(source), "-m", str(_mapping(tmp_path)), "--ledger", str(tmp_path / "l.db")],
            base_url=server.url,
        )
        assert result.exit_code == 0, result.stderr
        assert server.profile("u1", workspace=WORKSPACE) == {"name": "a\x00b", "n": 1}


def test_a_10_mb_cell_is_rejected_with_its_length_and_the_rest_is_valid(tmp_path: Path) -> None:
    """A 10 MB cell is one reject saying how long it is; the next row is still valid."""
    source = _write(tmp_path / "big.csv", "id,name,n\nu1," + "y" * 10_000_000 + ",1\nu2,ok,2\n")
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_valid"] == 1
    assert rejected[0]["row"] == "1" and rejected[0]["column"] == "name"
    assert "10000000 characters" in rejected[0]["reason"]


def test_blank_line_is_a_record_rejected_for_its_missing_id(tmp_path: Path) -> None:
    """A blank line in the middle is counted and rejected (a record of one field), not silently
    skipped; with a one-column header it is a record without an id."""
    source = _write(tmp_path / "blank.csv", "id,name,n\nu1,a,1\n\nu2,b,many\n")
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_read"] == 3
    assert [(r["row"], r["column"]) for r in rejected] == [("2", "name"), ("3", "n")]
    assert rejected[0]["reason"] == "the record has 1 field(s), the header has 3"
    narrow = _write(tmp_path / "narrow.csv", "id\nu1\n\nu2\n")
    one_column = _write(
        tmp_path / "one.yaml",
        "distinct_id: id\nproperties:\n  - {column: id, property: uid, op: set}\n",
    )
    _, _, rejected, _ = _validate(tmp_path, narrow, one_column)
    assert [(r["row"], r["column"]) for r in rejected] == [("2", "id")]


@pytest.mark.parametrize(
    ("cell", "ok"),
    [("1,234", False), ("1 234", False), ("1_000", False), ("1.5e3", True), ("12.0", True)],
)
def test_numbers_with_thousands_separators_are_rejected_with_a_reason(
    tmp_path: Path, cell: str, ok: bool
) -> None:
    """'1,234' and friends are rejected saying why; '1.5e3' and '12.0' are integers."""
    source = tmp_path / "numbers.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["id", "name", "n"], ["u1", "a", cell]])
    code, _, rejected, _ = _validate(tmp_path, source)
    assert code == (0 if ok else 1)
    if not ok:
        assert rejected[0]["column"] == "n" and cell in rejected[0]["reason"]
    if cell == "1,234":
        assert "thousands separators" in rejected[0]["reason"]


DATE_MAPPING = """\
distinct_id: id
properties:
  - column: d
    op: set
    type: date
  - column: t
    op: set
    type: datetime
  - column: b
    op: set
    type: boolean
"""


@pytest.mark.parametrize(
    ("d", "t", "sent"),
    [
        ("2024-03-01", "2024-03-01T10:00:00Z", ("2024-03-01", "2024-03-01T10:00:00Z")),
        ("2024-03-01", "2024-03-01T10:00:00+05:30", ("2024-03-01", "2024-03-01T04:30:00Z")),
        ("2024-03-01", "2024-03-01 10:00:00", ("2024-03-01", "2024-03-01T10:00:00Z")),
        ("2024-03-01", "2024-03-01T10:00:00.120Z", ("2024-03-01", "2024-03-01T10:00:00.120Z")),
        ("01/03/2024", "2024-03-01T10:00", None),  # day-first needs format:
        ("March 1, 2024", "2024-03-01T10:00:00Z", None),
        ("2024-03-01", "1709287200", None),  # epoch seconds are not ISO 8601
    ],
)
def test_dates_in_common_formats_are_converted_or_rejected_with_a_reason(
    tmp_path: Path, d: str, t: str, sent: tuple[str, str] | None
) -> None:
    """ISO dates and datetimes are sent in UTC; other formats are rejects naming the format."""
    source = tmp_path / "dates.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["id", "d", "t", "b"], ["u1", d, t, "yes"]])
    mapping = _mapping(tmp_path, DATE_MAPPING)
    code, _, rejected, _ = _validate(tmp_path, source, mapping)
    if sent is None:
        assert code == 1 and "ISO 8601" in rejected[0]["reason"]
        return
    assert code == 0
    preview = cli(["preview", str(source), "-m", str(mapping)])
    body = json.loads(preview.stdout)
    assert body["batch"][0]["action"]["$set"] == {"d": sent[0], "t": sent[1], "b": True}


def test_day_first_dates_are_read_with_a_format(tmp_path: Path) -> None:
    """With `format: "%d/%m/%Y"`, 01/03/2024 is the first of March."""
    source = _write(tmp_path / "eu.csv", "id,d\nu1,01/03/2024\nu2,31/12/2024\nu3,2024-03-01\n")
    mapping = _mapping(
        tmp_path,
        "distinct_id: id\nproperties:\n  - column: d\n    op: set\n"
        "    type: date\n    format: '%d/%m/%Y'\n",
    )
    code, _, rejected, _ = _validate(tmp_path, source, mapping)
    assert code == 1 and [r["row"] for r in rejected] == ["3"]
    bodies = cli(["preview", str(source), "-m", str(mapping), "-n", "5"]).stdout
    assert '"2024-03-01"' in bodies and '"2024-12-31"' in bodies


@pytest.mark.parametrize(
    ("cells", "values"),
    [
        (["Y", "N", "y", "n"], [True, False, True, False]),
        (["yes", "no", "YES", "No"], [True, False, True, False]),
        (["1", "0", "true", "F"], [True, False, True, False]),
    ],
)
def test_booleans_as_y_n_yes_no_1_0_are_understood(
    tmp_path: Path, cells: list[str], values: list[bool]
) -> None:
    """Y/N, yes/no and 1/0 in any case are booleans; 'maybe' is a reject."""
    source = tmp_path / "bools.csv"
    rows = [["id", "d", "t", "b"]] + [[f"u{i}", "", "", c] for i, c in enumerate(cells)]
    rows.append(["u9", "", "", "maybe"])
    with source.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    mapping = _mapping(tmp_path, DATE_MAPPING)
    code, _, rejected, _ = _validate(tmp_path, source, mapping)
    assert code == 1 and [r["row"] for r in rejected] == [str(len(cells) + 1)]
    assert "not a boolean" in rejected[0]["reason"]
    with emulator() as (server, _):
        result = cli(
            [
                "run",
                str(source),
                "-m",
                str(mapping),
                "--ledger",
                str(tmp_path / "l.db"),
                "--max-reject-rate",
                "0.5",
            ],
            base_url=server.url,
        )
        assert result.exit_code == 1, result.stderr
        got = [server.profile(f"u{i}", workspace=WORKSPACE) for i in range(len(cells))]
        assert got == [{"b": v} for v in values]


# --- ids -----------------------------------------------------------------------------------------


def test_float_ids_in_parquet_are_whole_numbers_or_rejects(tmp_path: Path) -> None:
    """Parquet float ids: 12.0 is "12", -0.0 is "0"; 3.5, NaN and null are rejects with a reason."""
    source = tmp_path / "ids.parquet"
    pl.DataFrame(
        {
            "id": [12.0, -0.0, 3.5, None, float("nan"), 42.0],
            "name": ["a", "b", "c", "d", "e", "f"],
            "n": [1, 2, 3, 4, 5, 6],
        }
    ).write_parquet(source)
    code, summary, rejected, _ = _validate(tmp_path, source)
    assert code == 1 and summary["rows_valid"] == 3
    assert [r["row"] for r in rejected] == ["3", "4", "5"]
    assert all(r["column"] == "id" for r in rejected)
    bodies = cli(["preview", str(source), "-m", str(_mapping(tmp_path)), "-n", "10"]).stdout
    ids = {line.split('"')[3] for line in bodies.splitlines() if '"distinct_id"' in line}
    assert ids == {"12", "0", "42"}


def test_a_huge_float_id_is_rejected_with_a_true_reason(tmp_path: Path) -> None:
    """1e+21 in a float id column is rejected saying it is too large, not that it is fractional."""
    source = tmp_path / "huge.parquet"
    pl.DataFrame({"id": [1e21], "name": ["a"], "n": [1]}).write_parquet(source)
    _, _, rejected, _ = _validate(tmp_path, source)
    assert "not a whole number" not in rejected[0]["reason"]


def test_float_looking_ids_in_csv_stay_the_text_written(tmp_path: Path) -> None:
    """CSV cells are text: ids '1e+21', '12.0', '-0' and '00123' are sent exactly as written."""
    source = _write(tmp_path / "ids.csv", "id,name,n\n1e+21,a,1\n12.0,b,2\n-0,c,3\n00123,d,4\n")
    with emulator() as (server, _):
        result = cli(
            ["run", str(source), "-m", str(_mapping(tmp_path)), "--ledger", str(tmp_path / "l.db")],
            base_url=server.url,
        )
        assert result.exit_code == 0, result.stderr
        for distinct_id in ("1e+21", "12.0", "-0", "00123"):
            assert server.profile(distinct_id, workspace=WORKSPACE) is not None, distinct_id


def test_very_long_ids_are_sent_whole_or_rejected_when_over_the_batch_bytes(
    tmp_path: Path,
) -> None:
    """A 5,000-character id is sent whole; one whose item exceeds --max-batch-bytes is a reject."""
    long_id, longer_id = "L" * 5_000, "M" * 20_000
    source = _write(tmp_path / "long.csv", f"id,name,n\n{long_id},a,1\n{longer_id},b,2\n")
    mapping = _mapping(tmp_path)
    with emulator() as (server, _):
        result = cli(
            [
                "run",
                str(source),
                "-m",
                str(mapping),
                "--ledger",
                str(tmp_path / "l.db"),
                "--rejects",
                str(tmp_path / "r.csv"),
                "--max-batch-bytes",
                "10000",
                "--max-reject-rate",
                "0.9",
                "--json",
            ],
            base_url=server.url,
        )
        summary = one_json(result.stdout)
        assert result.exit_code == 1 and summary["rows_rejected"] == 1
        assert server.profile(long_id, workspace=WORKSPACE) == {"name": "a", "n": 1}
        assert server.profile(longer_id, workspace=WORKSPACE) is None
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as handle:
        (reject,) = list(csv.DictReader(handle))
    assert reject["row"] == "2" and "--max-batch-bytes" in reject["reason"]


# --- several files -------------------------------------------------------------------------------


def test_directory_mixing_csv_and_parquet_reads_both_in_name_order(tmp_path: Path) -> None:
    """A directory of CSV and Parquet parts is one import, in name order; markers are ignored."""
    folder = tmp_path / "export"
    folder.mkdir()
    pl.DataFrame({"id": ["p1"], "name": ["from parquet"], "n": [1]}).write_parquet(
        folder / "a.parquet"
    )
    _write(folder / "b.csv", "id,name,n\np1,from csv,2\nc1,x,3\n")
    _write(folder / "_SUCCESS", "")
    _write(folder / ".a.parquet.crc", "x")
    code, summary, _, _ = _validate(tmp_path, folder)
    assert code == 0 and summary["rows_read"] == 3
    assert [Path(s["source"]).name for s in summary["sources"]] == ["a.parquet", "b.csv"]
    with emulator() as (server, _):
        result = cli(
            ["run", str(folder), "-m", str(_mapping(tmp_path)), "--ledger", str(tmp_path / "l.db")],
            base_url=server.url,
        )
        assert result.exit_code == 0, result.stderr
        # the later file's $set wins, and both $add land
        assert server.profile("p1", workspace=WORKSPACE) == {"name": "from csv", "n": 3}


def test_a_column_whose_type_changes_between_parquet_parts_is_checked_per_part(
    tmp_path: Path,
) -> None:
    """Part 0 has integers, part 1 text: each part converts its own cells; bad ones are rejects."""
    folder = tmp_path / "parts"
    folder.mkdir()
    pl.DataFrame({"id": ["p1", "p2"], "name": ["a", "b"], "n": [1, 2]}).write_parquet(
        folder / "part-0.parquet"
    )
    pl.DataFrame({"id": ["p3", "p4"], "name": ["c", "d"], "n": ["3", "x"]}).write_parquet(
        folder / "part-1.parquet"
    )
    code, summary, rejected, _ = _validate(tmp_path, folder)
    assert code == 1 and summary["rows_valid"] == 3
    assert [(Path(r["source"]).name, r["row"], r["column"]) for r in rejected] == [
        ("part-1.parquet", "2", "n")
    ]


# --- mapping files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "unknown key",
            "distinct_id: id\nproperties:\n  - column: name\n    op: set\n    tpye: string\n",
            ["mapping.yaml:5", "tpye", "unknown key"],
        ),
        (
            "wrong type",
            "distinct_id: id\nproperties:\n  - column: name\n    op: set\nsettings:\n"
            "  batch_size: lots\n",
            ["mapping.yaml:6", "batch_size", "lots"],
        ),
        (
            "wrong shape",
            "distinct_id: [id]\nproperties: {column: name}\n",
            ["distinct_id", "properties"],
        ),
        (
            "duplicated property",
            "distinct_id: id\nproperties:\n  - column: name\n    op: set\n  - column: n\n"
            "    property: name\n    op: set\n",
            ["'name'", "again"],
        ),
        (
            "duplicated key",
            "distinct_id: id\nproperties:\n  - column: name\n    op: set\n    op: add\n",
            ["mapping.yaml:5", "'op' appears twice"],
        ),
        (
            "add of strings",
            "distinct_id: id\nproperties:\n  - column: name\n    op: add\n    type: string\n",
            ["op add", "integer or number"],
        ),
        (
            "tab indentation",
            "distinct_id: id\nproperties:\n\t- column: name\n\t  op: set\n",
            ["mapping.yaml:3", "tab"],
        ),
        ("empty mapping", "", ["mapping.yaml"]),
        (
            "unknown operator",
            "distinct_id: id\nproperties:\n  - column: name\n    op: increment\n",
            ["mapping.yaml:4", "increment"],
        ),
        (
            "unknown column",
            "distinct_id: id\nproperties:\n  - column: nope\n    op: set\n",
            ["'nope'", "its columns are"],
        ),
    ],
)
def test_bad_mapping_files_are_exit_2_naming_what_and_where(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    """Each broken mapping is exit 2 with a message naming the key (and line) at fault."""
    source = _write(tmp_path / "data.csv", "id,name,n\nu1,a,1\n")
    CATALOGUE.append(f"mapping: {name}")
    code, summary, _, stderr = _validate(tmp_path, source, _mapping(tmp_path, text))
    assert code == 2, summary
    message = _error(summary)
    for part in expected:
        assert part.lower() in message.lower(), (part, message)
    assert "Traceback" not in stderr


def test_add_on_a_text_column_rejects_the_rows_that_are_not_numbers(tmp_path: Path) -> None:
    """`op: add` on a CSV column of words rejects each such row, saying it is not a number."""
    source = _write(tmp_path / "words.csv", "id,name,n\nu1,alice,1\nu2,42,2\n")
    mapping = _mapping(tmp_path, "distinct_id: id\nproperties:\n  - column: name\n    op: add\n")
    code, _, rejected, _ = _validate(tmp_path, source, mapping)
    assert code == 1 and [r["row"] for r in rejected] == ["1"]
    assert "not a number" in rejected[0]["reason"]


def test_yaml_anchors_and_aliases_work_as_yaml_says(tmp_path: Path) -> None:
    """Anchors and aliases are plain YAML: the mapping they spell out is used."""
    text = (
        "distinct_id: &id_column id\n"
        "properties:\n"
        "  - {column: name, op: &op set}\n"
        "  - {column: n, op: add}\n"
        "  - {column: *id_column, property: id_copy, op: *op}\n"
    )
    source = _write(tmp_path / "data.csv", "id,name,n\nu1,a,1\n")
    mapping = _mapping(tmp_path, text)
    code, _, _, _ = _validate(tmp_path, source, mapping)
    assert code == 0
    body = json.loads(cli(["preview", str(source), "-m", str(mapping)]).stdout)
    assert body["batch"][0]["action"] == {
        "$set": {"name": "a", "id_copy": "u1"},
        "$add": {"n": 1},
    }


def test_yaml_merge_keys_may_be_overridden_as_yaml_says(tmp_path: Path) -> None:
    """`<<: *base` followed by a key of its own overrides the merged one, as in any YAML."""
    text = (
        "distinct_id: id\n"
        "properties:\n"
        "  - &base {column: name, op: set}\n"
        "  - <<: *base\n"
        "    column: n\n"
        "    property: n_copy\n"
    )
    source = _write(tmp_path / "data.csv", "id,name,n\nu1,a,1\n")
    code, summary, _, _ = _validate(tmp_path, source, _mapping(tmp_path, text))
    assert code == 0, summary["error"]


def test_yaml_alias_repeating_a_property_is_the_duplicate_it_spells(tmp_path: Path) -> None:
    """An alias that repeats a whole property is refused as a duplicated property (exit 2)."""
    text = "distinct_id: id\nproperties:\n  - &p {column: name, op: set}\n  - *p\n"
    source = _write(tmp_path / "data.csv", "id,name,n\nu1,a,1\n")
    code, summary, _, _ = _validate(tmp_path, source, _mapping(tmp_path, text))
    assert code == 2 and "again" in _error(summary)


def test_catalogue_size_is_reported() -> None:
    """(Bookkeeping) prints how many bad inputs this module fed through the CLI."""
    print(f"\n  bad inputs tried through the CLI: {len(CATALOGUE)}")


# --- property tests: random mappings and frames through validation and chunking ------------------

_COLUMNS = ["c0", "c1", "c2", "c3"]
_cell = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "1",
            "-3",
            "12.0",
            "1e3",
            "1,234",
            "NaN",
            "inf",
            "yes",
            "N",
            "true",
            "2024-03-01",
            "2024-03-01T10:00:00+05:30",
            "a;b; ;c",
            "x,y",
            "name",
            "é" * 300,
        ]
    ),
    st.text(max_size=8),
)


@st.composite
def _specs(draw: Any) -> dict[str, Any]:
    op = draw(st.sampled_from(["set", "once", "add", "append", "remove", "unset"]))
    spec: dict[str, Any] = {"column": draw(st.sampled_from(_COLUMNS)), "op": op}
    if op == "add":
        spec["type"] = draw(st.sampled_from(["integer", "number"]))
    elif op in ("set", "once"):
        vtype = draw(
            st.sampled_from(["string", "integer", "number", "boolean", "date", "datetime", "list"])
        )
        spec["type"] = vtype
        if vtype == "list":
            spec["split"] = ";"
    elif op in ("append", "remove"):
        spec["type"] = draw(st.sampled_from(["string", "integer"]))
        if draw(st.booleans()):
            spec["split"] = ";"
    elif draw(st.booleans()):
        spec["split"] = ","
    if op != "unset":
        spec["on_null"] = draw(st.sampled_from(["skip", "unset", "reject"]))
    if spec.get("type") == "string":
        spec["on_too_long"] = draw(st.sampled_from(["reject", "truncate"]))
    spec["property"] = draw(st.sampled_from(["p0", "p1", "p2", "p3", "p4"]))
    return spec


@st.composite
def _mappings(draw: Any) -> Mapping:
    specs = draw(st.lists(_specs(), min_size=1, max_size=5))
    seen: set[tuple[str, str]] = set()
    unique = []
    for spec in specs:
        key = (spec["op"], spec["property"])
        if key not in seen or spec["op"] == "unset":
            seen.add(key)
            unique.append(spec)
    return Mapping.model_validate({"distinct_id": "id", "properties": unique})


_frames = st.integers(1, 30).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "id": st.lists(
                st.one_of(st.none(), st.sampled_from(["", " ", "a", " a ", "b", "c", "d", "0"])),
                min_size=n,
                max_size=n,
            ),
            **{c: st.lists(_cell, min_size=n, max_size=n) for c in _COLUMNS},
        }
    )
)


def _chunks_of(
    transformer: Transformer,
    frame: pl.DataFrame,
    cut: int,
    settings_: ChunkSettings,
) -> tuple[list[Any], pl.DataFrame, pl.DataFrame]:
    """Validate and chunk a frame read in two batches split at ``cut``."""
    chunker = Chunker(import_key="random-import", settings=settings_, sources=["random.csv"])
    chunks, items, rejects = [], [], []
    for batch in (frame.slice(0, cut), frame.slice(cut)):
        result = transformer.apply(batch)
        items.append(result.items)
        rejects.append(result.rejects)
        chunks += list(chunker.add(result.items, 0))
    chunks += list(chunker.finish())
    return chunks, pl.concat(items), pl.concat(rejects)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mapping=_mappings(),
    data=_frames,
    batch_size=st.integers(1, 6),
    max_bytes=st.integers(300, 3000),
    cut_at=st.floats(0, 1),
)
def test_random_mappings_and_frames_keep_every_row_and_profile_order(
    mapping: Mapping, data: dict[str, list[Any]], batch_size: int, max_bytes: int, cut_at: float
) -> None:
    """Any mapping, any cells: rows valid or rejected; chunks bounded, ordered, batching-proof."""
    frame = pl.DataFrame(data, schema={"id": pl.String, **{c: pl.String for c in _COLUMNS}})
    frame = frame.with_row_index(ROW, offset=1)
    try:
        transformer = Transformer(mapping, dict(frame.drop(ROW).schema), max_batch_bytes=max_bytes)
    except Exception as exc:  # only the importer's own, explained refusals are allowed
        from importer.errors import MappingError

        assert isinstance(exc, MappingError), exc
        assume(False)
        return
    chunk_settings = ChunkSettings(batch_size=batch_size, max_batch_bytes=max_bytes)
    cut = math.floor(cut_at * frame.height)
    chunks, items, rejects = _chunks_of(transformer, frame, cut, chunk_settings)
    whole_chunks, _, _ = _chunks_of(transformer, frame, frame.height, chunk_settings)

    # every row is valid or rejected, never both, never neither
    rejected = set(rejects[ROW].to_list())
    assert len(rejected) == rejects.height
    assert set(items[ROW].to_list()).isdisjoint(rejected)
    assert all(reason for reason in rejects["reason"].to_list())
    assert set(rejects["column"].to_list()) <= {"id", *_COLUMNS}
    for values in rejects["values"].to_list():
        assert set(json.loads(values)) == {"id", *_COLUMNS}
    # every item is a well-formed Fyno item from a valid row
    for text in items["item"].to_list():
        check_item_shape(json.loads(text))
    # chunks: limits, ids, completeness, per-profile order
    # the same chunks (ids and bodies, in the same order) however the rows were batched
    assert [(c.chunk_id, c.body) for c in chunks] == [(c.chunk_id, c.body) for c in whole_chunks]
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    sent: dict[str, list[int]] = {}
    for chunk in chunks:
        body = json.loads(chunk.body)
        assert 1 <= len(body["batch"]) <= batch_size
        assert len(chunk.body) <= max_bytes
        assert [i["distinct_id"] for i in body["batch"]] == chunk.distinct_ids()
        for distinct_id, row in zip(chunk.distinct_ids(), chunk.rows(), strict=True):
            sent.setdefault(distinct_id, []).append(row)
    assert sum(len(v) for v in sent.values()) == items.height
    expected: dict[str, list[int]] = {}
    for distinct_id, row in items.select("distinct_id", ROW).iter_rows():
        expected.setdefault(distinct_id, []).append(row)
    assert sent == expected  # the same items, each profile's in file order


def _random_csv(rng: random.Random, rows: int) -> str:
    """A CSV of awkward but well-formed cells (quotes, delimiters, unicode, newlines)."""
    pool = ["", "a", "é", '"q"', "x,y", "l1\nl2", " pad ", "1", "2.5", "yes", "2024-03-01", "🙂"]
    lines = [["id", *_COLUMNS]]
    for _ in range(rows):
        lines.append([rng.choice(["u1", "u2", " u3 ", ""]), *(rng.choice(pool) for _ in _COLUMNS)])
    from io import StringIO

    out = StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(6))
def test_random_csv_files_through_validate_lose_no_row(tmp_path: Path, seed: int) -> None:
    """Random well-formed CSVs through validate: read = valid + rejected, exact row numbers."""
    rng = random.Random(seed)
    source = _write(tmp_path / f"random-{seed}.csv", _random_csv(rng, 60))
    mapping = _mapping(
        tmp_path,
        "distinct_id: id\nproperties:\n"
        "  - {column: c0, op: set}\n"
        "  - {column: c1, op: add, type: number}\n"
        "  - {column: c2, op: append, split: ','}\n"
        "  - {column: c3, op: set, type: boolean, on_null: reject}\n",
    )
    code, summary, rejected, _ = _validate(tmp_path, source, mapping)
    assert code in (0, 1) and summary["rows_read"] == 60
    with source.open(encoding="utf-8", newline="") as handle:
        records = list(csv.DictReader(handle))
    for reject in rejected:
        record = records[int(reject["row"]) - 1]
        original = json.loads(reject["values"])
        assert original["id"] == (record["id"] or None)  # the right record, by number
        assert reject["reason"]


def test_a_short_row_never_unsets_what_the_file_did_not_mention(tmp_path: Path) -> None:
    """End to end: with `on_null: unset`, a record missing its last field is rejected and sends
    no $unset; the whole records around it land."""
    mapping = _write(
        tmp_path / "m.yaml",
        "distinct_id: id\nproperties:\n  - {column: name, op: set}\n"
        "  - {column: plan, op: set, on_null: unset}\n",
    )
    source = _write(tmp_path / "u.csv", "id,name,plan\nu1,Ada,pro\nu2,Bob\nu3,Cy,\n")
    with emulator() as (server, _):
        result = cli(
            [
                "run",
                str(source),
                "-m",
                str(mapping),
                "--json",
                "--max-reject-rate",
                "1",
                "--ledger",
                str(tmp_path / "l.db"),
                "--rejects",
                str(tmp_path / "r.csv"),
            ],
            base_url=server.url,
        )
        assert result.exit_code == 1, result.stderr
        assert server.profile("u2", workspace=WORKSPACE) is None  # nothing sent for it
        assert server.profile("u1", workspace=WORKSPACE) == {"name": "Ada", "plan": "pro"}
        assert server.profile("u3", workspace=WORKSPACE) == {"name": "Cy"}
        assert server.stats()["ops_applied"]["$unset"] == 1  # u3's empty plan, not u2's
