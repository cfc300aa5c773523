"""Mapping tooling: a commented starter mapping from a file's columns, checking a mapping, and the
reference of every mapping key (the generated part of ``docs/mapping.md``).

``python -m importer.mapping.tools docs/mapping.md`` rewrites the generated reference in that
file from the pydantic model, so the documentation cannot drift from what ``load_mapping``
accepts (a test compares the two).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import polars as pl
from pydantic import BaseModel

from importer.config.settings import Settings
from importer.errors import SourceError
from importer.mapping import ComputedId, Mapping, PropertySpec, SourceOptions, load_mapping
from importer.sources import Format, Source, resolve_sources
from importer.transform import Transformer

_SAMPLE_ROWS = 1000
_ID_NAMES = ("distinct_id", "user_id", "userid", "customer_id", "id", "uid", "email")
_LIST_SEPARATORS = (";", "|")
_OTHER_DELIMITERS = (";", "\t", "|")
_MISFIT_SHARE = 0.01
_TEXT_TYPES = (
    ("boolean", r"(?i)^(true|false|yes|no|y|n|t|f)$"),
    ("integer", r"^[+-]?\d{1,18}$"),
    ("number", r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"),
    ("date", r"^\d{4}-\d\d-\d\d$"),
    ("datetime", r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([zZ]|[+-]\d\d:?\d\d)?$"),
)


def _one_source(arg: str, fmt: str | None, options: SourceOptions | None = None) -> Source:
    sources, _ = resolve_sources([arg], format=fmt, options=options)  # type: ignore[arg-type]
    if not sources:
        raise SourceError(f"no CSV or Parquet file matches {arg}")
    return sources[0]


@dataclass(frozen=True)
class TypeGuess:
    """A column's guessed mapping type, and the sampled values that would not fit it."""

    type: str
    misfits: int = 0
    misfit_example: str | None = None


def _guess_type(series: pl.Series, fmt: Format) -> TypeGuess:
    """The mapping type that fits a column, from its polars type or its text.

    A text type is chosen when at least 99% of the sampled non-empty cells fit it: an export's
    stray bad cell (``abc`` in a number column) should not turn the column into text, since
    ``validate`` reports such rows.
    """
    dtype = series.dtype
    if fmt == "parquet" or dtype != pl.String:
        if dtype == pl.Boolean:
            return TypeGuess("boolean")
        if dtype.is_integer():
            return TypeGuess("integer")
        if dtype.is_float() or dtype.is_decimal():
            return TypeGuess("number")
        if dtype == pl.Date:
            return TypeGuess("date")
        if isinstance(dtype, pl.Datetime):
            return TypeGuess("datetime")
        if isinstance(dtype, (pl.List, pl.Array)):
            return TypeGuess("list")
        return TypeGuess("string")
    values = series.drop_nulls().str.strip_chars()
    values = values.filter(values != "")
    if values.len() == 0:
        return TypeGuess("string")
    for name, pattern in _TEXT_TYPES:
        fits = values.str.contains(pattern)
        misfits = values.len() - int(fits.sum())
        if misfits > values.len() * _MISFIT_SHARE:
            continue
        # ids with leading zeros and phone numbers with a leading + are text, not numbers:
        # 00123 must stay 00123, +919876543210 must keep its +
        if name in ("integer", "number") and values.str.contains(r"^(?:0\d|\+)").any():
            return TypeGuess("string")
        example = values.filter(~fits)[0] if misfits else None
        return TypeGuess(name, misfits, example)
    return TypeGuess("string")


def _list_separator(series: pl.Series) -> str | None:
    """A separator that splits many of a text column's cells (``a;b``), if there is one."""
    if series.dtype != pl.String:
        return None
    values = series.drop_nulls()
    values = values.filter(values.str.strip_chars() != "")
    if values.len() == 0:
        return None
    for separator in _LIST_SEPARATORS:
        share = values.str.contains(separator, literal=True).mean()
        if share is not None and float(share) >= 0.1:  # type: ignore[arg-type]
            return separator
    return None


def _example(series: pl.Series) -> str | None:
    """A short sample value for the comment beside a column."""
    values = series.drop_nulls()
    if values.dtype == pl.String:
        values = values.filter(values.str.strip_chars() != "")
    if values.len() == 0:
        return None
    text = " ".join(str(values[0]).split())
    return json.dumps(text[:40] + ("…" if len(text) > 40 else ""), ensure_ascii=False)


