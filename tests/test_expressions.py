"""Computed values and row filters (contract.md, "Computed values and row filters"): ``expr``,
``value``, ``distinct_id: {expr}`` and ``filter``, from the transform to the emulator.

What a user would notice: a computed value lands exactly as the same value in a column would
(every operator, every rule), a filter leaves rows out without rejecting them and counts them,
and a bad expression stops the command with exit 2 naming file, line and key, before anything
is sent.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e_helpers import (
    Item,
    cli,
    emulator,
    emulator_profiles,
    one_json,
    reference_profiles,
    requests_total,
    write_mapping,
)
from helpers import MAPPINGS, SAMPLE_DATA, items, json_documents, rejects, transform
from hypothesis import given, settings
from hypothesis import strategies as st

from importer.errors import MappingError
from importer.mapping import load_mapping
from importer.pipeline import reading
from importer.sources import Source
from importer.transform import TransformResult


@pytest.fixture(autouse=True)
def _work_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default files (rejects, ledger) land in the test's directory, never in the repository."""
    monkeypatch.chdir(tmp_path)


def same_items(computed: TransformResult, precomputed: TransformResult) -> None:
    """Both results send the same items and reject the same rows."""
    assert items(computed) == items(precomputed)
    assert computed.rows_valid == precomputed.rows_valid
    assert set(rejects(computed)) == set(rejects(precomputed))


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file with a header."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- every operator, fed by an expression and by a constant ------------------------------------

IDS = ["r1", "r2", "r3"]
# op → (the mapping keys besides the value's source, the cells an expression reads, the
# expression, the same values precomputed as the column would hold them)
OPERATOR_CASES: dict[str, tuple[dict[str, Any], list[Any], str, list[Any]]] = {
    "set": ({"op": "set"}, ["Ada", "GRACE", None], "lower(c)", ["ada", "grace", None]),
    "once": ({"op": "once"}, ["ads", "seo", None], "'src-' || c", ["src-ads", "src-seo", None]),
    "add": (
        {"op": "add", "type": "integer"},
        ["1", "20", None],
        "CAST(c AS BIGINT) * 3",
        ["3", "60", None],
    ),
    "append": (
        {"op": "append", "split": ";"},
        ["a;B", "c", None],
        "lower(c) || ';x'",
        ["a;b;x", "c;x", None],
    ),
    "remove": ({"op": "remove", "split": ","}, ["T1", "", None], "lower(c)", ["t1", "", None]),
    "unset": (
        {"op": "unset", "split": ","},
        ["plan,Tags", "x", None],
        "lower(c)",
        ["plan,tags", "x", None],
    ),
}


@pytest.mark.parametrize("op", list(OPERATOR_CASES))
def test_every_operator_fed_by_an_expression_sends_what_the_column_would(op: str) -> None:
    """For each operator, `expr:` gives the items a column holding the computed values gives."""
    keys, cells, expr, precomputed = OPERATOR_CASES[op]
    computed = transform([{"property": "p", "expr": expr, **keys}], {"id": IDS, "c": cells})
    column = transform([{"column": "p", **keys}], {"id": IDS, "p": precomputed})
    same_items(computed, column)
    assert items(computed), "the case sends something"


def test_unset_without_split_fed_by_a_condition_clears_the_property() -> None:
    """`op: unset` with a boolean expression clears the property where it is true."""
    computed = transform(
        [{"property": "phone", "expr": "status = 'gone'", "op": "unset"}],
        {"id": IDS, "status": ["gone", "here", None]},
    )
    assert items(computed) == [{"distinct_id": "r1", "action": {"$unset": ["phone"]}}]


CONSTANT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"op": "set", "value": "pro"}, {"$set": {"p": "pro"}}),
    ({"op": "once", "value": "warehouse"}, {"$once": {"p": "warehouse"}}),
    ({"op": "add", "value": 5}, {"$add": {"p": 5}}),
    ({"op": "add", "value": 2.5}, {"$add": {"p": 2.5}}),
    ({"op": "append", "value": "vip"}, {"$append": {"p": "vip"}}),
    ({"op": "remove", "value": "trial"}, {"$remove": {"p": "trial"}}),
    ({"op": "unset", "value": True}, {"$unset": ["p"]}),
    ({"op": "unset", "value": "old_a, old_b", "split": ","}, {"$unset": ["old_a", "old_b"]}),
    ({"op": "set", "value": True}, {"$set": {"p": True}}),
    ({"op": "set", "value": "2024-03-01T10:00:00+02:00", "type": "datetime"}, None),
]


