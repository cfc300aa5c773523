"""`fyno-import mapping init / schema / check`: starter mappings, the JSON Schema, checking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result
from helpers import MAPPING_FILES, SAMPLE_DATA, write

from importer.cli import main
from importer.mapping import load_mapping

SAMPLE_FILES = sorted(
    p for p in SAMPLE_DATA.iterdir() if p.suffix in (".csv", ".parquet", ".tsv", ".gz", ".pq")
)


def invoke(*args: str | Path) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def schema() -> dict[str, Any]:
    """The JSON Schema exactly as `fyno-import mapping schema` prints it."""
    result = invoke("mapping", "schema")
    assert result.exit_code == 0
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def schema_errors(document: Any) -> list[str]:
    """The JSON Schema's complaints about a mapping document (a dict loaded from YAML)."""
    validator = jsonschema.Draft202012Validator(schema())
    return [error.message for error in validator.iter_errors(document)]


def test_sample_data_is_there() -> None:
    """The loop below has files to work on: the sample CSV and Parquet."""
    assert {p.name for p in SAMPLE_FILES} >= {"users.csv", "users.parquet"}


@pytest.mark.parametrize("source", SAMPLE_FILES, ids=lambda p: p.name)
def test_init_on_each_sample_file_gives_a_mapping_validate_accepts(
    source: Path, tmp_path: Path
) -> None:
    """`mapping init FILE -o M` writes a mapping that `mapping check` passes and with which
    `validate` finishes (exit 0, or 1 for the sample's deliberately bad rows, never 2)."""
    mapping = tmp_path / "starter.yaml"
    result = invoke("mapping", "init", source, "-o", mapping)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {mapping}" in result.stderr
    assert invoke("mapping", "check", mapping, source).exit_code == 0
    result = invoke("validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv", "--json")
    assert result.exit_code in (0, 1), result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows_valid"] > 0.99 * summary["rows_read"]
    assert schema_errors(yaml.safe_load(mapping.read_text(encoding="utf-8"))) == []