def _sniff_delimiter(source: Source) -> str | None:
    """For a local CSV whose header has a single column, the delimiter it seems to use."""
    if source.remote or source.format != "csv" or source.options.delimiter:
        return None
    opener = gzip.open if source.name.lower().endswith(".gz") else open
    try:
        with opener(source.name, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
            header = next(csv.reader(f, delimiter=source.delimiter), [])
    except (OSError, EOFError):
        return None
    if len(header) != 1:
        return None
    return next((d for d in _OTHER_DELIMITERS if d in header[0]), None)


def _read_sample(source_arg: str, fmt: str | None) -> tuple[Source, list[str], pl.DataFrame]:
    """The source, its columns and its first rows, trying Latin-1 and other delimiters for a
    CSV the defaults cannot read."""
    source = _one_source(source_arg, fmt)
    options = SourceOptions()
    delimiter = _sniff_delimiter(source)
    if delimiter is not None:
        options = SourceOptions(delimiter=delimiter)
        source = _one_source(source_arg, fmt, options)
    try:
        return source, *_columns_and_rows(source)
    except SourceError as exc:
        if source.format != "csv" or "not valid UTF-8" not in str(exc):
            raise
    source = _one_source(source_arg, fmt, options.model_copy(update={"encoding": "latin1"}))
    return source, *_columns_and_rows(source)


def _columns_and_rows(source: Source) -> tuple[list[str], pl.DataFrame]:
    """The columns and the first rows, read as ``run`` reads them (errors name the file)."""
    try:
        columns = source.columns()
        batches: list[pl.DataFrame] = []
        for batch in source.batches(columns, _SAMPLE_ROWS):
            batches.append(batch)
            if sum(b.height for b in batches) >= _SAMPLE_ROWS:
                break
        sample = pl.concat(batches) if batches else pl.DataFrame()
        return columns, sample.select(columns).head(_SAMPLE_ROWS) if batches else sample
    finally:
        source.close()


def starter_mapping(
    source_arg: str,
    *,
    fmt: str | None = None,
    id_column: str | None = None,
    mapping_name: str | None = None,
) -> str:
    """A commented YAML mapping listing every column of the source with `set` and a guessed type.

    The result always loads with ``load_mapping``; comments carry a sample value per column and
    hints (a column that looks like a list, empty cells), and the ``source:`` and ``settings:``
    keys with their defaults, commented out.
    """
    source, columns, sample = _read_sample(source_arg, fmt)
    if id_column is None:
        lowered = {c.lower(): c for c in columns}
        id_column = next((lowered[n] for n in _ID_NAMES if n in lowered), columns[0])
    elif id_column not in columns:
        raise SourceError(f"{source.name}: no column {id_column!r}; columns: {', '.join(columns)}")
    rows = sample.height
    lines = [
        f"# Starter mapping for {source.name}, written by `fyno-import mapping init`.",
        f"# Every column is listed with op: set and a type guessed from the first {rows:,} rows.",
        "# Review it: delete what should not be sent, pick each operator",
        "#   set (overwrite) | once (first value wins) | add (a number to add)",
        "#   append / remove (list items; with split: one per piece) | unset (clear)",
        "# and check the types: string | integer | number | boolean | date | datetime | list.",
        "# Empty cells are left out (on_null: skip); on_null: unset clears the property instead.",
        '# Instead of column:, a property may be computed, e.g. expr: "lower(email)" (polars SQL',
        "#   over the columns; CSV cells are text: CAST(x AS DOUBLE), or TRY_CAST, for numbers),",
        "#   or a constant, e.g. value: warehouse; both need property: (the Fyno name).",
        "# A top-level filter: \"plan <> 'test'\" sends only the rows for which it is true.",
        "# Every key is explained in docs/mapping.md; for completion in your editor:",
        "#   fyno-import mapping schema > fyno-import.schema.json",
        "# yaml-language-server: $schema=fyno-import.schema.json",
        "# Then try it (sends nothing):",
        f"#   fyno-import validate {source_arg} -m {mapping_name or 'THIS_FILE'}",
        f"#   fyno-import preview {source_arg} -m {mapping_name or 'THIS_FILE'} -n 2",
        "",
        _with_comment(f"distinct_id: {_yaml_scalar(id_column)}", sample[id_column], rows),
        "properties:",
    ]
    for column in columns:
        if column == id_column:
            continue
        series = sample[column]
        guess = _guess_type(series, source.format)
        vtype = "string" if guess.type == "list" and source.format == "csv" else guess.type
        lines.append(_with_comment(f"  - column: {_yaml_scalar(column)}", series, rows))
        lines.append("    op: set")
        lines.append(f"    type: {vtype}")
        if guess.misfits:
            lines.append(
                f"    # {guess.misfits} sampled value(s) are not {vtype}, e.g. "
                f"{json.dumps(guess.misfit_example, ensure_ascii=False)}: validate rejects them"
            )
        separator = _list_separator(series) if vtype == "string" else None
        if separator is not None:
            lines.append(f'    # looks like a list: op: append with split: "{separator}" appends')
            lines.append(f'    # each piece; type: list with split: "{separator}" sets the list')
        if rows and series.null_count() == rows:
            lines.append("    # empty in every sampled row: drop it unless later rows fill it")
    lines += ["", *_source_block(source), "", *_settings_block()]
    return "\n".join(lines) + "\n"


def _with_comment(line: str, series: pl.Series, rows: int) -> str:
    """The line, and a comment with a sample value and how often the column is empty."""
    parts = []
    example = _example(series)
    if example is not None:
        parts.append(f"e.g. {example}")
    empty = series.null_count()
    if series.dtype == pl.String:
        empty += int((series.drop_nulls().str.strip_chars() == "").sum())
    if empty:
        parts.append(f"empty in {empty:,} of {rows:,} rows")
    return f"{line:<34}  # {'; '.join(parts)}" if parts else line


def _source_block(source: Source) -> list[str]:
    options = source.options
    if source.format == "parquet":
        return [
            "# source:                       # reader options, for object stores only here:",
            "#   storage_options: {}         # e.g. {aws_region: eu-west-1}; else the environment",
        ]
    set_here = options.delimiter is not None or options.encoding != "utf8"
    prefix = "" if set_here else "# "
    lines = [f"{prefix}source:" + ("" if set_here else "                        # CSV reader")]
    delimiter = options.delimiter or source.delimiter
    lines.append(f"{prefix}  delimiter: {json.dumps(delimiter)}")
    lines.append(f"{prefix}  null_values: {json.dumps(list(options.null_values))}")
    lines.append(f"{prefix}  encoding: {options.encoding}" + ("   # utf8 | latin1"))
    if set_here:
        lines.append("  # (mapping init found these reading the file)")
    return lines


def _settings_block() -> list[str]:
    lines = ["# settings:                      # defaults for run options; the command line wins"]
    for name, value in Settings().model_dump(mode="json").items():
        lines.append(f"#   {name}: {json.dumps(value)}")
    return lines


def _yaml_scalar(text: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", text) and text.lower() not in (
        "true",
        "false",
        "yes",
        "no",
        "null",
        "on",
        "off",
        "y",
        "n",
    ):
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def check_mapping(path: Path, source_arg: str | None, fmt: str | None = None) -> str:
    """Validate a mapping file and, given a source, that every column it reads exists there."""
    mapping = load_mapping(path)
    if source_arg is None:
        return f"{path}: valid ({len(mapping.properties)} properties)"
    source = _one_source(source_arg, fmt, mapping.source)
    try:
        columns = source.columns()
        schema = source.scan().collect_schema()
        Transformer(
            mapping,
            {c: schema[c] for c in columns},
            max_batch_bytes=mapping.settings.max_batch_bytes,
        )
    finally:
        source.close()
    message = f"{path}: valid for {source.name} ({len(mapping.properties)} properties)"
    unmapped = [c for c in columns if c not in mapping.columns]
    if unmapped:
        message += f"\ncolumns not mapped (not sent): {', '.join(unmapped)}"
    return message


# --- the key reference of docs/mapping.md ---------------------------------------------------

BEGIN_MARK = "<!-- BEGIN GENERATED: python -m importer.mapping.tools docs/mapping.md -->"
END_MARK = "<!-- END GENERATED -->"
_SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("Top level", Mapping, "The keys of a mapping file."),
    (
        "`properties:` entries",
        PropertySpec,
        "Each entry sends one value to one Fyno property through one operator. The value comes "
        "from exactly one of `column`, `expr` and `value`; `property` is required with the last "
        "two.",
    ),
    (
        "`distinct_id: {expr: …}`",
        ComputedId,
        "The id computed from the source's columns instead of read from one of them.",
    ),
    ("`source:`", SourceOptions, "How the sources are read; every key is optional."),
    (
        "`settings:`",
        Settings,
        "Defaults for the `run` options of the same name (`batch_size` is `--batch-size`); "
        "the command line wins.",
    ),
)
_NESTED = {
    "properties": ("list of property entries (below), at least one", "the mapped values"),
    "source": ("reader options (below)", "how the files are read"),
    "settings": ("run settings (below)", "defaults for `run` options"),
}