@pytest.mark.parametrize("keys,action", CONSTANT_CASES, ids=lambda v: json.dumps(v))
def test_every_operator_fed_by_a_constant_sends_it_on_every_row(
    keys: dict[str, Any], action: dict[str, Any] | None
) -> None:
    """A constant is sent for every row, with the operator and JSON type of its value."""
    result = transform([{"property": "p", **keys}], {"id": IDS})
    if action is None:  # a constant follows its type's rules: the datetime goes out in UTC
        action = {"$set": {"p": "2024-03-01T08:00:00Z"}}
    assert items(result) == [{"distinct_id": i, "action": action} for i in IDS]


def test_a_constant_split_appends_one_item_per_piece() -> None:
    """`value: "a;b"` with `split` appends a, then b, for every row (two items per row)."""
    result = transform(
        [{"property": "tags", "value": "a; b", "op": "append", "split": ";"}], {"id": ["r1"]}
    )
    assert [i["action"] for i in items(result)] == [
        {"$append": {"tags": "a"}},
        {"$append": {"tags": "b"}},
    ]


@pytest.mark.parametrize(
    "keys,problem",
    [
        ({"op": "add", "value": "abc"}, "'abc' is not a number"),
        ({"op": "set", "value": "12x", "type": "integer"}, "'12x' is not an integer"),
        ({"op": "set", "value": "x" * 300}, "300 characters, over Fyno's 255"),
        ({"op": "set", "value": "maybe", "type": "boolean"}, "'maybe' is not a boolean"),
    ],
)
def test_a_constant_that_breaks_its_own_rule_is_a_mapping_error(
    keys: dict[str, Any], problem: str
) -> None:
    """Rather than rejecting every row, a bad constant refuses the mapping, naming its key."""
    with pytest.raises(MappingError) as info:
        transform([{"property": "p", **keys}], {"id": IDS})
    assert info.value.message.startswith("properties[0].value: property p (value: ")
    assert problem in info.value.message


# --- the computed value follows every rule -------------------------------------------------------


def test_an_expressions_type_defaults_to_its_polars_result_type() -> None:
    """Text is a string, BIGINT arithmetic an integer, DOUBLE a number, a comparison a boolean."""
    result = transform(
        [
            {"property": "s", "expr": "n || '!'", "op": "set"},
            {"property": "i", "expr": "CAST(n AS BIGINT) + 1", "op": "set"},
            {"property": "f", "expr": "CAST(n AS DOUBLE) / 4", "op": "set"},
            {"property": "b", "expr": "CAST(n AS BIGINT) > 1", "op": "set"},
        ],
        {"id": ["r1"], "n": ["2"]},
    )
    assert items(result)[0]["action"]["$set"] == {"s": "2!", "i": 3, "f": 0.5, "b": True}


def test_a_computed_value_follows_type_on_null_and_the_255_limit() -> None:
    """`type`, `on_null: unset` and the 255-character limit apply to the computed value."""
    result = transform(
        [
            {"property": "joined", "expr": "a || b", "op": "set", "on_null": "unset"},
            {"property": "when", "expr": "a || '-01'", "op": "set", "type": "date"},
        ],
        {"id": ["r1", "r2", "r3"], "a": ["2024-03", "2024-04", "x" * 300], "b": ["", None, ""]},
    )
    assert [i["action"] for i in items(result)] == [
        {"$set": {"joined": "2024-03", "when": "2024-03-01"}},
        {"$set": {"when": "2024-04-01"}, "$unset": ["joined"]},
    ]
    (reject,) = rejects(result).values()
    assert reject["column"] == "joined"
    assert reject["reason"].startswith("property joined (expr: a || b): 300 characters")


