"""Tests of the mapping file: its model, loading YAML/JSON/TOML and the errors a user sees."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import MAPPING_FILES, write

from importer.errors import MappingError
from importer.mapping import OPERATORS, Mapping, load_mapping, mapping_json_schema

TYPES = ["string", "integer", "number", "boolean", "date", "datetime", "list"]


def load_yaml(tmp_path: Path, text: str, name: str = "m.yaml") -> Mapping:
    """Write a mapping file and load it."""
    return load_mapping(write(tmp_path / name, text))


def error_of(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    """The MappingError message that loading this mapping text gives."""
    with pytest.raises(MappingError) as info:
        load_yaml(tmp_path, text, name)
    return str(info.value)


# --- operators, types, on_null, split ---------------------------------------------------------


@pytest.mark.parametrize("dollar", ["", "$"])
@pytest.mark.parametrize("op", OPERATORS)
def test_every_operator_loads_with_and_without_dollar(tmp_path: Path, op: str, dollar: str) -> None:
    """Each of the six operators is accepted both as `set` and as Fyno's `$set` spelling."""
    mapping = load_yaml(
        tmp_path,
        f"""
        distinct_id: user_id
        properties:
          - column: c
            op: "{dollar}{op}"
        """,
    )
    assert mapping.properties[0].op == op


def test_unknown_operator_is_refused_naming_it_and_the_choices(tmp_path: Path) -> None:
    """An operator outside the six is an error naming the bad value, the key path and the line."""
    message = error_of(
        tmp_path,
        """
        distinct_id: user_id
        properties:
          - column: email
            op: upsert
        """,
    )
    assert "m.yaml:4" in message
    assert "properties[0].op" in message
    assert "upsert" in message
    for op in OPERATORS:
        assert op in message


@pytest.mark.parametrize("vtype", TYPES)
def test_every_type_loads(tmp_path: Path, vtype: str) -> None:
    """Each of the seven value types is accepted for op set (list with a split)."""
    split = '\n    split: ";"' if vtype == "list" else ""
    mapping = load_yaml(
        tmp_path,
        f"distinct_id: id\nproperties:\n  - column: c\n    op: set\n    type: {vtype}{split}\n",
    )
    assert mapping.properties[0].type == vtype


def test_unknown_dollar_operator_is_quoted_as_written(tmp_path: Path) -> None:
    """A misspelt `$` operator is quoted with its `$`, as the user wrote it."""
    message = error_of(tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: $sett}\n")
    assert "(got '$sett')" in message


def test_unknown_type_is_refused(tmp_path: Path) -> None:
    """A type outside the seven is an error naming the key and the bad value."""
    message = error_of(
        tmp_path,
        """
        distinct_id: id
        properties:
          - column: c
            op: set
            type: float
        """,
    )
    assert "m.yaml:5" in message and "properties[0].type" in message and "float" in message


@pytest.mark.parametrize("on_null", ["skip", "unset", "reject"])
def test_on_null_choices_load(tmp_path: Path, on_null: str) -> None:
    """on_null takes skip, unset or reject."""
    mapping = load_yaml(
        tmp_path,
        f"distinct_id: id\nproperties:\n  - column: c\n    op: set\n    on_null: {on_null}\n",
    )
    assert mapping.properties[0].on_null == on_null


def test_on_null_defaults_to_skip_and_refuses_other_values(tmp_path: Path) -> None:
    """Without on_null a null cell is skipped; an unknown on_null value is an error naming it."""
    mapping = load_yaml(tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: set}\n")
    assert mapping.properties[0].on_null == "skip"
    message = error_of(
        tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: set, on_null: drop}\n"
    )
    assert "properties[0].on_null" in message and "drop" in message