def _type_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_text(get_args(annotation)[0])
    if annotation is ComputedId:
        return "`{expr: …}` (below)"
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(a) for a in get_args(annotation) if a is not type(None))
    if origin is list:
        return f"list of {_type_text(get_args(annotation)[0])}"
    if origin is dict:
        return "map of text to text"
    return {str: "text", int: "integer", float: "number", bool: "`true` \\| `false`"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _limits(metadata: list[Any]) -> str:
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.MaxLen) and item.max_length == 1:
            words.append("one character")
    return f", {' and '.join(words)}" if words else ""


def _default_text(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    if name in _NESTED:
        return "all defaults"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    return f"`{json.dumps(value)}`"


def reference_markdown() -> str:
    """Every key of the mapping model as Markdown tables: type, default and meaning."""
    out = [
        BEGIN_MARK,
        "",
        "This reference is generated from the mapping model (`importer/mapping/model.py`); "
        "`fyno-import mapping schema` prints the same model as JSON Schema.",
    ]
    for title, model, intro in _SECTIONS:
        out += ["", f"### {title}", "", intro, ""]
        out += ["| key | value | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if name in _NESTED and model is Mapping:
                value, meaning = _NESTED[name]
            else:
                value = _type_text(field.annotation) + _limits(field.metadata)
                meaning = (field.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {value} | {_default_text(model, name)} | {meaning} |")
    out += ["", END_MARK]
    return "\n".join(out)


def update_reference(path: Path) -> bool:
    """Rewrite the generated block of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN_MARK), text.index(END_MARK) + len(END_MARK)
    new = text[:start] + reference_markdown() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        update_reference(Path(argument))