def test_rejects_name_the_computed_property_and_quote_its_expression() -> None:
    """The rejects file's column is the property name; the reason quotes the expression."""
    result = transform(
        [{"property": "score", "expr": "upper(raw)", "op": "set", "type": "integer"}],
        {"id": ["r1", "r2"], "raw": ["12", "1a"]},
    )
    assert items(result) == [{"distinct_id": "r1", "action": {"$set": {"score": 12}}}]
    assert rejects(result)[2] == {
        "column": "score",
        "reason": "property score (expr: upper(raw)): '1A' is not an integer",
        "values": {"id": "r2", "raw": "1a"},
    }


# --- the id, computed -----------------------------------------------------------------------------


def test_a_computed_id_is_sent_trimmed_and_an_empty_one_rejects_the_row() -> None:
    """`distinct_id: {expr}` builds the id; a null result rejects the row, naming distinct_id."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"n": [42, None, 7], "c": ["a", "b", "c"]},
        schema={"n": pl.Int64, "c": pl.String},
        distinct_id={"expr": "'  cust-' || n"},
    )
    assert [i["distinct_id"] for i in items(result)] == ["cust-42", "cust-7"]
    assert rejects(result)[2]["column"] == "distinct_id"
    assert rejects(result)[2]["reason"] == (
        "distinct_id (expr: '  cust-' || n): distinct_id is empty"
    )


def test_a_computed_integer_id_has_no_decimal_point() -> None:
    """An id expression of integer type is sent as "42", as an integer column would be."""
    result = transform(
        [{"column": "c", "op": "set"}],
        {"n": ["41"], "c": ["a"]},
        distinct_id={"expr": "CAST(n AS BIGINT) + 1"},
    )
    assert items(result)[0]["distinct_id"] == "42"


# --- the filter ---------------------------------------------------------------------------------


def test_filter_leaves_rows_out_without_rejecting_them_and_counts_them() -> None:
    """False and null rows are not sent, not rejected (bad cells and all), and counted."""
    result = transform(
        [{"column": "n", "op": "set", "type": "integer"}],
        {
            "id": ["r1", "r2", "r3", "r4", ""],
            "seg": ["a", "test", None, "a", "test"],
            "n": ["1", "bad", "3", "oops", "5"],
        },
        filter="seg <> 'test'",
    )
    assert items(result) == [{"distinct_id": "r1", "action": {"$set": {"n": 1}}}]
    assert result.rows_filtered == 3
    assert result.rows_valid == 1
    assert list(rejects(result)) == [4]  # the source's own row number, and only a kept row


def test_the_filter_runs_before_any_expression() -> None:
    """A CAST that would fail on a row the filter leaves out never meets it."""
    result = transform(
        [{"property": "x2", "expr": "CAST(bal AS DOUBLE) * 2", "op": "set"}],
        {"id": ["r1", "r2"], "bal": ["n/a", "1.5"]},
        filter="bal <> 'n/a'",
    )
    assert items(result) == [{"distinct_id": "r2", "action": {"$set": {"x2": 3.0}}}]


def import_of(path: Path, mapping: Path) -> tuple[list[dict[str, Any]], int]:
    """Every item a file makes under a mapping, read as the pipeline reads it, and the count of
    rows its filter left out."""
    source = Source(name=str(path), format="parquet" if path.suffix == ".parquet" else "csv")
    prepared = reading.prepare(source, load_mapping(mapping), load_mapping(mapping).settings)
    found, filtered = [], 0
    for _, result in reading.transformed(prepared, None):
        found += items(result)
        filtered += result.rows_filtered
    return found, filtered


FILTER_MAPPING = """\
distinct_id: {expr: "'cust-' || CAST(c_custkey AS VARCHAR)"}
filter: "CAST(c_acctbal AS DOUBLE) >= 0 AND c_mktsegment <> 'AUTOMOBILE'"
properties:
  - property: label
    expr: "c_name || ' (' || c_mktsegment || ')'"
    op: set
  - property: tier
    expr: "CASE WHEN CAST(c_acctbal AS DOUBLE) > 5000 THEN 'high' ELSE 'low' END"
    op: set
  - property: balance
    expr: "CAST(c_acctbal AS DOUBLE)"
    op: add
  - property: source
    value: warehouse
    op: once