def test_init_lists_every_column_with_set_and_a_guessed_type(tmp_path: Path) -> None:
    """Every column but the id is listed with op set; types follow the data (a stray bad cell
    does not make a number column text; a leading + or 0 keeps a column text)."""
    result = invoke("mapping", "init", SAMPLE_DATA / "users.csv")
    assert result.exit_code == 0
    mapping = load_mapping(write(tmp_path / "m.yaml", result.stdout))
    header = (SAMPLE_DATA / "users.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert mapping.distinct_id == "user_id"
    assert [p.column for p in mapping.properties] == [c for c in header if c != "user_id"]
    assert {p.op for p in mapping.properties} == {"set"}
    types = {p.column: p.type for p in mapping.properties}
    assert types["logins"] == "integer"
    assert types["lifetime_value"] == "number"  # despite the one "abc" in the sample
    assert types["marketing_opt_in"] == "boolean"
    assert types["signup_at"] == "datetime" and types["birthday"] == "date"
    assert types["phone"] == "string"  # +91…: a number type would lose the +
    assert '"abc": validate rejects them' in result.stdout
    assert 'split: ";"' in result.stdout  # the tags column looks like a list


def test_init_quotes_awkward_column_names_and_guesses_the_id(tmp_path: Path) -> None:
    """Column names YAML would misread (yes, spaces, `: `, `#`) survive; `id` is the id."""
    source = write(tmp_path / "odd.csv", "yes,my col,a: b,#tag,id\n1,2,3,4,00042\n")
    result = invoke("mapping", "init", source)
    assert result.exit_code == 0
    mapping = load_mapping(write(tmp_path / "m.yaml", result.stdout))
    assert mapping.distinct_id == "id"
    assert [p.column for p in mapping.properties] == ["yes", "my col", "a: b", "#tag"]


def test_init_detects_latin1_and_a_semicolon_delimiter(tmp_path: Path) -> None:
    """A Latin-1 file with `;` between fields gets `source:` settings that read it right."""
    source = tmp_path / "export.csv"
    source.write_bytes("kunde;stadt\nk-1;Köln\nk-2;Malmö\n".encode("latin-1"))
    mapping = tmp_path / "m.yaml"
    assert invoke("mapping", "init", source, "-o", mapping, "--id-column", "kunde").exit_code == 0
    loaded = load_mapping(mapping)
    assert loaded.source.encoding == "latin1" and loaded.source.delimiter == ";"
    assert [p.column for p in loaded.properties] == ["stadt"]
    result = invoke("preview", source, "-m", mapping, "-n", "5")
    assert result.exit_code == 0 and "Köln" in result.stdout and "Malmö" in result.stdout


def test_init_does_not_overwrite_without_force(tmp_path: Path) -> None:
    """An existing -o file is kept (exit 2) unless --force."""
    mapping = write(tmp_path / "m.yaml", "# my hand-made mapping\n")
    result = invoke("mapping", "init", SAMPLE_DATA / "users.csv", "-o", mapping)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert mapping.read_text() == "# my hand-made mapping\n"
    assert (
        invoke("mapping", "init", SAMPLE_DATA / "users.csv", "-o", mapping, "--force").exit_code
        == 0
    )
    assert "distinct_id: user_id" in mapping.read_text()


def test_init_names_a_missing_id_column(tmp_path: Path) -> None:
    """--id-column that the file lacks is exit 2 listing the columns there are."""
    result = invoke("mapping", "init", SAMPLE_DATA / "users.csv", "--id-column", "uid")
    assert result.exit_code == 2 and "'uid'" in result.stderr and "user_id" in result.stderr


@pytest.mark.parametrize("path", MAPPING_FILES, ids=lambda p: p.name)
def test_the_schema_accepts_every_shipped_mapping(path: Path) -> None:
    """Each file in mappings/ is valid against the JSON Schema."""
    assert schema_errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_the_schema_is_valid_json_schema_and_describes_keys() -> None:
    """The schema itself is valid draft 2020-12, and keys carry descriptions for editors."""
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    spec = document["$defs"]["PropertySpec"]["properties"]
    assert "description" in spec["column"] and "$set" in spec["op"]["enum"]


@pytest.mark.parametrize(
    ("typo", "where"),
    [
        ("  - {colum: email, op: set}\n", "colum"),
        ("  - {column: email, op: sett}\n", "sett"),
        ("  - {column: email, op: set, on_nul: unset}\n", "on_nul"),
        ("  - {column: email, op: set, type: text}\n", "text"),
        ("  - {column: email, op: set}\nsetings: {batch_size: 10}\n", "setings"),
        ("  - {column: email, op: set}\nsettings: {batch_sise: 10}\n", "batch_sise"),
        ("  - {column: email, op: set}\nsource: {encoding: utf16}\n", "utf16"),
    ],
)
def test_the_schema_rejects_a_typo(typo: str, where: str) -> None:
    """A misspelt key or value fails the schema, as it fails load_mapping."""
    document = yaml.safe_load("distinct_id: user_id\nproperties:\n" + typo)
    errors = schema_errors(document)
    assert errors and any(where in message for message in errors), errors


def test_the_schema_accepts_dollar_operators() -> None:
    """Operators written as Fyno spells them ($set) are valid, as load_mapping takes them."""
    document = {"distinct_id": "id", "properties": [{"column": "a", "op": "$once"}]}
    assert schema_errors(document) == []


def test_check_passes_a_good_mapping_and_names_unmapped_columns(tmp_path: Path) -> None:
    """`mapping check FILE SOURCE` is exit 0 and lists the columns the mapping leaves out."""
    mapping = write(
        tmp_path / "m.yaml", "distinct_id: user_id\nproperties:\n  - {column: email, op: set}\n"
    )
    result = invoke("mapping", "check", mapping)
    assert result.exit_code == 0 and "valid (1 properties)" in result.stderr
    result = invoke("mapping", "check", mapping, SAMPLE_DATA / "users.csv")
    assert result.exit_code == 0 and "valid for" in result.stderr
    assert "columns not mapped" in result.stderr and "first_name" in result.stderr


def test_check_refuses_a_missing_column_and_a_bad_key(tmp_path: Path) -> None:
    """A column the source lacks, or an unknown key, is exit 2 naming it (and its line)."""
    mapping = write(
        tmp_path / "m.yaml", "distinct_id: user_id\nproperties:\n  - {column: emial, op: set}\n"
    )
    result = invoke("mapping", "check", mapping, SAMPLE_DATA / "users.csv")
    assert result.exit_code == 2 and "emial" in result.stderr
    bad = write(
        tmp_path / "bad.yaml",
        "distinct_id: user_id\nproperties:\n  - column: email\n    op: set\n    on_nul: unset\n",
    )
    result = invoke("mapping", "check", bad)
    assert result.exit_code == 2 and f"{bad}:5" in result.stderr and "on_nul" in result.stderr


def test_init_mentions_computed_values_and_the_filter_in_its_comments(tmp_path: Path) -> None:
    """The starter mapping's comments point at expr, value and filter, and the file still loads
    with only columns mapped."""
    result = invoke("mapping", "init", SAMPLE_DATA / "users.csv")
    assert result.exit_code == 0
    comments = "\n".join(line for line in result.stdout.splitlines() if line.startswith("#"))
    assert "expr:" in comments and "value:" in comments and "filter:" in comments
    assert "CAST" in comments
    mapping = load_mapping(write(tmp_path / "m.yaml", result.stdout))
    assert mapping.filter is None and all(p.column for p in mapping.properties)
