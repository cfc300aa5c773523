"""Tests of the value rules (fyno-api.md) and item building: mapping + rows → items and rejects."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import actions, check_item_shape, items, mapping_of, rejects, transform
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.errors import MappingError
from importer.sources import ROW, Source
from importer.transform import Transformer, TransformResult


def one_value(prop: dict[str, Any], cells: list[Any], **kwargs: Any) -> TransformResult:
    """Transform a single mapped column ``c`` with ids r1, r2, … ."""
    data: dict[str, list[Any]] = {"id": [f"r{i}" for i in range(1, len(cells) + 1)], "c": cells}
    return transform([{"column": "c", **prop}], data, **kwargs)


def sent(result: TransformResult, op: str = "$set", prop: str = "c") -> dict[str, Any]:
    """What each item sends for one property, by distinct_id."""
    return {
        item["distinct_id"]: item["action"][op][prop]
        for item in items(result)
        if prop in item["action"].get(op, {})
    }


def transform_file(
    path: Path, properties: list[dict[str, Any]], distinct_id: str = "id"
) -> TransformResult:
    """Read a real file the way the pipeline does and transform all its rows."""
    source = Source(name=str(path), format="parquet" if path.suffix == ".parquet" else "csv")
    columns = source.columns()
    schema = source.scan().collect_schema()
    transformer = Transformer(
        mapping_of(properties, distinct_id),
        {c: schema[c] for c in columns},
        max_batch_bytes=1_000_000,
    )
    batch = pl.concat(list(source.batches(columns, 1000)))
    return transformer.apply(batch)


# --- distinct_id ------------------------------------------------------------------------------


def test_distinct_id_is_trimmed() -> None:
    """Surrounding whitespace of the id is trimmed; inner spaces are kept."""
    result = transform(
        [{"column": "c", "op": "set"}], {"id": ["  u1 ", "\tu 2\t"], "c": ["a", "b"]}
    )
    assert [i["distinct_id"] for i in items(result)] == ["u1", "u 2"]


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_null_or_empty_id_rejects_the_row(blank: str | None) -> None:
    """A null, empty or blank id rejects the row, naming the id column."""
    result = transform([{"column": "c", "op": "set"}], {"id": ["u1", blank], "c": ["a", "b"]})
    assert [i["distinct_id"] for i in items(result)] == ["u1"]
    assert rejects(result)[2]["column"] == "id"
    assert rejects(result)[2]["reason"] == "column id: distinct_id is empty"
    assert result.rows_valid == 1


def test_integer_ids_have_no_decimal_point() -> None:
    """An integer id column is sent as "42", a string without a decimal point."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"id": [42, -7, None], "c": ["a", "b", "c"]},
        schema={"id": pl.Int64, "c": pl.String},
    )
    assert [i["distinct_id"] for i in items(result)] == ["42", "-7"]
    assert rejects(result)[3]["column"] == "id"


def test_whole_float_ids_lose_their_decimal_point() -> None:
    """A float id 12.0 is sent as "12"; 12.5, NaN and infinity reject the row."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"id": [12.0, 12.5, float("nan"), float("inf"), -3.0], "c": ["a", "b", "c", "d", "e"]},
        schema={"id": pl.Float64, "c": pl.String},
    )
    assert [i["distinct_id"] for i in items(result)] == ["12", "-3"]
    bad = rejects(result)
    assert sorted(bad) == [2, 3, 4]
    assert "not a usable distinct_id" in bad[2]["reason"]


def test_decimal_ids_keep_every_digit() -> None:
    """A Decimal(38,0) id (a warehouse NUMBER) is sent digit for digit, never via a float."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"id": [Decimal("1234567890123456789"), Decimal("42")], "c": ["a", "b"]},
        schema={"id": pl.Decimal(38, 0), "c": pl.String},
    )
    assert [i["distinct_id"] for i in items(result)] == ["1234567890123456789", "42"]