"""


def test_a_filter_on_parquet_and_on_csv_with_cast_gives_the_same_profiles(tmp_path: Path) -> None:
    """The same mapping (CASTs for the CSV's text) makes the same items from both formats."""
    rng = random.Random(14)
    segments = ["AUTOMOBILE", "BUILDING", "MACHINERY"]
    frame = pl.DataFrame(
        {
            "c_custkey": list(range(1, 301)),
            "c_name": [f"Customer#{k:05d}" for k in range(1, 301)],
            "c_acctbal": [round(rng.uniform(-999, 9999), 2) for _ in range(300)],
            "c_mktsegment": [rng.choice(segments) for _ in range(300)],
        }
    )
    frame.write_parquet(tmp_path / "c.parquet")
    frame.write_csv(tmp_path / "c.csv")
    mapping = write_mapping(tmp_path / "m.yaml", FILTER_MAPPING)
    from_parquet, parquet_filtered = import_of(tmp_path / "c.parquet", mapping)
    from_csv, csv_filtered = import_of(tmp_path / "c.csv", mapping)
    kept = frame.filter((pl.col("c_acctbal") >= 0) & (pl.col("c_mktsegment") != "AUTOMOBILE"))
    assert from_csv == from_parquet
    assert len(from_parquet) == kept.height > 0
    assert parquet_filtered == csv_filtered == 300 - kept.height
    assert from_parquet[0]["distinct_id"] == f"cust-{kept['c_custkey'][0]}"


# --- hypothesis: an expression sends what the same values in a column send ---------------------

_WORDS = st.sampled_from(["Ada", "grace", "ZOË", "x y", "", "Q-1"])


def _text_expr(depth: int) -> st.SearchStrategy[tuple[str, Any]]:
    """(SQL, a function of a row giving its value in plain Python) for a text expression."""
    leaves = st.sampled_from([("a", lambda r: r["a"]), ("b", lambda r: r["b"])]) | _WORDS.map(
        lambda w: (f"'{w}'", lambda r, w=w: w)
    )
    if depth == 0:
        return leaves
    sub = _text_expr(depth - 1)
    num = _number_expr(depth - 1)

    def lower(e: tuple[str, Any]) -> tuple[str, Any]:
        sql, f = e
        return f"lower({sql})", lambda r: None if f(r) is None else f(r).lower()

    def concat(e: tuple[tuple[str, Any], tuple[str, Any]]) -> tuple[str, Any]:
        (s1, f1), (s2, f2) = e

        def value(r: dict[str, Any]) -> str | None:
            x, y = f1(r), f2(r)
            return None if x is None or y is None else x + y

        return f"({s1} || {s2})", value

    def case(e: tuple[tuple[str, Any], int, tuple[str, Any], tuple[str, Any]]) -> tuple[str, Any]:
        (sn, fn), k, (st_, ft), (se, fe) = e

        def value(r: dict[str, Any]) -> str | None:
            n = fn(r)
            return ft(r) if n is not None and n > k else fe(r)  # a null condition is not true

        return f"CASE WHEN {sn} > {k} THEN {st_} ELSE {se} END", value

    return st.one_of(
        leaves,
        sub.map(lower),
        st.tuples(sub, sub).map(concat),
        st.tuples(num, st.integers(-50, 50), sub, sub).map(case),
    )


def _number_expr(depth: int) -> st.SearchStrategy[tuple[str, Any]]:
    """(SQL, plain-Python value) for an integer expression over the column n."""
    leaves = st.just(("n", lambda r: r["n"])) | st.integers(-9, 9).map(
        lambda k: (f"({k})", lambda r, k=k: k)
    )
    if depth == 0:
        return leaves
    sub = _number_expr(depth - 1)

    def arithmetic(e: tuple[tuple[str, Any], str, tuple[str, Any]]) -> tuple[str, Any]:
        (s1, f1), op, (s2, f2) = e

        def value(r: dict[str, Any]) -> int | None:
            x, y = f1(r), f2(r)
            if x is None or y is None:
                return None
            return x + y if op == "+" else x - y if op == "-" else x * y

        return f"({s1} {op} {s2})", value

    return leaves | st.tuples(sub, st.sampled_from(["+", "-", "*"]), sub).map(arithmetic)


ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "a": st.none() | _WORDS,
            "b": st.none() | _WORDS,
            "n": st.none() | st.integers(-1000, 1000),
        }
    ),
    min_size=1,
    max_size=8,
)