@pytest.mark.parametrize(
    ("op", "vtype"), [("append", None), ("remove", None), ("unset", None), ("set", "list")]
)
def test_split_is_accepted_where_it_means_something(
    tmp_path: Path, op: str, vtype: str | None
) -> None:
    """split is accepted for append, remove, unset and a list-typed set."""
    type_line = f"\n    type: {vtype}" if vtype else ""
    mapping = load_yaml(
        tmp_path,
        f'distinct_id: id\nproperties:\n  - column: c\n    op: {op}{type_line}\n    split: ";"\n',
    )
    assert mapping.properties[0].split == ";"


@pytest.mark.parametrize(
    ("op", "vtype"), [("set", "string"), ("add", None), ("once", "integer"), ("set", None)]
)
def test_split_is_refused_where_it_means_nothing(
    tmp_path: Path, op: str, vtype: str | None
) -> None:
    """split on a scalar set/once/add is an error that says where split belongs."""
    type_line = f"\n    type: {vtype}" if vtype else ""
    message = error_of(
        tmp_path,
        f'distinct_id: id\nproperties:\n  - column: c\n    op: {op}{type_line}\n    split: ";"\n',
    )
    assert "m.yaml:3" in message and "properties[0]" in message
    assert "split is for append, remove, unset or type list" in message


@pytest.mark.parametrize("op", ["append", "remove"])
def test_append_and_remove_refuse_type_list(tmp_path: Path, op: str) -> None:
    """append/remove send one scalar per item, so type list is refused with a pointer to split."""
    message = error_of(
        tmp_path, f"distinct_id: id\nproperties:\n  - {{column: c, op: {op}, type: list}}\n"
    )
    assert "use split" in message


@pytest.mark.parametrize("vtype", ["string", "boolean", "date", "list"])
def test_add_refuses_non_numeric_types(tmp_path: Path, vtype: str) -> None:
    """op add takes only integer or number: any other type is an error naming it."""
    message = error_of(
        tmp_path, f"distinct_id: id\nproperties:\n  - {{column: c, op: add, type: {vtype}}}\n"
    )
    assert "m.yaml:3" in message
    assert f"op add takes only integer or number values, not type {vtype}" in message


@pytest.mark.parametrize("vtype", ["integer", "number"])
def test_add_accepts_numeric_types(tmp_path: Path, vtype: str) -> None:
    """op add with type integer or number loads."""
    mapping = load_yaml(
        tmp_path, f"distinct_id: id\nproperties:\n  - {{column: c, op: add, type: {vtype}}}\n"
    )
    assert mapping.properties[0].type == vtype


def test_format_is_only_for_dates(tmp_path: Path) -> None:
    """format: is accepted for date/datetime and refused on other types."""
    mapping = load_yaml(
        tmp_path,
        'distinct_id: id\nproperties:\n  - {column: c, op: set, type: date, format: "%d/%m/%Y"}\n',
    )
    assert mapping.properties[0].format == "%d/%m/%Y"
    message = error_of(
        tmp_path,
        'distinct_id: id\nproperties:\n  - {column: c, op: set, type: string, format: "%d"}\n',
    )
    assert "format is only for type date or datetime" in message


def test_property_defaults_to_column_name(tmp_path: Path) -> None:
    """Without `property`, the Fyno property is named after the column."""
    mapping = load_yaml(
        tmp_path,
        """
        distinct_id: id
        properties:
          - {column: email, op: set}
          - {column: first_name, property: name, op: set}
        """,
    )
    assert [p.target for p in mapping.properties] == ["email", "name"]


# --- structural errors ------------------------------------------------------------------------


def test_unknown_property_key_names_key_and_line(tmp_path: Path) -> None:
    """A misspelt key inside a property names the file, its line and the key path."""
    message = error_of(
        tmp_path,
        """
        distinct_id: user_id
        properties:
          - column: email
            op: set
          - column: plan
            op: set
            tpye: string
        """,
    )
    assert "m.yaml:7: properties[1].tpye: unknown key" in message
    assert "fyno-import mapping schema" in message