def test_decimal_ids_with_a_scale() -> None:
    """A Decimal(10,2) id 12.00 is "12"; 12.50 rejects the row."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"id": [Decimal("12.00"), Decimal("12.50"), Decimal("-3.00")], "c": ["a", "b", "c"]},
        schema={"id": pl.Decimal(10, 2), "c": pl.String},
    )
    assert [i["distinct_id"] for i in items(result)] == ["12", "-3"]
    assert "not a usable distinct_id" in rejects(result)[2]["reason"]


def test_a_missing_mapped_column_names_it_and_the_columns_there() -> None:
    """A mapping reading a column the source lacks is an error naming it and listing the others."""
    with pytest.raises(MappingError) as info:
        Transformer(
            mapping_of([{"column": "emial", "op": "set"}]),
            {"id": pl.String, "email": pl.String},
            max_batch_bytes=1_000_000,
        )
    assert "'emial'" in str(info.value) and "id, email" in str(info.value)


# --- strings ----------------------------------------------------------------------------------


def test_strings_up_to_255_characters_pass_and_longer_reject() -> None:
    """255 characters (code points, not bytes) pass; 256 reject the row with the count."""
    result = one_value({"op": "set"}, ["é" * 255, "é" * 256, "x"])
    assert sent(result) == {"r1": "é" * 255, "r3": "x"}
    reason = rejects(result)[2]["reason"]
    assert "256 characters" in reason and "255" in reason and "on_too_long: truncate" in reason


def test_on_too_long_truncate_cuts_to_255() -> None:
    """on_too_long: truncate sends the first 255 characters instead of rejecting."""
    result = one_value({"op": "set", "on_too_long": "truncate"}, ["ab" * 200])
    assert sent(result) == {"r1": ("ab" * 200)[:255]}
    assert result.rejects.height == 0


def test_strings_are_json_escaped() -> None:
    """Quotes, backslashes, newlines and control characters arrive as the same text."""
    text = 'say "hi"\\ \n\t\x01 ünï'
    assert sent(one_value({"op": "set"}, [text])) == {"r1": text}


def test_csv_text_is_kept_as_written() -> None:
    """A string cell such as 00123 is sent as "00123", not as a number."""
    assert sent(one_value({"op": "set"}, ["00123"])) == {"r1": "00123"}


# --- integers and numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("7", 7), ("-7", -7), ("+7", 7), ("1e3", 1000), ("12.0", 12), (" 42 ", 42), ("1E2", 100)],
)
def test_integer_values(cell: str, expected: int) -> None:
    """Integer cells are sent as JSON integers: 1e3 is 1000 and 12.0 is 12."""
    result = one_value({"op": "set", "type": "integer"}, [cell])
    value = sent(result)["r1"]
    assert value == expected and type(value) is int
    assert result.items["item"][0].endswith(f'"c":{expected}}}}}}}')


@pytest.mark.parametrize("cell", ["12.5", "abc", "NaN", "inf", "-inf", "0x10", "1 000", "1e400"])
def test_non_integers_are_rejected(cell: str) -> None:
    """12.5, text, NaN, infinities and hex are not integers and reject the row."""
    result = one_value({"op": "set", "type": "integer"}, [cell])
    assert result.items.height == 0
    assert "is not an integer" in rejects(result)[1]["reason"]


@pytest.mark.parametrize(
    ("vtype", "cell"),
    [
        ("integer", "1,000"),
        ("integer", "-12,345,678"),
        ("number", "1,000"),
        ("number", "1,000.50"),
    ],
)
def test_thousands_separators_are_rejected_with_a_reason(vtype: str, cell: str) -> None:
    """A number written with thousands separators is refused, and the reason says why."""
    result = one_value({"op": "set", "type": vtype}, [cell])
    assert result.items.height == 0
    assert "thousands separators" in rejects(result)[1]["reason"]


@pytest.mark.parametrize(
    ("cell", "expected"), [("2.5", 2.5), ("-0.75", -0.75), ("1e3", 1000), (".5", 0.5), ("3", 3)]
)
def test_number_values(cell: str, expected: float) -> None:
    """Number cells are sent as JSON numbers."""
    value = sent(one_value({"op": "set", "type": "number"}, [cell]))["r1"]
    assert value == expected and type(value) in (int, float)


@pytest.mark.parametrize("cell", ["NaN", "nan", "inf", "-Infinity", "1e400", "abc", "1.2.3"])
def test_non_finite_or_malformed_numbers_are_rejected(cell: str) -> None:
    """NaN, infinities and text are not numbers and reject the row."""
    result = one_value({"op": "set", "type": "number"}, [cell])
    assert result.items.height == 0
    assert "is not a number" in rejects(result)[1]["reason"]


def test_float_columns_reject_nan_and_infinity() -> None:
    """A Parquet float column's NaN and infinities reject the row; finite values pass."""
    result = one_value(
        {"op": "set"}, [1.5, float("nan"), float("-inf")], schema={"id": pl.String, "c": pl.Float64}
    )
    assert sent(result) == {"r1": 1.5}
    assert sorted(rejects(result)) == [2, 3]