EXPRESSIONS = st.one_of(
    _text_expr(2).map(lambda e: (*e, pl.String())),
    _number_expr(2).map(lambda e: (*e, pl.Int64())),
)


@settings(max_examples=60, deadline=None)
@given(expression=EXPRESSIONS, rows=ROWS)
def test_a_random_expression_sends_what_its_values_precomputed_into_a_column_send(
    expression: tuple[str, Any, pl.DataType], rows: list[dict[str, Any]]
) -> None:
    """lower, ||, arithmetic and CASE over a row: the items equal those of a column holding
    the values computed in plain Python."""
    sql, value_of, column_type = expression
    values = [value_of(r) for r in rows]
    ids = [f"r{i}" for i in range(len(rows))]
    schema = {"id": pl.String, "a": pl.String, "b": pl.String, "n": pl.Int64}
    data = {"id": ids, **{c: [r[c] for r in rows] for c in ("a", "b", "n")}}
    computed = transform([{"property": "v", "expr": sql, "op": "set"}], data, schema=schema)
    precomputed = transform(
        [{"column": "v", "op": "set"}],
        {"id": ids, "v": values},
        schema={"id": pl.String, "v": column_type},
    )
    same_items(computed, precomputed)


# --- bad expressions: exit 2 through the command line, before anything is sent -----------------

SMALL_CSV = "user_id,name,bal\nu1,Ada,12.5\nu2,Grace,n/a\nu3,Zoë,-3\n"


def validate_error(tmp_path: Path, mapping_text: str, csv_text: str = SMALL_CSV) -> str:
    """The error of `validate --json` with this mapping: exit 2, no rows counted, no traceback."""
    source = tmp_path / "users.csv"
    source.write_text(csv_text, encoding="utf-8")
    mapping = write_mapping(tmp_path / "m.yaml", mapping_text)
    result = cli(["validate", str(source), "-m", str(mapping), "--json"])
    assert result.exit_code == 2, result.stderr
    summary = one_json(result.stdout)
    assert summary["exit_code"] == 2 and summary["rows_valid"] == 0
    error = summary["error"]
    assert isinstance(error, str) and error in result.stderr
    return error


def test_an_expression_that_does_not_parse_is_exit_2_naming_line_and_key(tmp_path: Path) -> None:
    """Refused when the mapping loads: file, line, properties[1].expr and polars' reason."""
    error = validate_error(
        tmp_path,
        """\
        distinct_id: user_id
        properties:
          - column: name
            op: set
          - property: low
            expr: "lower(name"
            op: set
        """,
    )
    assert "m.yaml:6: properties[1].expr: is not a polars SQL expression" in error
    assert "lower(name" in error


def test_an_expression_naming_a_missing_column_lists_the_columns(tmp_path: Path) -> None:
    """Exit 2 naming the source, the key and its line, and every column the source has."""
    error = validate_error(
        tmp_path,
        """\
        distinct_id: user_id
        properties:
          - property: low
            expr: "lower(nmae)"
            op: set
        """,
    )
    assert (
        "users.csv: " in error and "m.yaml:4: properties[0].expr: names column(s) 'nmae'" in error
    )
    assert "its columns are: user_id, name, bal" in error


def test_an_expression_wrong_for_the_csv_text_types_hints_at_cast(tmp_path: Path) -> None:
    """A numeric comparison on CSV text is exit 2 naming filter, the column's type and CAST."""
    error = validate_error(
        tmp_path,
        """\
        distinct_id: user_id
        filter: "bal > 0"
        properties:
          - column: name
            op: set
        """,
    )
    assert "m.yaml:2: filter: cannot be evaluated on the source's columns (bal is String)" in error
    assert "CAST" in error and "TRY_CAST" in error


