"""The value rules: one cell (or split piece) → its JSON text, whether it breaks a rule, and why.

Everything is a polars expression. ``convert`` gives, for one mapped value and its type, the JSON
of the value (null when null or invalid), a cheap invalid flag, and a reason built only for the
rejected rows. The same function serves a plain cell and, inside ``list.eval``, each piece of a
``split`` cell, so each rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from importer.mapping import PropertySpec, ValueType

MAX_STRING = 255  # Fyno's limit, in characters (code points)
_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
MAX_I64 = 2.0**63
_USUAL_ISO = "%Y-%m-%dT%H:%M:%S%.fZ"
_USUAL_LENGTH = len("2024-03-01T10:00:00Z")
_SHOWN = 60  # characters of a bad value quoted in a reason


def xxh3(value: pl.Expr) -> pl.Expr:
    """A 64-bit xxh3 hash of each text value (null stays null), stable across polars versions
    (polars' own ``hash`` is not: the sync state and shard routing are kept across upgrades)."""
    import polars_hash  # noqa: F401  (registers the .nchash namespace on expressions)

    hashed: pl.Expr = value.nchash.xxh3_64()  # type: ignore[attr-defined]
    return hashed


def default_type(spec: PropertySpec, dtype: pl.DataType | None) -> ValueType:
    """The effective value type of a mapped value: its ``type``, else guessed from its polars type
    (a column's, an expression's result, a constant's)."""
    if spec.type is not None:
        return spec.type
    if spec.op == "add":
        return "integer" if dtype is not None and dtype.is_integer() else "number"
    if spec.op == "unset" and spec.split is None:
        return "boolean"
    if dtype is None or dtype == pl.String or spec.split is not None:
        return "list" if spec.split is not None and spec.op in ("set", "once") else "string"
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


def _shown(value: pl.Expr) -> pl.Expr:
    """A bad value as quoted in a reason, cut to a readable length."""
    text = value.cast(pl.String)
    cut = text.str.slice(0, _SHOWN)
    return pl.when(text.str.len_chars() > _SHOWN).then(cut + "…").otherwise(cut)


def reason_text(label: str, value: pl.Expr, problem: str) -> pl.Expr:
    """Why a value is rejected: ``column c: 'abc' is not a number`` (the label names its source)."""
    return pl.concat_str([pl.lit(f"{label}: '"), _shown(value), pl.lit(f"' {problem}")])


def json_value(value: pl.Expr) -> pl.Expr:
    """JSON text of a value (string, list, …), encoded by polars: ``{"v":X}`` minus the wrapper."""
    wrapped = pl.struct(value.alias("v")).struct.json_encode()
    # json_encode writes a null as `null`; a null must stay null so the property is left out
    return pl.when(value.is_not_null()).then(wrapped.str.slice(5).str.head(-1))


def _quoted(text: pl.Expr) -> pl.Expr:
    """JSON string of text known to need no escaping (dates, datetimes)."""
    return pl.lit('"') + text + pl.lit('"')


def _to_utc_naive(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return value.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return value


def _datetime_text(value: pl.Expr) -> pl.Expr:
    """UTC ``2024-03-01T10:00:00Z``, with ``.123`` milliseconds only when not zero."""
    base = value.dt.to_string("%Y-%m-%dT%H:%M:%S")
    millis = value.dt.millisecond().cast(pl.String).str.zfill(3)
    return (
        pl.when(value.dt.millisecond() != 0).then(base + "." + millis + "Z").otherwise(base + "Z")
    )


def _parse_datetime(text: pl.Expr, fmt: str | None) -> pl.Expr:
    """Parse ISO 8601 (or ``fmt``) to a naive UTC datetime; offsets are converted, naive is UTC."""

    def aware(pattern: str, source: pl.Expr) -> pl.Expr:
        parsed = source.str.to_datetime(pattern, strict=False, time_unit="us", time_zone="UTC")
        return parsed.dt.replace_time_zone(None)

    def naive(pattern: str, source: pl.Expr) -> pl.Expr:
        return source.str.to_datetime(pattern, strict=False, time_unit="us")

    if fmt is not None:
        return aware(fmt, text) if "%z" in fmt or "%:z" in fmt else naive(fmt, text)
    # Rewrite every ISO 8601 variant to one layout, then parse once: a few regex passes cost
    # far less than trying several parse formats on every value.
    canonical = (
        text.str.replace(r"^(\d{4}-\d\d-\d\d)[ tT]", "${1}T")
        .str.replace(r"^(\d{4}-\d\d-\d\d)$", "${1}T00:00:00")
        .str.replace(r"T(\d\d:\d\d)([-+zZ]|$)", "T${1}:00${2}")
        .str.replace(r"[zZ]$", "+00:00")
        .str.replace(r"([+-]\d\d):?(\d\d)?$", "${1}:${2}")
        .str.replace(r":$", ":00")
        .str.replace(r"(T[\d:.]+)$", "${1}+00:00")
    )
    return aware("%Y-%m-%dT%H:%M:%S%.f%:z", canonical)


@dataclass(frozen=True, slots=True)
class Converted:
    json: pl.Expr  # JSON text of the value; null when the input is null or invalid
    invalid: pl.Expr  # true when the value breaks a rule (null counts as false)
    reason: pl.Expr  # why, for a person; evaluated only on the rejected rows
    # Expensive intermediates (a parsed timestamp) that `json` and `invalid` read by name:
    # computed once per batch, since polars' CSE does not reach inside nested when/concat_str.
    prepared: tuple[tuple[str, pl.Expr], ...] = ()
    fallbacks: tuple[Fallback, ...] = ()


@dataclass(frozen=True, slots=True)
class Fallback:
    """A scratch column's second, slower way, for the rows its first way left null.

    polars evaluates every branch of a ``when`` over every row, so a cheap parse that reads
    nearly every value, then the full one on only the few rows it could not read, must be two
    steps on the frame: the transformer applies them (``Transformer._scratch``).
    """

    name: str
    missing: pl.Expr  # the rows the first way could not read, though they hold a value
    slow: pl.Expr  # the value by the second way, over the source's columns


def _prepare(expr: pl.Expr, scratch: str | None) -> tuple[pl.Expr, tuple[tuple[str, pl.Expr], ...]]:
    """Use ``expr`` through a scratch column when one is given (not inside ``list.eval``)."""
    if scratch is None:
        return expr, ()
    return pl.col(scratch), ((scratch, expr),)


def convert(
    value: pl.Expr,
    dtype: pl.DataType,
    vtype: ValueType,
    spec: PropertySpec,
    scratch: str | None = None,
) -> Converted:
    """Check and JSON-encode one cell (or split piece) by the mapping's value type."""
    if vtype == "string":
        return _convert_string(value, dtype, spec)
    if vtype in ("integer", "number"):
        if dtype.is_numeric():
            return _convert_numeric_column(value, dtype, integer=vtype == "integer", spec=spec)
        return _convert_number_text(
            value, dtype, integer=vtype == "integer", spec=spec, scratch=scratch
        )
    if vtype == "boolean":
        return _convert_boolean(value, dtype, spec)
    if vtype in ("date", "datetime"):
        return _convert_temporal(
            value, dtype, date_only=vtype == "date", spec=spec, scratch=scratch
        )
    return _convert_list(value, spec)


def _convert_string(value: pl.Expr, dtype: pl.DataType, spec: PropertySpec) -> Converted:
    if isinstance(dtype, pl.Datetime):
        text = _datetime_text(_to_utc_naive(value, dtype))
    else:
        text = value if dtype == pl.String else value.cast(pl.String)
    if spec.on_too_long == "truncate":
        return Converted(
            json_value(text.str.slice(0, MAX_STRING)), pl.lit(False), pl.lit(None, pl.String)
        )
    too_long = text.str.len_chars() > MAX_STRING
    problem = pl.concat_str(
        [
            pl.lit(f"{spec.label}: "),
            text.str.len_chars().cast(pl.String),
            pl.lit(f" characters, over Fyno's {MAX_STRING} (or set on_too_long: truncate)"),
        ]
    )
    return Converted(pl.when(~too_long).then(json_value(text)), too_long, problem)


def _convert_numeric_column(
    value: pl.Expr, dtype: pl.DataType, *, integer: bool, spec: PropertySpec
) -> Converted:
    """Integer, float and Decimal columns; Decimals go out as JSON numbers, never strings."""
    number = value.cast(pl.Float64) if dtype.is_decimal() else value
    finite = number.is_finite() if dtype.is_float() or dtype.is_decimal() else pl.lit(True)
    if integer and not dtype.is_integer():
        ok = finite & (number.floor() == number) & (number.abs() < MAX_I64)
        out = number.cast(pl.Int64, strict=False).cast(pl.String)
        problem = "is not an integer"
    else:
        ok, out = finite, number.cast(pl.String)
        problem = "is not a finite number"
    return Converted(pl.when(ok).then(out), ~ok, reason_text(spec.label, value, problem))


def _convert_number_text(
    value: pl.Expr, dtype: pl.DataType, *, integer: bool, spec: PropertySpec, scratch: str | None
) -> Converted:
    """Numbers written as text: no thousands separators, no NaN or infinity; 1e3 is 1000."""
    text = (value if dtype == pl.String else value.cast(pl.String)).str.strip_chars()
    shaped = text.str.contains(_NUMBER)
    as_float = text.cast(pl.Float64, strict=False)
    parsed: pl.Expr
    if integer:
        direct = text.str.to_integer(strict=False)
        whole = (as_float.floor() == as_float) & (as_float.abs() < MAX_I64)
        via_float = pl.when(whole).then(as_float.cast(pl.Int64, strict=False))
        parsed = pl.when(shaped).then(pl.coalesce(direct, via_float))
        problem = "is not an integer"
    else:
        parsed = pl.when(shaped & as_float.is_finite()).then(as_float)
        problem = "is not a number"
    separated = text.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
    reason = (
        pl.when(separated)
        .then(reason_text(spec.label, value, problem + " (no thousands separators)"))
        .otherwise(reason_text(spec.label, value, problem))
    )
    parsed, prepared = _prepare(parsed, scratch)
    invalid = value.is_not_null() & parsed.is_null()
    return Converted(parsed.cast(pl.String), invalid, reason, prepared)


def _convert_boolean(value: pl.Expr, dtype: pl.DataType, spec: PropertySpec) -> Converted:
    if dtype == pl.Boolean:
        return Converted(
            value.cast(pl.String).str.to_lowercase(), pl.lit(False), pl.lit(None, pl.String)
        )
    text = value.cast(pl.String).str.strip_chars().str.to_lowercase()
    parsed: pl.Expr = (
        pl.when(text.is_in(_TRUE))
        .then(pl.lit("true"))
        .when(text.is_in(_FALSE))
        .then(pl.lit("false"))
    )
    reason = reason_text(spec.label, value, "is not a boolean (true/false, yes/no, y/n, t/f, 1/0)")
    return Converted(parsed, value.is_not_null() & parsed.is_null(), reason)


def _convert_temporal(
    value: pl.Expr, dtype: pl.DataType, *, date_only: bool, spec: PropertySpec, scratch: str | None
) -> Converted:
    """Dates out as 2024-03-01, datetimes as UTC with Z; typed Parquet columns used as they are."""
    if dtype == pl.Date:
        stamp = value.cast(pl.Datetime("us"))
    elif isinstance(dtype, pl.Datetime):
        stamp = _to_utc_naive(value, dtype)
    else:
        text = value.cast(pl.String).str.strip_chars()
        if date_only and spec.format is not None:
            stamp = text.str.to_date(spec.format, strict=False).cast(pl.Datetime("us"))
        elif spec.format is None and scratch is not None:
            # The usual export writes 2024-03-01T10:00:00Z (or .123Z): one format reads it; the
            # rewriting of every other ISO 8601 variant runs only on the rows it could not read
            # (measured: 1.9 of 4.8 s of a 1.5M-row CSV's transform went to that rewriting).
            fast = text.str.to_datetime(_USUAL_ISO, strict=False, time_unit="us")
            missing = pl.col(scratch).is_null() & (text != "")
            fallback = Fallback(scratch, missing, _parse_datetime(text, None))
            stamp, prepared = _prepare(fast, scratch)
            if date_only:
                return _temporal_result(value, stamp, prepared, (fallback,), date_only, spec)
            return _usual_datetime(value, text, scratch, prepared, fallback, spec)
        else:
            stamp = _parse_datetime(text, spec.format)
    stamp, prepared = _prepare(stamp, scratch)
    return _temporal_result(value, stamp, prepared, (), date_only, spec)


def _usual_datetime(
    value: pl.Expr,
    text: pl.Expr,
    scratch: str,
    prepared: tuple[tuple[str, pl.Expr], ...],
    fallback: Fallback,
    spec: PropertySpec,
) -> Converted:
    """A text datetime read the usual way: a value already written as ``2024-03-01T10:00:00Z``
    is its own output (formatting every timestamp cost 0.28 s per 1.5M rows); the others are
    formatted, as a second step on their rows only."""
    written = f"{scratch}t"
    stamp = pl.col(scratch)
    usual = pl.when(stamp.is_not_null() & (text.str.len_bytes() == _USUAL_LENGTH)).then(text)
    formatted = Fallback(
        written, pl.col(written).is_null() & stamp.is_not_null(), _datetime_text(stamp)
    )
    reason = reason_text(spec.label, value, "is not a datetime (ISO 8601, or set format:)")
    return Converted(
        _quoted(pl.col(written)),
        value.is_not_null() & stamp.is_null(),
        reason,
        (*prepared, (written, usual)),
        (fallback, formatted),
    )


def _temporal_result(
    value: pl.Expr,
    stamp: pl.Expr,
    prepared: tuple[tuple[str, pl.Expr], ...],
    fallbacks: tuple[Fallback, ...],
    date_only: bool,
    spec: PropertySpec,
) -> Converted:
    kind = "date" if date_only else "datetime"
    layout = f" in format {spec.format}" if spec.format else " (ISO 8601, or set format:)"
    out = _quoted(stamp.dt.to_string("%Y-%m-%d")) if date_only else _quoted(_datetime_text(stamp))
    reason = reason_text(spec.label, value, f"is not a {kind}{layout}")
    return Converted(out, value.is_not_null() & stamp.is_null(), reason, prepared, fallbacks)


def _convert_list(value: pl.Expr, spec: PropertySpec) -> Converted:
    """A Parquet list column (a split cell is handled by the caller)."""
    longest = value.list.eval(pl.element().cast(pl.String).str.len_chars()).list.max()
    too_long = longest.fill_null(0) > MAX_STRING
    problem = f"{spec.label}: a list element is over Fyno's {MAX_STRING} characters"
    return Converted(pl.when(~too_long).then(json_value(value)), too_long, pl.lit(problem))


def split_pieces(value: pl.Expr, split: str) -> pl.Expr:
    """A split cell's pieces: trimmed of whitespace, empty ones dropped, in order."""
    return (
        value.cast(pl.String)
        .str.split(split)
        .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
    )