def test_integer_type_on_a_float_column() -> None:
    """type integer on a float column sends 12.0 as 12 and rejects 12.5."""
    result = one_value(
        {"op": "set", "type": "integer"}, [12.0, 12.5], schema={"id": pl.String, "c": pl.Float64}
    )
    assert sent(result) == {"r1": 12}
    assert "is not an integer" in rejects(result)[2]["reason"]


def test_decimal_column_is_a_json_number_not_a_string() -> None:
    """A Decimal column's value goes out as a JSON number (Fyno drops a quoted one)."""
    result = transform(
        [{"column": "ltv", "op": "set"}, {"column": "credit", "op": "add"}],
        {"id": ["a"], "ltv": [Decimal("711.56")], "credit": [Decimal("-2.50")]},
        schema={"id": pl.String, "ltv": pl.Decimal(12, 2), "credit": pl.Decimal(12, 2)},
    )
    item = result.items["item"][0]
    assert '"ltv":711.56' in item and '"credit":-2.5' in item
    assert actions(result) == [{"$set": {"ltv": 711.56}, "$add": {"credit": -2.5}}]


def test_add_sends_numbers_and_refuses_text() -> None:
    """add sends JSON numbers (never quoted) and rejects a cell that is not a number."""
    result = one_value({"op": "add"}, ["3", "-2.5", "three"])
    values = sent(result, "$add")
    assert values == {"r1": 3, "r2": -2.5}
    assert all(type(v) in (int, float) for v in values.values())
    assert "is not a number" in rejects(result)[3]["reason"]
    assert result.items["has_add"].to_list() == [True, True]


def test_integer_column_keeps_integers() -> None:
    """An integer Parquet column is sent as JSON integers, also through add."""
    result = one_value({"op": "add"}, [3, -1], schema={"id": pl.String, "c": pl.Int32})
    assert sent(result, "$add") == {"r1": 3, "r2": -1}
    assert '"c":3}' in result.items["item"][0]


# --- booleans ---------------------------------------------------------------------------------

TRUE_SPELLINGS = ["true", "TRUE", "True", "t", "T", "yes", "YES", "Yes", "y", "Y", "1", " yes "]
FALSE_SPELLINGS = ["false", "FALSE", "False", "f", "F", "no", "NO", "No", "n", "N", "0"]


def test_every_boolean_spelling() -> None:
    """true/false, t/f, yes/no, y/n and 1/0 in any case become JSON booleans."""
    cells = TRUE_SPELLINGS + FALSE_SPELLINGS
    values = sent(one_value({"op": "set", "type": "boolean"}, cells))
    assert list(values.values()) == [True] * len(TRUE_SPELLINGS) + [False] * len(FALSE_SPELLINGS)


@pytest.mark.parametrize("cell", ["maybe", "2", "on", "-1", "tru"])
def test_other_boolean_spellings_are_rejected(cell: str) -> None:
    """Anything else in a boolean column rejects the row with the accepted spellings."""
    result = one_value({"op": "set", "type": "boolean"}, [cell])
    assert result.items.height == 0
    assert "is not a boolean (true/false, yes/no, y/n, t/f, 1/0)" in rejects(result)[1]["reason"]


def test_boolean_column_is_used_as_it_is() -> None:
    """A Parquet boolean column is sent as JSON true/false."""
    result = one_value({"op": "set"}, [True, False], schema={"id": pl.String, "c": pl.Boolean})
    assert sent(result) == {"r1": True, "r2": False}