def test_unknown_top_level_key_names_key_and_line(tmp_path: Path) -> None:
    """A misspelt top-level key is reported at its own line."""
    message = error_of(
        tmp_path,
        """
        distinct_id: user_id
        properties:
          - {column: email, op: set}
        setings:
          batch_size: 10
        """,
    )
    assert "m.yaml:4: setings: unknown key" in message


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    """A mapping without distinct_id or without properties says which key is missing."""
    message = error_of(tmp_path, "properties:\n  - {column: email, op: set}\n")
    assert "distinct_id: required key is missing" in message
    message = error_of(tmp_path, "distinct_id: id\nproperties: []\n")
    assert "properties" in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    """Every problem of a mapping is listed in one error, each with its line."""
    message = error_of(
        tmp_path,
        """
        distinct_id: id
        properties:
          - {column: a, op: sett}
          - {column: b, op: set, colour: red}
        """,
    )
    assert "m.yaml:3: properties[0].op" in message
    assert "m.yaml:4: properties[1].colour: unknown key" in message


def test_duplicate_op_and_property_is_refused(tmp_path: Path) -> None:
    """Two columns writing the same property with the same operator are an error naming both."""
    message = error_of(
        tmp_path,
        """
        distinct_id: id
        properties:
          - {column: email, op: set}
          - {column: work_email, property: email, op: set}
        """,
    )
    assert "properties[1] (column work_email)" in message
    assert "'email' with op set again, as properties[0] does" in message


def test_same_property_with_different_operators_is_fine(tmp_path: Path) -> None:
    """append and remove on one list property (as in list_maintenance.yaml) is allowed."""
    mapping = load_yaml(
        tmp_path,
        """
        distinct_id: id
        properties:
          - {column: tags, op: append, split: ";"}
          - {column: removed, property: tags, op: remove, split: ";"}
          - {column: a, op: unset, split: ","}
          - {column: b, op: unset, split: ","}
        """,
    )
    assert [p.target for p in mapping.properties] == ["tags", "tags", "a", "b"]


def test_yaml_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    """A key written twice in YAML is an error naming the key and the line of the repeat."""
    message = error_of(
        tmp_path,
        """
        distinct_id: user_id
        properties:
          - column: email
            op: set
            op: once
        """,
    )
    assert "m.yaml:5" in message and "'op' appears twice" in message


def test_tabs_in_yaml_give_a_clear_error(tmp_path: Path) -> None:
    """A tab-indented YAML mapping fails with its line and a hint that YAML indents with spaces."""
    path = tmp_path / "m.yaml"
    path.write_text("distinct_id: id\nproperties:\n\t- column: email\n\t  op: set\n")
    with pytest.raises(MappingError) as info:
        load_mapping(path)
    message = str(info.value)
    assert "m.yaml:3" in message
    assert "YAML indents with spaces, never tabs" in message


def test_a_mapping_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    """A YAML list or scalar in place of a mapping says what a mapping file holds."""
    message = error_of(tmp_path, "- just\n- a list\n")
    assert "distinct_id" in message and "properties" in message


def test_missing_mapping_file_points_to_mapping_init(tmp_path: Path) -> None:
    """A mapping path that does not exist names the path and suggests `mapping init`."""
    with pytest.raises(MappingError) as info:
        load_mapping(tmp_path / "nope.yaml")
    assert "nope.yaml: no such mapping file" in str(info.value)
    assert "mapping init" in str(info.value)


# --- JSON and TOML ----------------------------------------------------------------------------

YAML_TEXT = """
distinct_id: user_id
properties:
  - {column: email, op: $set}
  - {column: logins, op: add, type: integer}
  - {column: tags, op: append, split: ";"}
source:
  delimiter: ";"
settings:
  batch_size: 50
"""

JSON_TEXT = """
{
  "distinct_id": "user_id",
  "properties": [
    {"column": "email", "op": "$set"},
    {"column": "logins", "op": "add", "type": "integer"},
    {"column": "tags", "op": "append", "split": ";"}
  ],
  "source": {"delimiter": ";"},
  "settings": {"batch_size": 50}
}
"""