def test_a_computed_id_with_a_missing_column_names_distinct_id_expr(tmp_path: Path) -> None:
    """The key path of the id's expression is distinct_id.expr."""
    error = validate_error(
        tmp_path,
        """\
        distinct_id: {expr: "'u-' || uid"}
        properties:
          - column: name
            op: set
        """,
    )
    assert "m.yaml:1: distinct_id.expr: names column(s) 'uid'" in error


@pytest.mark.parametrize(
    "mapping_text,expected",
    [
        (
            'distinct_id: user_id\nfilter: "lower(name)"\n'
            "properties:\n  - {column: name, op: set}\n",
            "m.yaml:2: filter: is not a condition: it gives String, not true or false",
        ),
        (
            "distinct_id: user_id\nproperties:\n"
            '  - {property: total, expr: "sum(CAST(bal AS DOUBLE))", op: set}\n',
            "m.yaml:3: properties[0].expr: gives one value for many rows (an aggregate",
        ),
        (
            "distinct_id: user_id\nproperties:\n  - {property: n, value: abc, op: add}\n",
            "m.yaml:3: properties[0].value: property n (value: \"abc\"): 'abc' is not a number",
        ),
    ],
    ids=["filter-not-a-condition", "aggregate", "bad-constant"],
)
def test_other_unusable_expressions_are_exit_2_naming_their_key(
    tmp_path: Path, mapping_text: str, expected: str
) -> None:
    """A filter that is no condition, an aggregate, a constant of the wrong type: exit 2."""
    assert expected in validate_error(tmp_path, mapping_text)


def test_a_cast_failing_part_way_through_a_file_stops_the_run_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad cell in a later batch is exit 2 naming source and key; the API gets no request."""
    monkeypatch.setattr(reading, "READ_BATCH_ROWS", 10)
    rows = [[f"u{i}", f"n{i}", "1.5" if i != 35 else "n/a"] for i in range(1, 41)]
    source = write_rows(tmp_path / "users.csv", ["user_id", "name", "bal"], rows)
    mapping = write_mapping(
        tmp_path / "m.yaml",
        """\
        distinct_id: user_id
        properties:
          - property: doubled
            expr: "CAST(bal AS DOUBLE) * 2"
            op: set
        """,
    )
    with emulator() as (server, _):
        result = cli(["run", str(source), "-m", str(mapping), "--base-url", server.url, "--json"])
        stats = server.stats()
    assert result.exit_code == 2, result.stderr
    error = one_json(result.stdout)["error"]
    assert error.startswith(f"{source}: {mapping}:4: properties[0].expr: cannot be evaluated")
    assert '["n/a"]' in error and "TRY_CAST" in error
    assert requests_total(stats) == 0


def test_mapping_check_with_a_source_checks_the_expressions(tmp_path: Path) -> None:
    """`mapping check FILE SOURCE` is exit 2 for a wrong expression, 0 for a good one, and
    counts an expression's columns as mapped."""
    source = tmp_path / "users.csv"
    source.write_text(SMALL_CSV, encoding="utf-8")
    bad = write_mapping(
        tmp_path / "bad.yaml",
        'distinct_id: user_id\nproperties:\n  - {property: x, expr: "bal * 2", op: set}\n',
    )
    result = cli(["mapping", "check", str(bad), str(source)])
    assert result.exit_code == 2 and "properties[0].expr: cannot be evaluated" in result.stderr
    good = write_mapping(
        tmp_path / "good.yaml",
        'distinct_id: user_id\nproperties:\n  - {property: x, expr: "upper(name)", op: set}\n',
    )
    result = cli(["mapping", "check", str(good), str(source)])
    assert result.exit_code == 0
    assert "columns not mapped (not sent): bal" in result.stdout + result.stderr


# --- the summary --------------------------------------------------------------------------------