# --- dates and datetimes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2024-03-01T10:00:00Z", "2024-03-01T10:00:00Z"),
        ("2024-03-01T10:00:00.000Z", "2024-03-01T10:00:00Z"),
        ("2024-03-01T10:00:00.123Z", "2024-03-01T10:00:00.123Z"),
        ("2024-03-01T10:00:00.5", "2024-03-01T10:00:00.500Z"),
        ("2024-03-01T10:00:00.123+05:30", "2024-03-01T04:30:00.123Z"),
        ("2024-03-01T01:00:00-05:00", "2024-03-01T06:00:00Z"),
        ("2024-03-01T23:30:00-02:00", "2024-03-02T01:30:00Z"),
        ("2024-03-01T10:00:00+0200", "2024-03-01T08:00:00Z"),
        ("2024-03-01T10:00:00", "2024-03-01T10:00:00Z"),
        ("2024-03-01 10:00:00", "2024-03-01T10:00:00Z"),
        ("2024-03-01T10:00", "2024-03-01T10:00:00Z"),
        ("2024-03-01", "2024-03-01T00:00:00Z"),
    ],
)
def test_datetimes_go_out_as_utc_with_z(cell: str, expected: str) -> None:
    """ISO 8601 in; UTC with Z out, milliseconds only when not zero, offsets converted."""
    assert sent(one_value({"op": "set", "type": "datetime"}, [cell])) == {"r1": expected}


@pytest.mark.parametrize(
    ("cell", "expected"), [("2024-03-01", "2024-03-01"), ("1999-12-31", "1999-12-31")]
)
def test_dates_go_out_as_iso_dates(cell: str, expected: str) -> None:
    """A date cell is sent as 2024-03-01."""
    assert sent(one_value({"op": "set", "type": "date"}, [cell])) == {"r1": expected}


@pytest.mark.parametrize(
    ("vtype", "cell"),
    [
        ("datetime", "2024-13-45"),
        ("datetime", "yesterday"),
        ("date", "2024-02-30"),
        ("date", "01/03/2024"),
        ("datetime", "10:00"),
    ],
)
def test_bad_dates_are_rejected(vtype: str, cell: str) -> None:
    """A cell that is not an ISO 8601 date/datetime rejects the row, hinting at format:."""
    result = one_value({"op": "set", "type": vtype}, [cell])
    assert result.items.height == 0
    reason = rejects(result)[1]["reason"]
    assert f"'{cell}' is not a {vtype}" in reason and "format:" in reason


def test_custom_date_format() -> None:
    """format: "%d/%m/%Y" reads day-first dates and rejects ISO ones that do not match it."""
    result = one_value(
        {"op": "set", "type": "date", "format": "%d/%m/%Y"}, ["01/03/2024", "2024-03-01"]
    )
    assert sent(result) == {"r1": "2024-03-01"}
    assert "is not a date in format %d/%m/%Y" in rejects(result)[2]["reason"]


def test_custom_datetime_format_with_and_without_offset() -> None:
    """A datetime format is read as UTC unless it carries an offset (%z), which is converted."""
    naive = one_value(
        {"op": "set", "type": "datetime", "format": "%d/%m/%Y %H:%M"}, ["01/03/2024 10:30"]
    )
    assert sent(naive) == {"r1": "2024-03-01T10:30:00Z"}
    aware = one_value(
        {"op": "set", "type": "datetime", "format": "%d/%m/%Y %H:%M %z"}, ["01/03/2024 10:30 +0100"]
    )
    assert sent(aware) == {"r1": "2024-03-01T09:30:00Z"}


def test_typed_date_and_timestamp_columns_are_used_as_they_are() -> None:
    """Date and timestamp columns (naive = UTC, zoned converted) need no parsing."""
    frame = pl.DataFrame(
        {
            "id": ["a"],
            "d": [date(2024, 3, 1)],
            "naive": [datetime(2024, 3, 1, 10, 0, 0, 123000)],
            "ist": [datetime(2024, 3, 1, 15, 30)],
            "utc": [datetime(2024, 3, 1, 10, 0, tzinfo=UTC)],
        },
        schema={
            "id": pl.String,
            "d": pl.Date,
            "naive": pl.Datetime("us"),
            "ist": pl.Datetime("ms"),
            "utc": pl.Datetime("ns", "UTC"),
        },
    ).with_columns(pl.col("ist").dt.replace_time_zone("Asia/Kolkata"))
    result = transform(
        [
            {"column": "d", "op": "set"},
            {"column": "naive", "op": "set"},
            {"column": "ist", "op": "set"},
            {"column": "utc", "op": "once"},
            {"column": "d", "property": "d_as_datetime", "op": "once", "type": "datetime"},
        ],
        frame,
    )
    assert actions(result) == [
        {
            "$set": {
                "d": "2024-03-01",
                "naive": "2024-03-01T10:00:00.123Z",
                "ist": "2024-03-01T10:00:00Z",
            },
            "$once": {"utc": "2024-03-01T10:00:00Z", "d_as_datetime": "2024-03-01T00:00:00Z"},
        }
    ]


