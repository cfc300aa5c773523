"""Mapping + a batch of source rows → Fyno batch items (already JSON) and rejects with reasons.

Everything here is a polars expression: no Python loop touches a row. For each mapped column
``_convert`` gives two expressions over the same input, the converted value and the reason it
is invalid (null when valid). The same function serves a plain cell and, inside ``list.eval``,
each piece of a ``split`` cell, so the value rules are written once.

Item JSON is assembled by string concatenation of per-property fragments (``"name":value``), so
a skipped property is left out instead of being sent as ``null`` (which ``json_encode`` would do).
Values are JSON-encoded by polars (``_json_value``), so escaping is polars' own.

A row becomes several items when it has ``append``/``remove`` columns with ``split``: item k
carries the k-th piece of each such column, and the first item also carries every other operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from importer.errors import MappingError
from importer.mapping import OPERATOR_KEYS, OPERATORS, Mapping, Operator, PropertySpec, ValueType
from importer.sources import ROW

MAX_STRING = 255  # Fyno's limit, in characters (code points)
BODY_OVERHEAD = len('{"batch":[]}')
_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
_MAX_I64 = 2.0**63
_SHOWN = 60  # characters of a bad value quoted in a reason

ITEM_SCHEMA = {
    ROW: pl.Int64,
    "distinct_id": pl.String,
    "item": pl.String,
    "nbytes": pl.Int64,
    "has_add": pl.Boolean,
}
REJECT_SCHEMA = {ROW: pl.Int64, "column": pl.String, "reason": pl.String, "values": pl.String}


@dataclass(frozen=True, slots=True)
class TransformResult:
    """One batch's valid items (in row, then piece order) and its rejected rows."""

    items: pl.DataFrame  # ITEM_SCHEMA
    rejects: pl.DataFrame  # REJECT_SCHEMA
    rows_valid: int


def default_type(spec: PropertySpec, dtype: pl.DataType | None) -> ValueType:
    """The effective value type of a mapped column: its ``type``, else guessed from the column."""
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


def _reason(column: str, value: pl.Expr, problem: str) -> pl.Expr:
    return pl.concat_str([pl.lit(f"column {column}: '"), _shown(value), pl.lit(f"' {problem}")])


def _json_value(value: pl.Expr) -> pl.Expr:
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
class _Converted:
    json: pl.Expr  # JSON text of the value; null when the input is null or invalid
    invalid: pl.Expr  # true when the value breaks a rule (null counts as false)
    reason: pl.Expr  # why, for a person; evaluated only on the rejected rows
    # Expensive intermediates (a parsed timestamp) that `json` and `invalid` read by name:
    # computed once per batch, since polars' CSE does not reach inside nested when/concat_str.
    prepared: tuple[tuple[str, pl.Expr], ...] = ()


def _prepare(expr: pl.Expr, scratch: str | None) -> tuple[pl.Expr, tuple[tuple[str, pl.Expr], ...]]:
    """Use ``expr`` through a scratch column when one is given (not inside ``list.eval``)."""
    if scratch is None:
        return expr, ()
    return pl.col(scratch), ((scratch, expr),)


def _convert(
    value: pl.Expr,
    dtype: pl.DataType,
    vtype: ValueType,
    spec: PropertySpec,
    scratch: str | None = None,
) -> _Converted:
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


def _convert_string(value: pl.Expr, dtype: pl.DataType, spec: PropertySpec) -> _Converted:
    if isinstance(dtype, pl.Datetime):
        text = _datetime_text(_to_utc_naive(value, dtype))
    else:
        text = value if dtype == pl.String else value.cast(pl.String)
    if spec.on_too_long == "truncate":
        return _Converted(
            _json_value(text.str.slice(0, MAX_STRING)), pl.lit(False), pl.lit(None, pl.String)
        )
    too_long = text.str.len_chars() > MAX_STRING
    problem = pl.concat_str(
        [
            pl.lit(f"column {spec.column}: "),
            text.str.len_chars().cast(pl.String),
            pl.lit(f" characters, over Fyno's {MAX_STRING} (or set on_too_long: truncate)"),
        ]
    )
    return _Converted(pl.when(~too_long).then(_json_value(text)), too_long, problem)


