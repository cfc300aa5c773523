"""Shared helpers for the foundation tests (mapping, sources, transform, chunker, CLI validate).

Kept out of conftest.py on purpose: import what a test needs with ``from helpers import …``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections.abc import Mapping as AnyMapping
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

from importer.mapping import Mapping
from importer.sources import ROW
from importer.transform import Transformer, TransformResult

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"
MAPPINGS = ROOT / "mappings"
MAPPING_FILES = sorted(MAPPINGS.glob("*.yaml"))
OPERATOR_NAMES = {"$set", "$once", "$add", "$append", "$remove", "$unset"}


def write(path: Path, text: str) -> Path:
    """Write dedented text to a file and return its path."""
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def tool(name: str, module_name: str) -> ModuleType:
    """tools/NAME.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def sample_generator() -> ModuleType:
    """tools/sample_data.py as a module (it holds BAD_CSV_ROWS / BAD_PARQUET_ROWS)."""
    return tool("sample_data", "sample_generate")


def ledger_docs() -> ModuleType:
    """tools/ledger_docs.py as a module: the examples of docs/ledger.md and their normaliser."""
    return tool("ledger_docs", "ledger_docs")


def mapping_of(
    properties: list[dict[str, Any]], distinct_id: str | dict[str, str] = "id", **extra: Any
) -> Mapping:
    """A validated mapping from plain property dicts."""
    return Mapping.model_validate({"distinct_id": distinct_id, "properties": properties, **extra})


def transform(
    properties: list[dict[str, Any]],
    data: AnyMapping[str, list[Any]] | pl.DataFrame,
    *,
    schema: AnyMapping[str, pl.DataType] | None = None,
    distinct_id: str | dict[str, str] = "id",
    max_batch_bytes: int = 1_000_000,
    **extra: Any,
) -> TransformResult:
    """Run one batch of rows (numbered from 1, as a source numbers them) through the transform;
    ``extra`` are further mapping keys (``filter``)."""
    if isinstance(data, pl.DataFrame):
        frame = data
    else:
        frame = pl.DataFrame(
            dict(data),
            schema=dict(schema) if schema else {k: pl.String for k in data},
            strict=False,
        )
    frame = frame.with_row_index(ROW, offset=1)
    columns = {c: frame.schema[c] for c in frame.columns if c != ROW}
    transformer = Transformer(
        mapping_of(properties, distinct_id, **extra), columns, max_batch_bytes=max_batch_bytes
    )
    return transformer.apply(frame)


def items(result: TransformResult) -> list[dict[str, Any]]:
    """The items of a transform result, decoded from their JSON."""
    return [json.loads(text) for text in result.items["item"].to_list()]


def actions(result: TransformResult) -> list[dict[str, Any]]:
    """Just the ``action`` object of each item."""
    return [item["action"] for item in items(result)]


def rejects(result: TransformResult) -> dict[int, dict[str, Any]]:
    """Rejected rows by row number: column, reason and decoded values."""
    return {
        row[ROW]: {
            "column": row["column"],
            "reason": row["reason"],
            "values": json.loads(row["values"]),
        }
        for row in result.rejects.iter_rows(named=True)
    }


def json_documents(text: str) -> list[Any]:
    """Every JSON document in a text that holds several one after another (as preview prints)."""
    decoder = json.JSONDecoder()
    out, index = [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return out
        value, index = decoder.raw_decode(text, index)
        out.append(value)


def check_item_shape(item: dict[str, Any]) -> None:
    """Assert an item has the shape fyno-api.md gives for a batch item."""
    assert set(item) == {"distinct_id", "action"}, item
    assert isinstance(item["distinct_id"], str) and item["distinct_id"], item
    assert item["distinct_id"] == item["distinct_id"].strip(" \t\n\r\x0b\x0c"), item
    action = item["action"]
    assert action and set(action) <= OPERATOR_NAMES, item
    for op, value in action.items():
        if op == "$unset":
            assert isinstance(value, list) and value, item
            assert all(isinstance(name, str) and name for name in value), item
            continue
        assert isinstance(value, dict) and value, item
        for prop, scalar in value.items():
            assert isinstance(prop, str) and prop, item
            if op == "$add":
                assert type(scalar) in (int, float), item
            elif op in ("$append", "$remove"):
                assert isinstance(scalar, (str, int, float, bool)), item
            else:
                assert scalar is not None, item
            if isinstance(scalar, str):
                assert len(scalar) <= 255, item
            if isinstance(scalar, list):
                assert all(isinstance(x, (str, int, float)) for x in scalar), item
                assert all(len(x) <= 255 for x in scalar if isinstance(x, str)), item


# The keys the contract's JSON summary holds at least (contract.md, "The summary").
CONTRACT_SUMMARY_KEYS = frozenset(
    {
        "run_id",
        "exit_code",
        "error",
        "rows_read",
        "rows_valid",
        "rows_rejected",
        "items_sent",
        "bytes_sent",
        "chunks_total",
        "chunks_accepted",
        "chunks_failed",
        "chunks_ambiguous",
        "chunks_skipped",
        "item_errors",
        "retries",
        "sources_skipped",
        "elapsed_s",
        "ledger",
        "rejects",
        "sources",
    }
)