# --- lists, append, remove, unset ---------------------------------------------------------------


def test_list_from_a_split_cell_is_trimmed_without_empty_pieces() -> None:
    """type list with split sends a JSON list of the trimmed, non-empty pieces in order."""
    result = one_value({"op": "set", "type": "list", "split": "|"}, [" b | a ||c ", "x", " | "])
    assert sent(result) == {"r1": ["b", "a", "c"], "r2": ["x"], "r3": []}


def test_list_pieces_over_255_characters_reject() -> None:
    """Each list element is held to Fyno's 255 characters."""
    result = one_value({"op": "set", "type": "list", "split": "|"}, ["ok|" + "z" * 256])
    assert result.items.height == 0 and rejects(result)[1]["column"] == "c"


def test_list_from_a_list_column() -> None:
    """A Parquet list column is sent as a JSON list; an element over 255 characters rejects."""
    result = one_value(
        {"op": "set"},
        [["a", "b"], [], ["y" * 256]],
        schema={"id": pl.String, "c": pl.List(pl.String)},
    )
    assert sent(result) == {"r1": ["a", "b"], "r2": []}
    assert "255" in rejects(result)[3]["reason"]


def test_a_list_type_without_split_on_a_text_column_is_a_mapping_error() -> None:
    """type list on a CSV (text) column without split says split is needed."""
    with pytest.raises(MappingError) as info:
        Transformer(
            mapping_of([{"column": "c", "op": "set", "type": "list"}]),
            {"id": pl.String, "c": pl.String},
            max_batch_bytes=1_000_000,
        )
    assert "properties[0] (column c)" in str(info.value) and "split" in str(info.value)


def test_append_sends_one_scalar_per_item_in_order() -> None:
    """append with split makes one item per trimmed, non-empty piece, in order."""
    result = one_value({"op": "append", "split": ";"}, [" beta ; ;vip;; new "])
    assert actions(result) == [
        {"$append": {"c": "beta"}},
        {"$append": {"c": "vip"}},
        {"$append": {"c": "new"}},
    ]
    assert result.items[ROW].to_list() == [1, 1, 1]
    assert result.rows_valid == 1


def test_append_without_split_sends_the_whole_cell() -> None:
    """append without split sends the cell as one scalar (never an array)."""
    assert actions(one_value({"op": "append"}, ["a;b"])) == [{"$append": {"c": "a;b"}}]


def test_append_of_typed_pieces() -> None:
    """append with type integer sends each piece as a JSON integer, rejecting bad pieces."""
    result = one_value({"op": "append", "type": "integer", "split": ","}, ["1, 2", "3,x"])
    assert actions(result) == [{"$append": {"c": 1}}, {"$append": {"c": 2}}]
    assert "'x' is not an integer" in rejects(result)[2]["reason"]


def test_appended_pieces_over_255_characters_reject() -> None:
    """Each appended value is held to Fyno's 255 characters."""
    result = one_value({"op": "append", "split": ";"}, ["ok;" + "q" * 300])
    assert result.items.height == 0 and rejects(result)[1]["column"] == "c"


