"""Mapping tooling: a commented starter mapping from a file's columns, and checking a mapping."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from importer.errors import SourceError
from importer.mapping import load_mapping
from importer.sources import Format, Source, resolve_sources
from importer.transform import Transformer

_SAMPLE_ROWS = 1000
_ID_NAMES = ("distinct_id", "user_id", "userid", "customer_id", "id", "uid", "email")


def _one_source(arg: str, fmt: str | None) -> Source:
    sources, _ = resolve_sources([arg], format=fmt)  # type: ignore[arg-type]
    if not sources:
        raise SourceError(f"no CSV or Parquet file matches {arg}")
    return sources[0]


def _guess_type(series: pl.Series, fmt: Format) -> str:
    """The mapping type that fits a column, guessed from its polars type or its text."""
    dtype = series.dtype
    if fmt == "parquet" or dtype != pl.String:
        if dtype == pl.Boolean:
            return "boolean"
        if dtype.is_integer():
            return "integer"
        if dtype.is_float() or dtype.is_decimal():
            return "number"
        if dtype == pl.Date:
            return "date"
        if isinstance(dtype, pl.Datetime):
            return "datetime"
        if isinstance(dtype, (pl.List, pl.Array)):
            return "list"
        return "string"
    values = series.drop_nulls().str.strip_chars()
    values = values.filter(values != "")
    if values.len() == 0:
        return "string"
    checks = [
        ("boolean", r"(?i)^(true|false|yes|no|y|n|t|f)$"),
        ("integer", r"^[+-]?\d{1,18}$"),
        ("number", r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"),
        ("date", r"^\d{4}-\d\d-\d\d$"),
        ("datetime", r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([zZ]|[+-]\d\d:?\d\d)?$"),
    ]
    for name, pattern in checks:
        if values.str.contains(pattern).all():
            # ids with leading zeros are text, not numbers: 00123 must stay 00123
            if name in ("integer", "number") and values.str.contains(r"^0\d").any():
                return "string"
            return name
    return "string"


def starter_mapping(source_arg: str, *, fmt: str | None = None, id_column: str | None = None) -> str:
    """A commented YAML mapping listing every column of the source with `set` and a guessed type."""
    source = _one_source(source_arg, fmt)
    try:
        columns = source.columns()
        sample = source.scan().select(columns).head(_SAMPLE_ROWS).collect()
    finally:
        source.close()
    if id_column is None:
        lowered = {c.lower(): c for c in columns}
        id_column = next((lowered[n] for n in _ID_NAMES if n in lowered), columns[0])
    elif id_column not in columns:
        raise SourceError(f"{source.name}: no column {id_column!r}; columns: {', '.join(columns)}")
    lines = [
        f"# Starter mapping for {source.name}, written by `fyno-import mapping init`.",
        "# Every column is listed with op: set and a type guessed from the first",
        f"# {_SAMPLE_ROWS} rows. Review it: remove what should not be sent, pick the operator",
        "# (set | once | add | append | remove | unset) and check the types.",
        "# Then: fyno-import validate SOURCE -m THIS_FILE",
        f"distinct_id: {_yaml_scalar(id_column)}",
        "properties:",
    ]
    for column in columns:
        if column == id_column:
            continue
        vtype = _guess_type(sample[column], source.format)
        if vtype == "list" and source.format == "csv":
            vtype = "string"
        lines.append(f"  - column: {_yaml_scalar(column)}")
        lines.append("    op: set")
        lines.append(f"    type: {vtype}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(text: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", text) and text.lower() not in (
        "true", "false", "yes", "no", "null", "on", "off", "y", "n",
    ):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_mapping(path: Path, source_arg: str | None, fmt: str | None = None) -> str:
    """Validate a mapping file and, given a source, that every column it reads exists there."""
    mapping = load_mapping(path)
    if source_arg is None:
        return f"{path}: valid ({len(mapping.properties)} properties)"
    source = _one_source(source_arg, fmt)
    try:
        columns = source.columns()
        schema = source.scan().collect_schema()
        Transformer(mapping, {c: schema[c] for c in columns}, max_batch_bytes=mapping.settings.max_batch_bytes)
    finally:
        source.close()
    return f"{path}: valid for {source.name} ({len(mapping.properties)} properties)"