TOML_TEXT = """
distinct_id = "user_id"

[[properties]]
column = "email"
op = "$set"

[[properties]]
column = "logins"
op = "add"
type = "integer"

[[properties]]
column = "tags"
op = "append"
split = ";"

[source]
delimiter = ";"

[settings]
batch_size = 50
"""


def test_json_and_toml_mappings_load_like_yaml(tmp_path: Path) -> None:
    """The same mapping written in YAML, JSON and TOML loads to the same model."""
    from_yaml = load_yaml(tmp_path, YAML_TEXT, "m.yaml")
    from_json = load_yaml(tmp_path, JSON_TEXT, "m.json")
    from_toml = load_yaml(tmp_path, TOML_TEXT, "m.toml")
    assert from_yaml == from_json == from_toml
    assert from_yaml.settings.batch_size == 50
    assert from_yaml.source.delimiter == ";"


def test_json_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    """A misspelt key in a JSON mapping (even tab-indented) names the key and its line."""
    text = JSON_TEXT.replace('"type": "integer"', '"tpye": "integer"').replace("  ", "\t")
    message = error_of(tmp_path, text, "m.json")
    assert "m.json:5: properties[1].tpye: unknown key" in message


def test_toml_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    """A misspelt key in a TOML mapping names the key and its line."""
    message = error_of(tmp_path, TOML_TEXT.replace('split = ";"', 'splt = ";"'), "m.toml")
    assert "m.toml:15: properties[2].splt: unknown key" in message


def test_json_duplicate_key_is_refused(tmp_path: Path) -> None:
    """A key written twice in a JSON object is refused, as in YAML, instead of the last winning."""
    text = JSON_TEXT.replace('"op": "$set"', '"op": "$set", "op": "unset"')
    message = error_of(tmp_path, text, "m.json")
    assert "'op' appears twice" in message


def test_broken_json_and_toml_name_the_file(tmp_path: Path) -> None:
    """Syntax errors in JSON (with its line) and TOML name the file."""
    message = error_of(tmp_path, '{\n  "distinct_id": "id",\n  oops\n}\n', "m.json")
    assert "m.json:3: invalid JSON" in message
    message = error_of(tmp_path, "distinct_id = \n", "m.toml")
    assert "m.toml: invalid TOML" in message


# --- settings ---------------------------------------------------------------------------------


def test_settings_are_read(tmp_path: Path) -> None:
    """Every run option marked * may be set under settings:."""
    mapping = load_yaml(
        tmp_path,
        """
        distinct_id: id
        properties: [{column: c, op: set}]
        settings:
          batch_size: 10
          max_batch_bytes: 2000
          concurrency: 2
          rate_limit: 5
          max_retries: 1
          timeout: 3.5
          max_reject_rate: 0.5
          allow_empty: true
          changed_only: true
          missing: unset
          max_missing_rate: 0.2
        """,
    )
    assert mapping.settings.model_dump() == {
        "batch_size": 10,
        "max_batch_bytes": 2000,
        "concurrency": 2,
        "rate_limit": 5.0,
        "max_retries": 1,
        "timeout": 3.5,
        "max_reject_rate": 0.5,
        "allow_empty": True,
        "changed_only": True,
        "missing": "unset",
        "max_missing_rate": 0.2,
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", "0"),
        ("max_batch_bytes", "10"),
        ("concurrency", "0"),
        ("rate_limit", "-1"),
        ("max_retries", "-1"),
        ("timeout", "0"),
        ("max_reject_rate", "1.5"),
        ("batch_size", "many"),
    ],
)
def test_bad_settings_values_are_refused(tmp_path: Path, key: str, value: str) -> None:
    """An out-of-range or mistyped setting names settings.<key> and its line."""
    message = error_of(
        tmp_path,
        f"distinct_id: id\nproperties: [{{column: c, op: set}}]\nsettings:\n  {key}: {value}\n",
    )
    assert f"m.yaml:4: settings.{key}:" in message