def test_rows_filtered_is_in_the_summary_and_the_reject_rate_counts_kept_rows(
    tmp_path: Path,
) -> None:
    """8 of 10 rows filtered, 1 of the 2 kept bad: 50% over --max-reject-rate 0.3 is exit 3 (of
    all 10 rows it would have been 10%); without a filter rows_filtered is 0."""
    rows = [[f"u{i}", "keep" if i in (1, 2) else "drop", "1" if i != 2 else "x"] for i in range(10)]
    source = write_rows(tmp_path / "s.csv", ["user_id", "seg", "n"], rows)
    filtered = write_mapping(
        tmp_path / "f.yaml",
        "distinct_id: user_id\nfilter: \"seg = 'keep'\"\n"
        "properties:\n  - {column: n, op: set, type: integer}\n",
    )
    result = cli(["validate", str(source), "-m", str(filtered), "--json"])
    summary = one_json(result.stdout)
    assert (summary["rows_read"], summary["rows_valid"], summary["rows_rejected"]) == (10, 1, 1)
    assert summary["rows_filtered"] == 8
    assert "rows filtered out" in result.stderr
    run = cli(["run", str(source), "-m", str(filtered), "--dry-run", "--max-reject-rate", "0.3"])
    assert run.exit_code == 3 and "1 of 2 rows the filter kept are invalid (50.0%)" in run.stderr
    plain = write_mapping(
        tmp_path / "p.yaml", "distinct_id: user_id\nproperties:\n  - {column: seg, op: set}\n"
    )
    result = cli(["validate", str(source), "-m", str(plain), "--json"])
    assert one_json(result.stdout)["rows_filtered"] == 0
    assert "rows filtered out" not in result.stderr


def test_with_shards_filtered_rows_are_counted_by_shard_1(tmp_path: Path) -> None:
    """The shards' items add up to the whole import's; shard 1 alone counts the filtered rows."""
    rows = [[f"u{i}", "a" if i % 3 else "test"] for i in range(60)]
    source = write_rows(tmp_path / "s.csv", ["user_id", "seg"], rows)
    mapping = write_mapping(
        tmp_path / "m.yaml",
        "distinct_id: {expr: \"'x-' || user_id\"}\nfilter: \"seg <> 'test'\"\n"
        "properties:\n  - {property: seg, value: a, op: set}\n",
    )
    summaries = [
        one_json(
            cli(
                ["run", str(source), "-m", str(mapping), "--dry-run", "--json", "--shard", f"{k}/3"]
            ).stdout
        )
        for k in (1, 2, 3)
    ]
    assert sum(s["items_total"] for s in summaries) == 40
    assert [s["rows_filtered"] for s in summaries] == [20, 0, 0]


# --- end to end: the emulator over a real socket --------------------------------------------------

E2E_MAPPING = """\
distinct_id: {expr: "'cust-' || id"}
filter: "TRY_CAST(balance AS DOUBLE) >= 0 AND segment <> 'AUTOMOBILE'"
properties:
  - property: label
    expr: "first || ' ' || last"
    op: set
  - property: email
    expr: "lower(email)"
    op: set
  - property: tier                  # CAST, not TRY_CAST: the filter has left out "n/a"
    expr: "CASE WHEN CAST(balance AS DOUBLE) > 5000 THEN 'high' ELSE 'low' END"
    op: set
  - property: balance_total
    expr: "CAST(balance AS DOUBLE)"
    op: add
  - property: visits
    value: 1
    op: add
  - property: source
    value: warehouse
    op: once
  - property: tags
    expr: "lower(tags)"
    op: append
    split: ";"
"""


def _e2e_rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "id": str(rng.randrange(40)),
            "first": rng.choice(["Ada", "Grace", "Zoë", "Edsger"]),
            "last": rng.choice(["Lovelace", "Hopper", "Dijkstra"]),
            "email": rng.choice(["Ada@Example.COM", "grace@example.com", "ZOË@X.ORG"]),
            "balance": rng.choice(["n/a", f"{rng.uniform(-500, 9000):.2f}", "0"]),
            "segment": rng.choice(["AUTOMOBILE", "BUILDING", "MACHINERY"]),
            "tags": rng.choice(["", "VIP", "vip;Beta", " news ; vip "]),
        }
        for _ in range(count)
    ]


def _kept_balance(row: dict[str, str]) -> float | None:
    """The row's balance when E2E_MAPPING's filter keeps the row, else None."""
    try:
        balance = float(row["balance"])
    except ValueError:
        return None  # TRY_CAST gives null: the filter is not true
    return None if balance < 0 or row["segment"] == "AUTOMOBILE" else balance