def test_split_row_becomes_several_items_first_carrying_the_rest() -> None:
    """A split row: item 1 carries every other operator and the first pieces; item k the k-th."""
    result = transform(
        [
            {"column": "plan", "op": "set"},
            {"column": "n", "op": "add", "type": "integer"},
            {"column": "first", "op": "once"},
            {"column": "tags", "op": "append", "split": ";"},
            {"column": "old", "property": "tags", "op": "remove", "split": ";"},
            {"column": "gone", "op": "unset", "split": ","},
        ],
        {
            "id": ["u1", "u2"],
            "plan": ["pro", "free"],
            "n": ["2", "1"],
            "first": ["ads", None],
            "tags": ["a;b;c", None],
            "old": ["x", None],
            "gone": ["fax, legacy", None],
        },
    )
    assert items(result) == [
        {
            "distinct_id": "u1",
            "action": {
                "$set": {"plan": "pro"},
                "$once": {"first": "ads"},
                "$add": {"n": 2},
                "$append": {"tags": "a"},
                "$remove": {"tags": "x"},
                "$unset": ["fax", "legacy"],
            },
        },
        {"distinct_id": "u1", "action": {"$append": {"tags": "b"}}},
        {"distinct_id": "u1", "action": {"$append": {"tags": "c"}}},
        {"distinct_id": "u2", "action": {"$set": {"plan": "free"}, "$add": {"n": 1}}},
    ]
    assert result.items["has_add"].to_list() == [True, False, False, True]
    assert result.items[ROW].to_list() == [1, 1, 1, 2]


def test_two_split_columns_pair_their_pieces() -> None:
    """Item k carries the k-th piece of each split column; a shorter column stops early."""
    result = transform(
        [
            {"column": "add", "property": "tags", "op": "append", "split": ";"},
            {"column": "rm", "property": "tags", "op": "remove", "split": ";"},
        ],
        {"id": ["u1"], "add": ["a;b;c"], "rm": ["x;y"]},
    )
    assert actions(result) == [
        {"$append": {"tags": "a"}, "$remove": {"tags": "x"}},
        {"$append": {"tags": "b"}, "$remove": {"tags": "y"}},
        {"$append": {"tags": "c"}},
    ]


def test_unset_with_split_clears_the_named_properties() -> None:
    """unset with split clears each trimmed, non-empty name listed in the cell."""
    result = one_value({"op": "unset", "split": ","}, [" fax , legacy_score,, ", " , ", None])
    assert actions(result) == [{"$unset": ["fax", "legacy_score"]}]
    assert result.rows_valid == 3


def test_boolean_unset_clears_the_property_on_true() -> None:
    """unset without split: a true cell clears the property, false does nothing, junk rejects."""
    result = one_value({"op": "unset", "property": "phone"}, ["yes", "no", "1", "maybe", None])
    assert items(result) == [
        {"distinct_id": "r1", "action": {"$unset": ["phone"]}},
        {"distinct_id": "r3", "action": {"$unset": ["phone"]}},
    ]
    assert sorted(rejects(result)) == [4]
    assert result.rows_valid == 4


# --- on_null --------------------------------------------------------------------------------------


def test_on_null_skip_leaves_the_property_out() -> None:
    """A null cell with on_null: skip (the default) sends nothing for it, not a JSON null."""
    result = transform(
        [{"column": "a", "op": "set"}, {"column": "b", "op": "set"}],
        {"id": ["u1"], "a": ["x"], "b": [None]},
    )
    assert actions(result) == [{"$set": {"a": "x"}}]
    assert "null" not in result.items["item"][0]


def test_on_null_unset_clears_the_property() -> None:
    """A null cell with on_null: unset clears the property in the same item."""
    result = transform(
        [{"column": "a", "op": "set"}, {"column": "phone", "op": "set", "on_null": "unset"}],
        {"id": ["u1", "u2"], "a": ["x", "y"], "phone": [None, "+1 555"]},
    )
    assert actions(result) == [
        {"$set": {"a": "x"}, "$unset": ["phone"]},
        {"$set": {"a": "y", "phone": "+1 555"}},
    ]


def test_on_null_unset_uses_the_property_name() -> None:
    """on_null: unset clears the mapped property, not the column."""
    result = one_value({"op": "set", "property": "mobile", "on_null": "unset"}, [None])
    assert actions(result) == [{"$unset": ["mobile"]}]


def test_on_null_reject_rejects_the_row() -> None:
    """A null cell with on_null: reject rejects the row, naming the column."""
    result = one_value({"op": "set", "on_null": "reject"}, ["x", None, "  "], schema=None)
    assert sent(result) == {"r1": "x", "r3": "  "}
    assert rejects(result)[2] == {
        "column": "c",
        "reason": "column c: empty (on_null: reject)",
        "values": {"id": "r2", "c": None},
    }


