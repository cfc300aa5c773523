"""CLI tests of validate, preview, run --dry-run, the run pre-flight checks and `mapping`."""

from __future__ import annotations

import csv
import json
import re
import stat
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from click.testing import CliRunner, Result
from helpers import (
    CONTRACT_SUMMARY_KEYS,
    MAPPINGS,
    SAMPLE_DATA,
    check_item_shape,
    json_documents,
    sample_generator,
    write,
)

from importer.cli import main
from importer.mapping import load_mapping
from importer.pipeline import ImportOptions, preview

USERS_CSV = SAMPLE_DATA / "users.csv"
USERS_PARQUET = SAMPLE_DATA / "users.parquet"
NIGHTLY = MAPPINGS / "nightly_export.yaml"
MIGRATION = MAPPINGS / "migration.yaml"
LISTS = MAPPINGS / "list_maintenance.yaml"
GENERATE = sample_generator()
SECRET = "fyno-secret-key-do-not-print-7f3a"
DATETIME_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
DATE = re.compile(r"^\d{4}-\d\d-\d\d$")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Fyno settings leak in from the environment; files land in the test's directory."""
    for name in ("FYNO_API_KEY", "FYNO_WORKSPACE_ID", "FYNO_VERSION", "FYNO_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def invoke(*args: str | Path) -> Result:
    """Run the CLI in-process with stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def summary_of(result: Result) -> dict[str, Any]:
    """The one JSON object a --json command prints on stdout."""
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def reject_rows(path: Path) -> list[dict[str, str]]:
    """The rejects file's records."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- validate on the sample data ------------------------------------------------------------------


def test_sample_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    """sample_data/ is what tools/sample_data.py writes, so its BAD_*_ROWS describe those files."""
    GENERATE.HERE = tmp_path
    GENERATE.main()
    assert (tmp_path / "users.csv").read_bytes() == USERS_CSV.read_bytes()
    assert pl.read_parquet(tmp_path / "users.parquet").equals(pl.read_parquet(USERS_PARQUET))


@pytest.mark.parametrize(
    ("source", "bad_rows"),
    [(USERS_CSV, GENERATE.BAD_CSV_ROWS), (USERS_PARQUET, GENERATE.BAD_PARQUET_ROWS)],
    ids=["csv", "parquet"],
)
def test_validate_rejects_exactly_the_known_bad_rows(
    tmp_path: Path, source: Path, bad_rows: dict[int, str]
) -> None:
    """validate of a sample file rejects exactly its known bad rows, by row number, and exits 1."""
    rejects = tmp_path / "rejects.csv"
    result = invoke("validate", source, "-m", NIGHTLY, "--rejects", rejects, "--no-progress")
    assert result.exit_code == 1
    lines = reject_rows(rejects)
    assert [int(r["row"]) for r in lines] == sorted(bad_rows)
    for line in lines:
        why = bad_rows[int(line["row"])]
        assert line["source"] == str(source)
        assert line["column"] == why.split()[0]
        assert line["reason"].startswith(f"column {line['column']}:")
        values = json.loads(line["values"])
        assert set(values) == set(pl.read_csv(USERS_CSV, n_rows=0).columns)
    assert "rows rejected" in result.stderr and str(len(bad_rows)) in result.stderr
    assert result.stdout == ""


def test_rejects_file_has_the_contract_columns_and_mode_0600(tmp_path: Path) -> None:
    """The rejects file's header is source,row,column,reason,values and only its owner reads it."""
    rejects = tmp_path / "rejects.csv"
    rejects.write_text("old content\n")
    rejects.chmod(0o644)
    invoke("validate", USERS_CSV, "-m", NIGHTLY, "--rejects", rejects)
    assert rejects.read_text().splitlines()[0] == "source,row,column,reason,values"
    assert "old content" not in rejects.read_text()
    assert stat.S_IMODE(rejects.stat().st_mode) == 0o600


def test_rejects_file_is_rewritten_by_each_validate(tmp_path: Path) -> None:
    """A clean validate after a dirty one leaves only the header in the rejects file."""
    rejects = tmp_path / "rejects.csv"
    invoke("validate", USERS_CSV, "-m", NIGHTLY, "--rejects", rejects)
    assert len(reject_rows(rejects)) == len(GENERATE.BAD_CSV_ROWS)
    clean = write(tmp_path / "clean.csv", "user_id,email\nu1,a@x.io\n")
    mapping = write(
        tmp_path / "m.yaml", "distinct_id: user_id\nproperties: [{column: email, op: set}]\n"
    )
    assert invoke("validate", clean, "-m", mapping, "--rejects", rejects).exit_code == 0
    assert rejects.read_text() == "source,row,column,reason,values\n"


def test_default_rejects_file_is_in_the_working_directory(tmp_path: Path) -> None:
    """Without --rejects, validate writes fyno-import.rejects.csv where it runs."""
    result = invoke("validate", USERS_CSV, "-m", NIGHTLY, "--json")
    assert summary_of(result)["rejects"] == "fyno-import.rejects.csv"
    assert len(reject_rows(tmp_path / "fyno-import.rejects.csv")) == len(GENERATE.BAD_CSV_ROWS)


def test_validate_json_prints_one_object_with_the_contract_keys(tmp_path: Path) -> None:
    """validate --json prints exactly one JSON object on stdout; run_id and ledger are null."""
    rejects = tmp_path / "r.csv"
    result = invoke("validate", USERS_CSV, "-m", NIGHTLY, "--rejects", rejects, "--json")
    assert result.exit_code == 1
    summary = summary_of(result)
    assert set(summary) >= CONTRACT_SUMMARY_KEYS
    assert summary["run_id"] is None and summary["ledger"] is None
    assert summary["exit_code"] == 1 and summary["error"] is None
    assert summary["rows_read"] == 3000
    assert summary["rows_rejected"] == len(GENERATE.BAD_CSV_ROWS)
    assert summary["rows_valid"] == 3000 - len(GENERATE.BAD_CSV_ROWS)
    assert summary["rejects"] == str(rejects)
    assert summary["items_sent"] == 0 and summary["chunks_accepted"] == 0
    assert summary["chunks_total"] > 0
    assert summary["sources"] == [
        {"source": str(USERS_CSV), "rows_read": 3000, "rows_rejected": 5, "skipped": False}
    ]
    assert "rows read" in result.stderr


def test_a_clean_file_exits_0(tmp_path: Path) -> None:
    """A file whose every row is valid validates with exit 0 and an empty rejects file."""
    source = write(
        tmp_path / "ok.csv",
        """
        user_id,email,logins,vip,signup
        u1,a@x.io,3,yes,2024-03-01T10:00:00Z
        u2,b@x.io,,no,2024-03-02
        """,
    )
    mapping = write(
        tmp_path / "m.yaml",
        """
        distinct_id: user_id
        properties:
          - {column: email, op: set}
          - {column: logins, op: add, type: integer}
          - {column: vip, op: set, type: boolean}
          - {column: signup, op: once, type: datetime}
        """,
    )
    result = invoke("validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv", "--json")
    assert result.exit_code == 0
    summary = summary_of(result)
    assert (summary["rows_read"], summary["rows_valid"], summary["rows_rejected"]) == (2, 2, 0)
    assert reject_rows(tmp_path / "r.csv") == []


def test_several_sources_are_one_validate(tmp_path: Path) -> None:
    """Several sources are validated together; each reject names its own source and row."""
    mapping = write(tmp_path / "m.yaml", "distinct_id: id\nproperties: [{column: n, op: add}]\n")
    first = write(tmp_path / "a.csv", "id,n\n1,1\n2,x\n")
    second = write(tmp_path / "b.csv", "id,n\n3,y\n4,2\n5,3\n")
    result = invoke(
        "validate", first, second, "-m", mapping, "--rejects", tmp_path / "r.csv", "--json"
    )
    assert result.exit_code == 1
    summary = summary_of(result)
    assert [(s["source"], s["rows_read"], s["rows_rejected"]) for s in summary["sources"]] == [
        (str(first), 2, 1),
        (str(second), 3, 1),
    ]
    assert [(r["source"], r["row"]) for r in reject_rows(tmp_path / "r.csv")] == [
        (str(first), "2"),
        (str(second), "1"),
    ]


def test_row_numbers_count_records_not_lines(tmp_path: Path) -> None:
    """A reject's row is the record number: quoted newlines earlier in the file do not shift it."""
    source = tmp_path / "a.csv"
    source.write_text('id,note,n\n1,"a\nb",1\n2,"c\n\nd",2\n3,e,three\n')
    mapping = write(
        tmp_path / "m.yaml",
        "distinct_id: id\nproperties: [{column: note, op: set}, {column: n, op: add}]\n",
    )
    result = invoke("validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 1
    [line] = reject_rows(tmp_path / "r.csv")
    assert line["row"] == "3" and line["column"] == "n"
    assert json.loads(line["values"]) == {"id": "3", "note": "e", "n": "three"}


def test_format_override_through_validate(tmp_path: Path) -> None:
    """validate --format csv reads a file with another suffix; without it, exit 2 naming it."""
    source = write(tmp_path / "export.txt", "id,email\n1,a@x.io\n")
    mapping = write(
        tmp_path / "m.yaml", "distinct_id: id\nproperties: [{column: email, op: set}]\n"
    )
    result = invoke("validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 2 and "export.txt: unknown format" in result.stderr
    result = invoke(
        "validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv", "--format", "csv"
    )
    assert result.exit_code == 0


def test_latin1_encoding_through_validate(tmp_path: Path) -> None:
    """A Latin-1 file validates once the mapping says encoding: latin1."""
    source = tmp_path / "a.csv"
    source.write_bytes("id,name\n1,José\n".encode("latin-1"))
    mapping = write(
        tmp_path / "m.yaml",
        "distinct_id: id\nproperties: [{column: name, op: set}]\nsource:\n  encoding: latin1\n",
    )
    result = invoke("validate", source, "-m", mapping, "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 0


# --- validate: mapping and source problems --------------------------------------------------------


def test_missing_mapped_column_is_exit_2_naming_it(tmp_path: Path) -> None:
    """A mapping column the file lacks exits 2, naming it and listing the file's columns."""
    mapping = write(
        tmp_path / "m.yaml",
        "distinct_id: user_id\nproperties:\n  - {column: emial, op: set}\n",
    )
    result = invoke("validate", USERS_CSV, "-m", mapping, "--rejects", tmp_path / "r.csv", "--json")
    assert result.exit_code == 2
    assert "'emial'" in result.stderr
    assert "user_id, first_name, last_name, email" in result.stderr
    summary = summary_of(result)
    assert summary["exit_code"] == 2 and "'emial'" in summary["error"]


def test_unknown_mapping_key_is_exit_2_naming_key_and_line(tmp_path: Path) -> None:
    """A misspelt key in the mapping exits 2, naming the file, line and key."""
    mapping = write(
        tmp_path / "m.yaml",
        """
        distinct_id: user_id
        properties:
          - column: email
            op: set
            on_nul: unset
        """,
    )
    result = invoke("validate", USERS_CSV, "-m", mapping, "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 2
    assert f"{mapping}:5: properties[0].on_nul: unknown key" in result.stderr


def test_missing_mapping_file_is_exit_2(tmp_path: Path) -> None:
    """A mapping path that does not exist exits 2 naming it."""
    result = invoke("validate", USERS_CSV, "-m", tmp_path / "nope.yaml", "--json")
    assert result.exit_code == 2
    assert "nope.yaml: no such mapping file" in summary_of(result)["error"]


def test_missing_source_is_exit_2_with_json(tmp_path: Path) -> None:
    """A missing source exits 2, and --json still prints one summary object naming it."""
    missing = tmp_path / "gone.csv"
    result = invoke("validate", missing, "-m", NIGHTLY, "--json")
    assert result.exit_code == 2
    summary = summary_of(result)
    assert summary["exit_code"] == 2 and str(missing) in summary["error"]


# --- preview --------------------------------------------------------------------------------------


def test_preview_prints_request_bodies_of_fyno_shape() -> None:
    """preview -n 2 prints two JSON request bodies whose items have the documented shapes."""
    result = invoke("preview", USERS_PARQUET, "-m", MIGRATION, "-n", "2", "--batch-size", "7")
    assert result.exit_code == 0
    bodies = json_documents(result.stdout)
    assert len(bodies) == 2
    for body in bodies:
        assert list(body) == ["batch"] and 1 <= len(body["batch"]) <= 7
        for item in body["batch"]:
            check_item_shape(item)
            action = item["action"]
            assert set(action) <= {"$set", "$once", "$add"}
            assert isinstance(action["$add"]["logins"], int)
            assert DATE.match(action["$once"]["birthday"])
            assert DATETIME_Z.match(action["$once"]["signup_at"])
            assert isinstance(action["$set"]["marketing_opt_in"], bool)
            assert type(action["$set"]["migrated_ltv"]) in (int, float)
    assert result.stderr.count("# request") == 2


def test_preview_of_list_maintenance_splits_rows_into_items() -> None:
    """preview of the list mapping shows one $append scalar per item and $unset name lists."""
    result = invoke("preview", USERS_CSV, "-m", LISTS, "-n", "3", "--batch-size", "50")
    assert result.exit_code == 0
    found = set()
    for body in json_documents(result.stdout):
        for item in body["batch"]:
            check_item_shape(item)
            found |= set(item["action"])
            for value in item["action"].get("$append", {}).values():
                assert isinstance(value, str) and ";" not in value
    assert "$append" in found


def test_preview_of_a_bad_mapping_is_exit_2(tmp_path: Path) -> None:
    """preview with a mapping column the file lacks exits 2 naming the column."""
    mapping = write(
        tmp_path / "m.yaml", "distinct_id: user_id\nproperties: [{column: nope, op: set}]\n"
    )
    result = invoke("preview", USERS_CSV, "-m", mapping)
    assert result.exit_code == 2 and "'nope'" in result.stderr and result.stdout == ""


# --- run --dry-run and the run pre-flight checks --------------------------------------------------


def test_dry_run_needs_no_key_writes_no_ledger_and_counts_chunks(tmp_path: Path) -> None:
    """run --dry-run --json needs no FYNO_API_KEY, writes no ledger, counts what it would send."""
    result = invoke(
        "run", USERS_CSV, "-m", NIGHTLY, "--dry-run", "--json", "--rejects", tmp_path / "r.csv"
    )
    assert result.exit_code == 1
    summary = summary_of(result)
    assert set(summary) >= CONTRACT_SUMMARY_KEYS
    assert summary["run_id"] is None and summary["ledger"] is None
    assert summary["items_sent"] == 0 and summary["bytes_sent"] == 0
    assert summary["rows_rejected"] == len(GENERATE.BAD_CSV_ROWS)
    assert list(tmp_path.glob("*.ledger.db*")) == []
    # what a real run would send: the same chunks and bytes as the bodies preview builds
    mapping = load_mapping(NIGHTLY)
    options = ImportOptions(sources=[str(USERS_CSV)], mapping=mapping, settings=mapping.settings)
    bodies = preview(options, 10_000)
    assert summary["chunks_total"] == len(bodies) > 0
    assert summary["bytes_total"] == sum(len(b) for b in bodies)
    assert summary["items_total"] == sum(len(json.loads(b)["batch"]) for b in bodies)


def test_dry_run_counts_follow_the_batch_options(tmp_path: Path) -> None:
    """run --dry-run with a smaller --batch-size counts more chunks, none over the bound."""
    common = [
        "run",
        USERS_PARQUET,
        "-m",
        NIGHTLY,
        "--dry-run",
        "--json",
        "--rejects",
        tmp_path / "r.csv",
    ]
    default = summary_of(invoke(*common))
    small = summary_of(invoke(*common, "--batch-size", "10"))
    assert small["chunks_total"] > default["chunks_total"]
    assert small["chunks_total"] * 10 >= small["items_total"]


def test_dry_run_over_the_reject_rate_exits_3(tmp_path: Path) -> None:
    """run --dry-run stops with exit 3 when more rows are invalid than --max-reject-rate allows."""
    rejects = tmp_path / "r.csv"
    result = invoke(
        "run", USERS_CSV, "-m", NIGHTLY, "--dry-run", "--json", "--rejects", rejects,
        "--max-reject-rate", "0.001",
    )  # fmt: skip
    assert result.exit_code == 3
    summary = summary_of(result)
    assert summary["exit_code"] == 3 and "--max-reject-rate" in summary["error"]
    assert "5 of 3000 rows" in summary["error"]
    assert len(reject_rows(rejects)) == len(GENERATE.BAD_CSV_ROWS)
    under = invoke(
        "run", USERS_CSV, "-m", NIGHTLY, "--dry-run", "--rejects", rejects,
        "--max-reject-rate", "0.01",
    )  # fmt: skip
    assert under.exit_code == 1


def test_reject_rate_from_mapping_settings(tmp_path: Path) -> None:
    """settings: max_reject_rate in the mapping applies, and the command line wins over it."""
    source = write(tmp_path / "a.csv", "id,n\n1,1\n2,x\n3,3\n4,4\n")
    mapping = write(
        tmp_path / "m.yaml",
        "distinct_id: id\nproperties: [{column: n, op: add}]\nsettings:\n  max_reject_rate: 0.1\n",
    )
    base = ["run", source, "-m", mapping, "--dry-run", "--rejects", tmp_path / "r.csv"]
    assert invoke(*base).exit_code == 3
    assert invoke(*base, "--max-reject-rate", "0.5").exit_code == 1


def test_run_without_a_key_is_exit_2_naming_fyno_api_key(tmp_path: Path) -> None:
    """run without a key (and without --emulator or --dry-run) exits 2 naming FYNO_API_KEY."""
    result = invoke("run", USERS_CSV, "-m", NIGHTLY, "--json", "--rejects", tmp_path / "r.csv")
    assert result.exit_code == 2
    assert "FYNO_API_KEY" in result.stderr and "FYNO_API_KEY" in summary_of(result)["error"]
    assert summary_of(result)["rows_read"] == 0
    assert list(tmp_path.glob("*.ledger.db*")) == []


def test_run_without_a_workspace_is_exit_2_and_never_shows_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a key but no workspace, run exits 2 naming FYNO_WORKSPACE_ID, never printing the key."""
    monkeypatch.setenv("FYNO_API_KEY", SECRET)
    result = invoke("run", USERS_CSV, "-m", NIGHTLY, "--json")
    assert result.exit_code == 2
    assert "FYNO_WORKSPACE_ID" in result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr


def test_plain_http_base_url_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--base-url http://example.com exits 2 before any client is made; the key is not shown."""
    monkeypatch.setenv("FYNO_API_KEY", SECRET)
    monkeypatch.setenv("FYNO_WORKSPACE_ID", "WS1")
    clients: list[object] = []

    class NoClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            clients.append(self)
            raise AssertionError("no HTTP client may be created")

    monkeypatch.setattr(httpx, "AsyncClient", NoClient)
    result = invoke(
        "run", USERS_CSV, "-m", NIGHTLY, "--base-url", "http://example.com", "--json",
        "--rejects", tmp_path / "r.csv",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "http://" in result.stderr and "example.com" in result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert clients == [] and list(tmp_path.glob("*.ledger.db*")) == []
    assert summary_of(result)["rows_read"] == 0


def test_plain_http_base_url_from_the_environment_is_refused_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FYNO_BASE_URL=http://… to a non-loopback host is refused with exit 2 as well."""
    monkeypatch.setenv("FYNO_API_KEY", SECRET)
    monkeypatch.setenv("FYNO_WORKSPACE_ID", "WS1")
    monkeypatch.setenv("FYNO_BASE_URL", "http://10.1.2.3:8080")
    result = invoke("run", USERS_CSV, "-m", NIGHTLY)
    assert result.exit_code == 2 and "10.1.2.3" in result.stderr
    assert SECRET not in result.stderr


# --- mapping init / schema / check ----------------------------------------------------------------


@pytest.mark.parametrize("source", [USERS_CSV, USERS_PARQUET], ids=["csv", "parquet"])
def test_mapping_init_writes_a_mapping_that_validate_accepts(tmp_path: Path, source: Path) -> None:
    """`mapping init` on each sample file writes a mapping that validate reads (exit 0 or 1)."""
    out = tmp_path / "starter.yaml"
    result = invoke("mapping", "init", source, "-o", out)
    assert result.exit_code == 0 and out.exists()
    mapping = load_mapping(out)
    assert mapping.distinct_id == "user_id"
    assert {p.column for p in mapping.properties} == set(
        pl.read_csv(USERS_CSV, n_rows=0).columns
    ) - {"user_id"}
    validated = invoke("validate", source, "-m", out, "--rejects", tmp_path / "r.csv")
    assert validated.exit_code in (0, 1), validated.stderr


def test_mapping_init_keeps_phone_numbers_and_zero_padded_codes_as_text(tmp_path: Path) -> None:
    """A starter mapping types +91… phones and 00123 codes as string, plain counts as integer."""
    source = write(
        tmp_path / "a.csv",
        """
        id,phone,code,count,ratio,joined
        1,+919876543210,00123,5,0.5,2024-03-01
        2,+14155550100,00456,7,1e3,2024-03-02
        """,
    )
    result = invoke("mapping", "init", source)
    assert result.exit_code == 0
    types = {
        p.column: p.type for p in load_mapping(write(tmp_path / "m.yaml", result.stdout)).properties
    }
    assert types == {
        "phone": "string",
        "code": "string",
        "count": "integer",
        "ratio": "number",
        "joined": "date",
    }


def test_mapping_schema_prints_json() -> None:
    """`mapping schema` prints the JSON Schema of mapping files on stdout."""
    result = invoke("mapping", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "fyno-import mapping"
    assert {"distinct_id", "properties", "source", "settings"} <= set(schema["properties"])


def test_mapping_check_accepts_a_good_mapping() -> None:
    """`mapping check FILE [SOURCE]` exits 0 and says the mapping is valid (for the source)."""
    result = invoke("mapping", "check", NIGHTLY)
    assert result.exit_code == 0 and "valid" in result.stderr
    result = invoke("mapping", "check", NIGHTLY, USERS_PARQUET)
    assert result.exit_code == 0 and f"valid for {USERS_PARQUET}" in result.stderr


def test_mapping_check_names_a_missing_column(tmp_path: Path) -> None:
    """`mapping check` with a source lacking a mapped column exits 2 naming the column."""
    mapping = write(
        tmp_path / "m.yaml",
        "distinct_id: user_id\nproperties:\n  - {column: loyalty_tier, op: set}\n",
    )
    assert invoke("mapping", "check", mapping).exit_code == 0
    result = invoke("mapping", "check", mapping, USERS_CSV)
    assert result.exit_code == 2 and "'loyalty_tier'" in result.stderr


def test_mapping_check_names_a_bad_key(tmp_path: Path) -> None:
    """`mapping check` of a mapping with an unknown key exits 2 naming key and line."""
    mapping = write(tmp_path / "m.yaml", "distinct_id: id\nproperty:\n  - {column: a, op: set}\n")
    result = invoke("mapping", "check", mapping)
    assert result.exit_code == 2
    assert f"{mapping}:2: property: unknown key" in result.stderr