def _expected_items(rows: list[dict[str, str]]) -> list[Item]:
    """The items E2E_MAPPING implies, computed in plain Python from contract.md."""
    out: list[Item] = []
    for row in rows:
        balance = _kept_balance(row)
        if balance is None:
            continue
        first: dict[str, Any] = {
            "$set": {
                "label": f"{row['first']} {row['last']}",
                "email": row["email"].lower(),
                "tier": "high" if balance > 5000 else "low",
            },
            "$once": {"source": "warehouse"},
            "$add": {"balance_total": balance, "visits": 1},
        }
        pieces = [p.strip() for p in row["tags"].lower().split(";") if p.strip()]
        actions = [first] + [{} for _ in pieces[1:]]
        for k, piece in enumerate(pieces):
            actions[k]["$append"] = {"tags": piece}
        out += [(f"cust-{row['id']}", action) for action in actions]
    return out


def test_computed_values_and_a_filter_land_in_the_emulator_as_plain_python_computes_them(
    tmp_path: Path,
) -> None:
    """`run` over a real socket: every profile equals the one plain Python computes from the
    rows; filtered rows are counted and never sent."""
    rows = _e2e_rows(400, seed=7)
    source = write_rows(tmp_path / "export.csv", list(rows[0]), [list(r.values()) for r in rows])
    mapping = write_mapping(tmp_path / "m.yaml", E2E_MAPPING)
    expected = reference_profiles(_expected_items(rows))
    with emulator() as (server, _):
        result = cli(["run", str(source), "-m", str(mapping), "--base-url", server.url, "--json"])
        actual = emulator_profiles(server, [f"cust-{i}" for i in range(40)])
    summary = one_json(result.stdout)
    assert result.exit_code == 0, summary["error"]
    assert summary["rows_filtered"] == sum(1 for r in rows if _kept_balance(r) is None) > 0
    assert summary["rows_valid"] + summary["rows_filtered"] == len(rows)
    assert actual == expected and len(expected) > 20


def test_preview_shows_computed_values_and_leaves_filtered_rows_out() -> None:
    """`preview` builds the bodies `run` would send: no free-plan profile is in them, and the
    second row's computed values and constant are."""
    result = cli(
        [
            "preview",
            str(SAMPLE_DATA / "users.csv"),
            "-m",
            str(MAPPINGS / "segments.yaml"),
            "-n",
            "99",
        ]
    )
    assert result.exit_code == 0, result.stderr
    sent = {
        i["distinct_id"]: i["action"] for b in json_documents(result.stdout) for i in b["batch"]
    }
    assert len(sent) == 3000 - 705 - 1  # all but the free plan and the row without an id
    assert "u-100001" not in sent  # on the free plan
    assert sent["u-100002"]["$set"]["full_name"] == "Ken Lovelace"
    assert sent["u-100002"]["$once"] == {"source": "warehouse"}


def test_the_shipped_segments_mapping_runs_on_both_sample_files() -> None:
    """mappings/segments.yaml (the README's example) imports sample_data/ into the emulator:
    computed values, the constant and the filter, the same profiles from CSV and Parquet but
    for the one CSV cell TRY_CAST turns to null."""
    profiles = []
    for name in ("users.csv", "users.parquet"):
        with emulator() as (server, _):
            result = cli(
                [
                    "run",
                    str(SAMPLE_DATA / name),
                    "-m",
                    str(MAPPINGS / "segments.yaml"),
                    "--base-url",
                    server.url,
                    "--json",
                ]
            )
            summary = one_json(result.stdout)
            profiles.append(emulator_profiles(server, [f"u-{100000 + n}" for n in range(1, 3001)]))
        assert result.exit_code == 1 and summary["rows_rejected"] == 1  # the empty user_id
        assert summary["rows_filtered"] == 705  # the free plan
    from_csv, from_parquet = profiles
    assert from_csv["u-100002"] == {
        "full_name": "Ken Lovelace",
        "email": "ken.lovelace.2@example.com",
        "value_tier": "standard",
        "source": "warehouse",
        "country": "FR",
    }
    differing = [k for k in from_csv if from_csv[k] != from_parquet[k]]
    assert set(from_csv) == set(from_parquet) and differing == ["u-100240"]