def test_a_blank_typed_cell_counts_as_null() -> None:
    """A blank cell in a typed CSV column is null (skipped), not an invalid number."""
    result = one_value({"op": "set", "type": "integer"}, ["  ", "5"])
    assert sent(result) == {"r2": 5}
    assert result.rejects.height == 0


def test_a_valid_row_with_nothing_to_send_yields_no_item_but_counts_valid() -> None:
    """A row whose cells are all null makes no item, yet is valid (not rejected)."""
    result = transform(
        [{"column": "a", "op": "set"}, {"column": "tags", "op": "append", "split": ";"}],
        {"id": ["u1", "u2"], "a": [None, "x"], "tags": [" ; ", None]},
    )
    assert [i["distinct_id"] for i in items(result)] == ["u2"]
    assert result.rows_valid == 2 and result.rejects.height == 0


# --- size limit -----------------------------------------------------------------------------------


def test_a_row_too_big_for_max_batch_bytes_is_rejected() -> None:
    """A row whose item would not fit in one request body of --max-batch-bytes is rejected."""
    result = transform(
        [{"column": "a", "op": "set"}],
        {"id": ["big", "small"], "a": ["x" * 200, "y"]},
        max_batch_bytes=120,
    )
    assert [i["distinct_id"] for i in items(result)] == ["small"]
    bad = rejects(result)[1]
    assert "--max-batch-bytes" in bad["reason"] and "120" in bad["reason"]
    assert bad["values"] == {"id": "big", "a": "x" * 200}
    assert result.rows_valid == 1


def test_item_size_is_counted_in_utf8_bytes() -> None:
    """An item's byte size is its UTF-8 encoded length, as sent."""
    result = one_value({"op": "set"}, ["ünïcødé ✓"])
    assert result.items["nbytes"][0] == len(result.items["item"][0].encode())


# --- rejects --------------------------------------------------------------------------------------


def test_reject_lists_every_reason_and_names_the_first_failing_column() -> None:
    """reason joins every problem of the row with "; "; column is the first failing column."""
    result = transform(
        [
            {"column": "n", "op": "set", "type": "integer"},
            {"column": "ok", "op": "set", "type": "boolean"},
            {"column": "when", "op": "set", "type": "date"},
        ],
        {
            "id": ["u1", "u2", "  "],
            "n": ["1", "x", "2"],
            "ok": ["maybe", "yes", "nope"],
            "when": ["2024-99-01", "2024-01-01", "2024-01-01"],
            "unmapped": ["keep", "me", "too"],
        },
    )
    bad = rejects(result)
    assert bad[1]["column"] == "ok"
    assert bad[1]["reason"].split("; ") == [
        "column ok: 'maybe' is not a boolean (true/false, yes/no, y/n, t/f, 1/0)",
        "column when: '2024-99-01' is not a date (ISO 8601, or set format:)",
    ]
    assert bad[2] == {
        "column": "n",
        "reason": "column n: 'x' is not an integer",
        "values": {"id": "u2", "n": "x", "ok": "yes", "when": "2024-01-01", "unmapped": "me"},
    }
    assert bad[3]["column"] == "id"
    assert bad[3]["reason"].split("; ")[0] == "column id: distinct_id is empty"
    assert len(bad[3]["reason"].split("; ")) == 2
    assert result.items.height == 0 and result.rows_valid == 0


def test_reject_values_hold_the_original_cells() -> None:
    """values is a JSON object of the row's cells as read, before any trimming or conversion."""
    result = one_value({"op": "set", "type": "number"}, [" 1,000 "])
    assert rejects(result)[1]["values"] == {"id": "r1", "c": " 1,000 "}


def test_reject_values_of_typed_columns_are_json() -> None:
    """values of Parquet rows are a JSON object too, a Decimal as its exact text."""
    result = transform(
        [{"column": "v", "op": "set", "type": "integer"}],
        {"id": [None], "v": [Decimal("7.50")], "when": [date(2024, 3, 1)]},
        schema={"id": pl.Int64, "v": pl.Decimal(10, 2), "when": pl.Date},
    )
    assert rejects(result)[1]["values"] == {"id": None, "v": "7.50", "when": "2024-03-01"}