def _convert_numeric_column(
    value: pl.Expr, dtype: pl.DataType, *, integer: bool, spec: PropertySpec
) -> _Converted:
    """Integer, float and Decimal columns; Decimals go out as JSON numbers, never strings."""
    number = value.cast(pl.Float64) if dtype.is_decimal() else value
    finite = number.is_finite() if dtype.is_float() or dtype.is_decimal() else pl.lit(True)
    if integer and not dtype.is_integer():
        ok = finite & (number.floor() == number) & (number.abs() < _MAX_I64)
        out = number.cast(pl.Int64, strict=False).cast(pl.String)
        problem = "is not an integer"
    else:
        ok, out = finite, number.cast(pl.String)
        problem = "is not a finite number"
    return _Converted(pl.when(ok).then(out), ~ok, _reason(spec.column, value, problem))


def _convert_number_text(
    value: pl.Expr, dtype: pl.DataType, *, integer: bool, spec: PropertySpec, scratch: str | None
) -> _Converted:
    """Numbers written as text: no thousands separators, no NaN or infinity; 1e3 is 1000."""
    text = (value if dtype == pl.String else value.cast(pl.String)).str.strip_chars()
    shaped = text.str.contains(_NUMBER)
    as_float = text.cast(pl.Float64, strict=False)
    parsed: pl.Expr
    if integer:
        direct = text.str.to_integer(strict=False)
        whole = (as_float.floor() == as_float) & (as_float.abs() < _MAX_I64)
        via_float = pl.when(whole).then(as_float.cast(pl.Int64, strict=False))
        parsed = pl.when(shaped).then(pl.coalesce(direct, via_float))
        problem = "is not an integer"
    else:
        parsed = pl.when(shaped & as_float.is_finite()).then(as_float)
        problem = "is not a number"
    separated = text.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
    reason = (
        pl.when(separated)
        .then(_reason(spec.column, value, problem + " (no thousands separators)"))
        .otherwise(_reason(spec.column, value, problem))
    )
    parsed, prepared = _prepare(parsed, scratch)
    invalid = value.is_not_null() & parsed.is_null()
    return _Converted(parsed.cast(pl.String), invalid, reason, prepared)


def _convert_boolean(value: pl.Expr, dtype: pl.DataType, spec: PropertySpec) -> _Converted:
    if dtype == pl.Boolean:
        return _Converted(
            value.cast(pl.String).str.to_lowercase(), pl.lit(False), pl.lit(None, pl.String)
        )
    text = value.cast(pl.String).str.strip_chars().str.to_lowercase()
    parsed: pl.Expr = (
        pl.when(text.is_in(_TRUE))
        .then(pl.lit("true"))
        .when(text.is_in(_FALSE))
        .then(pl.lit("false"))
    )
    reason = _reason(spec.column, value, "is not a boolean (true/false, yes/no, y/n, t/f, 1/0)")
    return _Converted(parsed, value.is_not_null() & parsed.is_null(), reason)


def _convert_temporal(
    value: pl.Expr, dtype: pl.DataType, *, date_only: bool, spec: PropertySpec, scratch: str | None
) -> _Converted:
    """Dates out as 2024-03-01, datetimes as UTC with Z; typed Parquet columns used as they are."""
    if dtype == pl.Date:
        stamp = value.cast(pl.Datetime("us"))
    elif isinstance(dtype, pl.Datetime):
        stamp = _to_utc_naive(value, dtype)
    else:
        text = value.cast(pl.String).str.strip_chars()
        if date_only and spec.format is not None:
            stamp = text.str.to_date(spec.format, strict=False).cast(pl.Datetime("us"))
        else:
            stamp = _parse_datetime(text, spec.format)
    stamp, prepared = _prepare(stamp, scratch)
    kind = "date" if date_only else "datetime"
    layout = f" in format {spec.format}" if spec.format else " (ISO 8601, or set format:)"
    out = _quoted(stamp.dt.to_string("%Y-%m-%d")) if date_only else _quoted(_datetime_text(stamp))
    reason = _reason(spec.column, value, f"is not a {kind}{layout}")
    return _Converted(out, value.is_not_null() & stamp.is_null(), reason, prepared)