def test_unknown_settings_key_is_refused(tmp_path: Path) -> None:
    """A key under settings: that is not a run option (here --dry-run) is an unknown-key error."""
    message = error_of(
        tmp_path,
        "distinct_id: id\nproperties: [{column: c, op: set}]\nsettings:\n  dry_run: true\n",
    )
    assert "m.yaml:4: settings.dry_run: unknown key" in message


def test_source_options_are_validated(tmp_path: Path) -> None:
    """encoding takes utf8 or latin1 only, and the delimiter is one character."""
    message = error_of(
        tmp_path,
        "distinct_id: id\nproperties: [{column: c, op: set}]\nsource:\n  encoding: cp1252\n",
    )
    assert "source.encoding" in message and "cp1252" in message
    message = error_of(
        tmp_path,
        "distinct_id: id\nproperties: [{column: c, op: set}]\nsource:\n  delimiter: ';;'\n",
    )
    assert "source.delimiter" in message


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_ignores_settings(tmp_path: Path) -> None:
    """Changing only settings: keeps the mapping fingerprint (so chunk ids stay the same)."""
    base = "distinct_id: id\nproperties:\n  - {column: c, op: set}\n"
    first = load_yaml(tmp_path, base + "settings:\n  concurrency: 2\n  batch_size: 7\n")
    second = load_yaml(tmp_path, base)
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        "distinct_id: id\nproperties:\n  - {column: c, op: once}\n",
        "distinct_id: id\nproperties:\n  - {column: c, property: d, op: set}\n",
        "distinct_id: id\nproperties:\n  - {column: c, op: set, type: integer}\n",
        "distinct_id: id\nproperties:\n  - {column: c, op: set, on_null: unset}\n",
        "distinct_id: key\nproperties:\n  - {column: c, op: set}\n",
        "distinct_id: id\nproperties:\n  - {column: c, op: set}\nsource:\n  delimiter: ';'\n",
    ],
)
def test_fingerprint_changes_with_what_shapes_the_items(tmp_path: Path, change: str) -> None:
    """Any change to the id, properties or reader options gives another mapping fingerprint."""
    base = load_yaml(tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: set}\n")
    assert load_yaml(tmp_path, change).fingerprint() != base.fingerprint()


def test_fingerprint_is_the_same_for_dollar_and_plain_operators(tmp_path: Path) -> None:
    """`$set` and `set` are the same mapping, with the same fingerprint."""
    plain = load_yaml(tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: set}\n")
    dollar = load_yaml(tmp_path, "distinct_id: id\nproperties:\n  - {column: c, op: $set}\n")
    assert plain.fingerprint() == dollar.fingerprint()


# --- the shipped mappings and the JSON Schema ---------------------------------------------------


@pytest.mark.parametrize("path", MAPPING_FILES, ids=lambda p: p.name)
def test_each_shipped_mapping_loads(path: Path) -> None:
    """Every file in mappings/ is a valid mapping."""
    mapping = load_mapping(path)
    assert mapping.distinct_id == "user_id"
    assert mapping.properties


def test_the_shipped_mappings_exist() -> None:
    """mappings/ holds the three documented example mappings."""
    assert {p.name for p in MAPPING_FILES} >= {
        "nightly_export.yaml",
        "migration.yaml",
        "list_maintenance.yaml",
    }