def test_a_long_bad_value_is_shortened_in_the_reason() -> None:
    """The bad value quoted in a reason is cut to a readable length."""
    result = one_value({"op": "set", "type": "integer"}, ["9" * 50 + "x" * 500])
    reason = rejects(result)[1]["reason"]
    assert len(reason) < 150 and "…" in reason


# --- a real Parquet file --------------------------------------------------------------------------


def test_a_parquet_file_with_typed_columns(tmp_path: Path) -> None:
    """Integer ids, Decimal, date, zoned timestamp and list columns read from Parquet as typed."""
    path = tmp_path / "users.parquet"
    pl.DataFrame(
        {
            "id": [1001, 1002],
            "ltv": [Decimal("711.56"), Decimal("0.10")],
            "birthday": [date(1990, 5, 17), None],
            "signup": [
                datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
                datetime(2024, 3, 1, 10, 0, 0, 7000, tzinfo=UTC),
            ],
            "tags": [["a", "b"], None],
            "logins": [3, 0],
        },
        schema={
            "id": pl.Int64,
            "ltv": pl.Decimal(12, 2),
            "birthday": pl.Date,
            "signup": pl.Datetime("us", "UTC"),
            "tags": pl.List(pl.String),
            "logins": pl.Int64,
        },
    ).write_parquet(path)
    result = transform_file(
        path,
        [
            {"column": "ltv", "op": "set"},
            {"column": "birthday", "op": "once"},
            {"column": "signup", "op": "once"},
            {"column": "tags", "op": "set"},
            {"column": "logins", "op": "add"},
        ],
    )
    assert items(result) == [
        {
            "distinct_id": "1001",
            "action": {
                "$set": {"ltv": 711.56, "tags": ["a", "b"]},
                "$once": {"birthday": "1990-05-17", "signup": "2024-03-01T10:00:00Z"},
                "$add": {"logins": 3},
            },
        },
        {
            "distinct_id": "1002",
            "action": {
                "$set": {"ltv": 0.1},
                "$once": {"signup": "2024-03-01T10:00:00.007Z"},
                "$add": {"logins": 0},
            },
        },
    ]


# --- every item is a valid Fyno batch item --------------------------------------------------------

_CELLS = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.sampled_from(
        [
            "1",
            "2.5",
            "1e3",
            "yes",
            "no",
            "a;b;;c",
            " x , y ",
            "12.0",
            "-0",
            "2024-03-01T10:00:00+02:00",
            "1,000",
        ]
    ),
)
_COLUMNS = ["id", "s", "o", "n", "a", "r", "u", "b", "l", "d"]
_PROPERTIES = [
    {"column": "s", "op": "set"},
    {"column": "o", "op": "$once", "type": "integer"},
    {"column": "n", "op": "add"},
    {"column": "a", "op": "append", "split": ";"},
    {"column": "r", "property": "a", "op": "remove", "split": ";"},
    {"column": "u", "op": "unset", "split": ","},
    {"column": "b", "property": "flag", "op": "unset"},
    {"column": "l", "op": "set", "type": "list", "split": "|"},
    {"column": "d", "op": "set", "type": "datetime", "on_null": "unset"},
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({c: _CELLS for c in _COLUMNS}), min_size=1, max_size=8))
def test_every_item_is_valid_json_with_only_the_six_operators(rows: list[dict[str, Any]]) -> None:
    """Whatever the cells, each item is valid JSON of Fyno's shape; each row valid or rejected."""
    result = transform(_PROPERTIES, {c: [r[c] for r in rows] for c in _COLUMNS})
    for item in items(result):
        check_item_shape(item)
    assert result.rows_valid + result.rejects.height == len(rows)
    assert set(result.items[ROW].to_list()).isdisjoint(result.rejects[ROW].to_list())
    for row, reject in rejects(result).items():
        assert reject["values"] == {c: rows[row - 1][c] for c in _COLUMNS}
        assert reject["column"] in _COLUMNS
        assert reject["reason"].startswith(f"column {reject['column']}:")
    for text, size in zip(result.items["item"], result.items["nbytes"], strict=True):
        assert json.loads(text) and size == len(text.encode())