def _convert_list(value: pl.Expr, spec: PropertySpec) -> _Converted:
    """A Parquet list column (a split cell is handled by the caller)."""
    longest = value.list.eval(pl.element().cast(pl.String).str.len_chars()).list.max()
    too_long = longest.fill_null(0) > MAX_STRING
    problem = f"column {spec.column}: a list element is over Fyno's {MAX_STRING} characters"
    return _Converted(pl.when(~too_long).then(_json_value(value)), too_long, pl.lit(problem))


def _pieces(value: pl.Expr, split: str) -> pl.Expr:
    """A split cell's pieces: trimmed of whitespace, empty ones dropped, in order."""
    return (
        value.cast(pl.String)
        .str.split(split)
        .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
    )


@dataclass(frozen=True, slots=True)
class _Check:
    """One rule for one column: a cheap flag for every row, a reason only for rejected rows."""

    column: str
    invalid: pl.Expr
    reason: pl.Expr


@dataclass(frozen=True, slots=True)
class _Column:
    """One mapped column's contribution to a row: fragments for its operator, and errors."""

    spec: PropertySpec
    op: Operator
    checks: list[_Check]  # the rules this column's cell must pass
    prepared: tuple[tuple[str, pl.Expr], ...]  # scratch columns its expressions read
    fragment: pl.Expr | None  # `"name":value` for the first item (scalar columns), or null
    pieces: pl.Expr | None  # list of `"name":value` fragments, one per item (spreading columns)
    unset_names: pl.Expr | None  # JSON names (`"a","b"`) this column clears, or null