def test_json_schema_accepts_shipped_mappings_and_rejects_a_typo() -> None:
    """The JSON Schema for editors accepts every mappings/ file and `$set`, and flags a typo."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = mapping_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    validator = jsonschema.Draft202012Validator(schema)
    for path in MAPPING_FILES:
        data = yaml.safe_load(path.read_text())
        assert list(validator.iter_errors(data)) == [], path.name
    data = yaml.safe_load(MAPPING_FILES[0].read_text())
    data["properties"][0]["op"] = "$" + data["properties"][0]["op"]
    assert list(validator.iter_errors(data)) == []
    data["properties"][0]["tpye"] = "string"
    errors = [e.message for e in validator.iter_errors(data)]
    assert any("tpye" in e for e in errors)


def test_json_schema_is_plain_json_listing_every_key() -> None:
    """The schema serialises to JSON and lists the property keys a user may write."""
    schema = json.loads(json.dumps(mapping_json_schema()))
    spec = schema["$defs"]["PropertySpec"]
    assert spec["additionalProperties"] is False
    assert set(spec["properties"]) == {
        "column",
        "expr",
        "value",
        "property",
        "op",
        "type",
        "split",
        "on_null",
        "on_too_long",
        "format",
    }
    assert schema["required"] == ["distinct_id", "properties"]


# --- computed values and row filters ------------------------------------------------------------


def test_expr_value_and_filter_load(tmp_path: Path) -> None:
    """expr, value, filter and distinct_id {expr} load, the SQL kept as written (stripped)."""
    mapping = load_yaml(
        tmp_path,
        """
        distinct_id: {expr: "'cust-' || c_custkey"}
        filter: "c_acctbal >= 0 AND c_mktsegment <> 'AUTOMOBILE'"
        properties:
          - property: tier
            expr: >
              CASE WHEN c_acctbal > 5000
              THEN 'high' ELSE 'low' END
            op: set
          - {property: source, value: warehouse, op: $once}
          - {property: logins, value: 1, op: add}
          - {property: since, value: 2024-03-01, op: once, type: date}
        """,
    )
    assert mapping.id_column is None
    assert mapping.filter == "c_acctbal >= 0 AND c_mktsegment <> 'AUTOMOBILE'"
    tier, source, logins, since = mapping.properties
    assert tier.expr == "CASE WHEN c_acctbal > 5000 THEN 'high' ELSE 'low' END"
    assert (source.value, source.op, logins.value, since.value) == (
        "warehouse",
        "once",
        1,
        "2024-03-01",
    )
    assert mapping.columns == ["c_custkey", "c_acctbal", "c_mktsegment"]


def test_source_key_describes_where_each_value_comes_from(tmp_path: Path) -> None:
    """column:x, expr:SQL and value:JSON, so 1 and "1" differ and the property name does not
    count (incremental sync keys a property's state by it)."""
    mapping = load_yaml(
        tmp_path,
        """
        distinct_id: id
        properties:
          - {column: email, property: mail, op: set}
          - {property: low, expr: " lower(email) ", op: set}
          - {property: a, value: 1, op: set}
          - {property: b, value: "1", op: set}
          - {property: c, value: true, op: set}
        """,
    )
    assert [p.source_key for p in mapping.properties] == [
        "column:email",
        "expr:lower(email)",
        "value:1",
        'value:"1"',
        "value:true",
    ]


@pytest.mark.parametrize(
    "entry,problem",
    [
        ("{column: a, expr: b, op: set}", "column, expr and value are alternatives"),
        ("{column: a, value: 1, property: p, op: set}", "column, expr and value are alternatives"),
        ("{op: set, property: p}", "each property needs one of column, expr or value"),
        ("{expr: lower(a), op: set}", "property (the Fyno property name) is required with expr"),
        ("{value: x, op: set}", "property (the Fyno property name) is required with value"),
        ("{value: null, property: p, op: set}", "a constant cannot be null"),
        ("{value: [1, 2], property: p, op: set}", "a constant is text, a number or true/false"),
        ('{expr: "  ", property: p, op: set}', "is empty: write a polars SQL expression"),
    ],
)
def test_each_property_has_exactly_one_source_and_a_name(
    tmp_path: Path, entry: str, problem: str
) -> None:
    """The value's source is one of column, expr and value; property is needed without column."""
    message = error_of(tmp_path, f"distinct_id: id\nproperties:\n  - {entry}\n")
    assert "m.yaml:3: properties[0]" in message and problem in message


@pytest.mark.parametrize(
    "text,where",
    [
        (
            'distinct_id: id\nproperties:\n  - property: p\n    expr: "lower(a"\n    op: set\n',
            "m.yaml:4: properties[0].expr: is not a polars SQL expression",
        ),
        (
            "distinct_id: {expr: \"'u-' ||\"}\nproperties:\n  - {column: a, op: set}\n",
            "m.yaml:1: distinct_id.expr: is not a polars SQL expression",
        ),
        (
            'distinct_id: id\nfilter: "a = 1 AND"\nproperties:\n  - {column: a, op: set}\n',
            "m.yaml:2: filter: is not a polars SQL expression",
        ),
        (
            'distinct_id: {exprs: "a"}\nproperties:\n  - {column: a, op: set}\n',
            "m.yaml:1: distinct_id.exprs: unknown key",
        ),
    ],
)
def test_sql_that_does_not_parse_is_refused_at_load_naming_line_and_key(
    tmp_path: Path, text: str, where: str
) -> None:
    """An expression polars cannot parse is a mapping error with its line and key path."""
    assert where in error_of(tmp_path, text)


def test_expressions_load_from_json_and_toml_with_their_lines(tmp_path: Path) -> None:
    """JSON and TOML mappings take the same keys; a bad expression names its line there too."""
    from_json = load_yaml(
        tmp_path,
        '{"distinct_id": {"expr": "lower(id)"}, "filter": "a <> \'x\'",\n'
        ' "properties": [{"property": "p", "value": 2.5, "op": "add"}]}\n',
        "m.json",
    )
    assert from_json.properties[0].source_key == "value:2.5"
    message = error_of(
        tmp_path,
        'distinct_id = "id"\n\n[[properties]]\nproperty = "p"\nexpr = "lower("\nop = "set"\n',
        "m.toml",
    )
    assert "m.toml:5: properties[0].expr: is not a polars SQL expression" in message


def test_fingerprint_of_a_mapping_without_the_new_keys_is_unchanged() -> None:
    """A mapping written before expressions existed keeps its fingerprint (so its chunk ids):
    the hash of its keys as they were dumped then."""
    mapping = Mapping.model_validate(
        {"distinct_id": "user_id", "properties": [{"column": "email", "op": "set"}]}
    )
    before = {
        "distinct_id": "user_id",
        "properties": [
            {
                "column": "email",
                "property": None,
                "op": "set",
                "type": None,
                "split": None,
                "on_null": "skip",
                "on_too_long": "reject",
                "format": None,
            }
        ],
        "source": {
            "delimiter": None,
            "null_values": [""],
            "encoding": "utf8",
            "storage_options": {},
        },
    }
    assert (
        mapping.fingerprint()
        == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"filter": "a <> 'x'"},
        {"properties": [{"property": "email", "expr": "lower(email)", "op": "set"}]},
        {"properties": [{"property": "email", "value": "x", "op": "set"}]},
        {"distinct_id": {"expr": "user_id"}},
    ],
    ids=["filter", "expr", "value", "id-expr"],
)
def test_fingerprint_changes_with_an_expression_a_constant_or_a_filter(
    change: dict[str, Any],
) -> None:
    """What a computed value or a filter changes in the items changes the fingerprint."""
    base = {"distinct_id": "user_id", "properties": [{"column": "email", "op": "set"}]}
    assert (
        Mapping.model_validate({**base, **change}).fingerprint()
        != Mapping.model_validate(base).fingerprint()
    )


def test_json_schema_knows_expr_value_and_filter() -> None:
    """Editors accept expr, value, filter and distinct_id {expr}, and flag two sources of one
    value and an expression without its property name."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(mapping_json_schema())
    good = {
        "distinct_id": {"expr": "'u-' || id"},
        "filter": "a <> 'x'",
        "properties": [
            {"property": "p", "expr": "lower(a)", "op": "$set"},
            {"property": "q", "value": 3, "op": "add"},
            {"column": "a", "op": "set"},
        ],
    }
    assert list(validator.iter_errors(good)) == []
    for bad in (
        {"column": "a", "expr": "b", "property": "p", "op": "set"},
        {"expr": "b", "op": "set"},
        {"property": "p", "value": None, "op": "set"},
    ):
        assert list(validator.iter_errors({**good, "properties": [bad]})), bad