class Transformer:
    """Validates batches of one source's rows and builds their items, all in polars expressions."""

    def __init__(
        self, mapping: Mapping, schema: pl.Schema | dict[str, pl.DataType], *, max_batch_bytes: int
    ) -> None:
        self.mapping = mapping
        self.schema = dict(schema)
        self.max_item_bytes = max_batch_bytes - BODY_OVERHEAD
        missing = [c for c in mapping.columns if c not in self.schema]
        if missing:
            raise MappingError(
                f"the mapping reads column(s) {', '.join(map(repr, missing))} that the source "
                f"does not have; its columns are: {', '.join(self.schema)}"
            )
        self.types = {
            i: default_type(spec, self.schema[spec.column])
            for i, spec in enumerate(mapping.properties)
        }
        for i, spec in enumerate(mapping.properties):
            dtype = self.schema[spec.column]
            if (
                self.types[i] == "list"
                and spec.split is None
                and not isinstance(dtype, (pl.List, pl.Array))
            ):
                raise MappingError(
                    f"properties[{i}] (column {spec.column}): type list needs split: for a "
                    f"{dtype} column (a list column in Parquet needs none)"
                )
        self._columns = [self._column(spec, i) for i, spec in enumerate(mapping.properties)]
        self.spreading = any(c.pieces is not None for c in self._columns)

    # --- per-column expressions -----------------------------------------------------------

    def _column(self, spec: PropertySpec, index: int) -> _Column:
        dtype = self.schema[spec.column]
        vtype = self.types[index]
        raw = pl.col(spec.column)
        name_json = _json_str(spec.target)
        is_null = raw.is_null()
        if dtype == pl.String and vtype != "string":
            is_null = is_null | (raw.str.strip_chars() == "")
        checks: list[_Check] = []

        def check(invalid: pl.Expr, reason: pl.Expr) -> None:
            checks.append(_Check(spec.column, invalid, reason))

        def check_pieces(split: pl.Expr, piece: _Converted) -> None:
            """The row is invalid when any piece is; the reason is the first bad piece's."""
            reasons = split.list.eval(pl.when(piece.invalid).then(piece.reason))
            check(split.list.eval(piece.invalid).list.any(), reasons.list.drop_nulls().list.first())

        unset: list[pl.Expr] = []
        prepared: tuple[tuple[str, pl.Expr], ...] = ()
        if spec.on_null == "reject":
            check(is_null, pl.lit(f"column {spec.column}: empty (on_null: reject)"))
        elif spec.on_null == "unset" and spec.op != "unset":
            unset.append(pl.when(is_null).then(pl.lit(name_json)))

        fragment: pl.Expr | None = None
        pieces: pl.Expr | None = None
        if spec.op == "unset":
            if spec.split is not None:
                names = _pieces(raw, spec.split)
                too_long = names.list.eval(pl.element().str.len_chars()).list.max() > MAX_STRING
                check(
                    too_long,
                    pl.lit(f"column {spec.column}: a property name is over 255 characters"),
                )
                encoded = _json_value(names).str.slice(1).str.head(-1)
                unset.append(pl.when(names.list.len() > 0).then(encoded))
            else:
                flag = _convert(raw, dtype, "boolean", spec)
                check(~is_null & flag.invalid, flag.reason)
                unset.append(pl.when(flag.json == "true").then(pl.lit(name_json)))
        elif spec.split is not None and spec.op in ("append", "remove"):
            ptype: ValueType = "string" if vtype == "list" else vtype
            piece = _convert(pl.element(), pl.String(), ptype, spec)
            split = _pieces(raw, spec.split)
            check_pieces(split, piece)
            pieces = split.list.eval(pl.concat_str([pl.lit(name_json + ":"), piece.json]))
        elif spec.split is not None:  # a list for set/once, from a split cell
            piece = _convert(pl.element(), pl.String(), "string", spec)
            split = _pieces(raw, spec.split)
            check_pieces(split, piece)
            values = split.list.eval(pl.element().str.slice(0, MAX_STRING))
            fragment = pl.when(~is_null).then(
                pl.concat_str([pl.lit(name_json + ":"), _json_value(values)])
            )
        else:
            converted = _convert(raw, dtype, vtype, spec, scratch=f"__v{index}__")
            check(~is_null & converted.invalid, converted.reason)
            prepared = converted.prepared
            # a null value gives a null json, and concat_str passes the null on: property left out
            fragment = pl.concat_str([pl.lit(name_json + ":"), converted.json])

        return _Column(
            spec=spec,
            op=spec.op,
            checks=checks,
            prepared=prepared,
            fragment=fragment,
            pieces=pieces,
            unset_names=(
                _empty_to_null(pl.concat_str(unset, separator=",", ignore_nulls=True))
                if unset
                else None
            ),
        )

    def _distinct_id(self) -> tuple[pl.Expr, list[_Check]]:
        """The id as a trimmed string, and the checks that reject an unusable one."""
        name = self.mapping.distinct_id
        dtype = self.schema[name]
        raw = pl.col(name)
        text: pl.Expr
        unusable: pl.Expr
        too_large: pl.Expr = pl.lit(False)
        if dtype.is_decimal():
            # from the Decimal's own digits: a float has 53 bits, and a NUMBER(38,0) id such as
            # 1234567890123456789 must not become 1234567890123456768 (another profile)
            digits = raw.cast(pl.String)
            whole = digits.str.extract(r"^([+-]?\d+)(?:\.0*)?$", 1)
            text = whole.str.replace(r"^\+", "").str.replace(r"^-0+$", "0")
            unusable = raw.is_not_null() & whole.is_null()
        elif dtype.is_float():
            number = raw.cast(pl.Float64)
            whole = number.is_finite() & (number.floor() == number)
            too_large = raw.is_not_null() & whole & (number.abs() >= _MAX_I64)
            text = pl.when(whole & ~too_large).then(
                number.cast(pl.Int64, strict=False).cast(pl.String)
            )
            unusable = raw.is_not_null() & ~whole
        else:
            text = raw.cast(pl.String).str.strip_chars()
            unusable = pl.lit(False)
        missing = raw.is_null() | (raw.cast(pl.String).str.strip_chars() == "")
        checks = [
            _Check(name, missing, pl.lit(f"column {name}: distinct_id is empty")),
            _Check(
                name,
                ~missing & unusable,
                _reason(name, raw, "is not a usable distinct_id (not a whole number)"),
            ),
            _Check(
                name,
                ~missing & too_large,
                _reason(
                    name,
                    raw,
                    "is too large for a whole-number distinct_id (a float column holds it exactly "
                    "only below 2^63); export the id as text",
                ),
            ),
        ]
        empty = text.is_null() | (text == "")
        return pl.when(~empty).then(text), checks

    def distinct_ids(self, batch: pl.DataFrame) -> pl.Series:
        """Each row's distinct_id exactly as it would be sent (null where it is unusable)."""
        distinct_id, checks = self._distinct_id()
        bad = pl.any_horizontal([c.invalid.fill_null(False) for c in checks])
        return batch.select(pl.when(~bad).then(distinct_id).alias("distinct_id")).to_series()

    # --- a batch --------------------------------------------------------------------------

    def apply(self, batch: pl.DataFrame) -> TransformResult:
        """Validate one batch of rows (with ``__row__``) and build the items of its valid rows."""
        distinct_id, id_checks = self._distinct_id()
        checks = [*id_checks, *(k for c in self._columns for k in c.checks)]
        flags = [k.invalid.fill_null(False) for k in checks]
        frame = batch.lazy()
        prepared = [e.alias(name) for c in self._columns for name, e in c.prepared]
        if prepared:  # parsed once, then read by both the checks and the JSON fragments
            frame = frame.with_columns(prepared)
        checked = frame.with_columns(
            pl.any_horizontal(flags).alias("__bad__"),
            distinct_id.alias("__id__"),
            *(e.alias(name) for name, e in self._parts()),
        ).collect()
        bad = checked.filter(pl.col("__bad__"))
        good = checked.filter(~pl.col("__bad__"))
        items = self._items(good)
        # reasons are strings built per row: only for the (few) rejected rows
        rejects = bad.select(
            pl.col(ROW).cast(pl.Int64),
            pl.coalesce(
                [pl.when(f).then(pl.lit(k.column)) for f, k in zip(flags, checks, strict=True)]
            ).alias("column"),
            pl.concat_str(
                [pl.when(f).then(k.reason) for f, k in zip(flags, checks, strict=True)],
                separator="; ",
                ignore_nulls=True,
            ).alias("reason"),
            _original_values(batch).alias("values"),
        )
        oversize = items.filter(pl.col("nbytes") > self.max_item_bytes)
        if oversize.height:
            too_big = oversize.group_by(ROW).agg(pl.col("nbytes").max())
            items = items.filter(~pl.col(ROW).is_in(too_big[ROW].implode()))
            more = (
                batch.with_columns(pl.col(ROW).cast(pl.Int64))
                .join(too_big, on=ROW)
                .select(
                    pl.col(ROW),
                    pl.lit(self.mapping.distinct_id).alias("column"),
                    pl.format(
                        "the row's update is {} bytes of JSON, over the {} that --max-batch-bytes "
                        "allows",
                        pl.col("nbytes") + BODY_OVERHEAD,
                        pl.lit(self.max_item_bytes + BODY_OVERHEAD),
                    ).alias("reason"),
                    _original_values(batch).alias("values"),
                )
            )
            rejects = pl.concat([rejects, more]).sort(ROW)
        return TransformResult(
            items=items,
            rejects=rejects,
            rows_valid=good.height - (oversize[ROW].n_unique() if oversize.height else 0),
        )

    def _parts(self) -> list[tuple[str, pl.Expr]]:
        """Each column's JSON fragment (``__f``), split pieces (``__p``) and names to unset."""
        parts: list[tuple[str, pl.Expr]] = []
        for i, c in enumerate(self._columns):
            if c.fragment is not None:
                parts.append((f"__f{i}", c.fragment))
            if c.pieces is not None:
                parts.append((f"__p{i}", c.pieces))
            if c.unset_names is not None:
                parts.append((f"__u{i}", c.unset_names))
        return parts

    def _items(self, good: pl.DataFrame) -> pl.DataFrame:
        """Assemble item JSON from the checked rows' fragments; each operator object once."""
        frame = good.lazy().select(
            pl.col(ROW).cast(pl.Int64),
            pl.col("__id__").alias("distinct_id"),
            *(pl.col(name) for name, _ in self._parts()),
        )
        piece_cols = [f"__p{i}" for i, c in enumerate(self._columns) if c.pieces is not None]

        def first_item_only(expr: pl.Expr) -> pl.Expr:
            return pl.when(pl.col("__k") == 0).then(expr) if piece_cols else expr

        if piece_cols:
            count = pl.max_horizontal([pl.col(p).list.len() for p in piece_cols])
            frame = frame.with_columns(
                __k=pl.int_ranges(0, pl.max_horizontal(count, pl.lit(1)))
            ).explode("__k")

        by_op: dict[Operator, list[pl.Expr]] = {op: [] for op in OPERATORS}
        for i, c in enumerate(self._columns):
            if c.fragment is not None:
                by_op[c.op].append(first_item_only(pl.col(f"__f{i}")))
            if c.pieces is not None:
                by_op[c.op].append(pl.col(f"__p{i}").list.get(pl.col("__k"), null_on_oob=True))
            if c.unset_names is not None:
                by_op["unset"].append(first_item_only(pl.col(f"__u{i}")))
        used = [op for op in OPERATORS if by_op[op]]
        frame = frame.select(
            ROW,
            "distinct_id",
            *(
                _empty_to_null(pl.concat_str(by_op[op], separator=",", ignore_nulls=True)).alias(
                    f"__op_{op}"
                )
                for op in used
            ),
        )
        objects = []
        for op in used:
            opener, closer = ("[", "]") if op == "unset" else ("{", "}")
            key = pl.lit(f'"{OPERATOR_KEYS[op]}":{opener}')
            objects.append(pl.concat_str([key, pl.col(f"__op_{op}"), pl.lit(closer)]))
        action = _empty_to_null(pl.concat_str(objects, separator=",", ignore_nulls=True))
        item = pl.concat_str(
            [
                pl.lit('{"distinct_id":'),
                _json_value(pl.col("distinct_id")),
                pl.lit(',"action":{'),
                pl.col("__action"),
                pl.lit("}}"),
            ]
        )
        has_add = pl.col("__op_add").is_not_null() if "add" in used else pl.lit(False)
        return (
            frame.with_columns(__action=action)
            .filter(pl.col("__action").is_not_null())
            .select(ROW, "distinct_id", item.alias("item"), has_add.alias("has_add"))
            .with_columns(nbytes=pl.col("item").str.len_bytes().cast(pl.Int64))
            .select(ROW, "distinct_id", "item", "nbytes", "has_add")
            .collect()
        )


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _empty_to_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _original_values(batch: pl.DataFrame) -> pl.Expr:
    """The row's original cells as a JSON object (for the rejects file)."""
    cells = [
        pl.col(c).cast(pl.String) if batch.schema[c].is_decimal() else pl.col(c)
        for c in batch.columns
        if c != ROW and not c.startswith("__")
    ]
    return pl.struct(cells).struct.json_encode()
