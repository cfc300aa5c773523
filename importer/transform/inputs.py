"""Where each mapped value comes from, resolved against one source's columns.

A property reads a source column, an expression (polars SQL) or a constant; the id is a column or
an expression; the filter is a condition. ``resolve`` checks each against the source's schema (an
expression names only columns the source has, can be evaluated on their types and gives one
value per row) and gives the transform, for each, the polars expression that reads it from a
batch, its type and how rejects name it. An expression is computed once per batch into a scratch
column, since it may be read in several places and polars' CSE does not reach inside nested
when/concat_str. ``Inputs.failing`` turns a polars error met on a batch into a MappingError that
names the key whose expression failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from importer.errors import MappingError
from importer.mapping import Mapping, PropertySpec
from importer.mapping.sql import parse_sql

CAST_HINT = (
    "CSV columns are text: convert them, e.g. CAST(balance AS DOUBLE), or TRY_CAST(balance AS "
    "DOUBLE), which gives null (a value left out) instead of failing on a bad cell"
)
_CONSTANT_TYPES: dict[type, pl.DataType] = {
    str: pl.String(),
    bool: pl.Boolean(),
    int: pl.Int64(),
    float: pl.Float64(),
}
_PROBE_ROWS = 2  # null rows an expression is tried on; an aggregate gives fewer


@dataclass(frozen=True, slots=True)
class Input:
    """One mapped value (or the filter), checked against a source's columns."""

    where: str  # its key, with file and line: "m.yaml:7: properties[2].expr"
    name: str  # the rejects file's `column`: the source column, else the property name
    label: str  # how reasons name it: "column email", "property tier (expr: …)"
    value: pl.Expr  # reads it from a batch (that has the scratch columns)
    dtype: pl.DataType
    compute: pl.Expr | None = None  # an expression, aliased to its scratch column


@dataclass(frozen=True, slots=True)
class Inputs:
    """Every value a mapping reads from one source, and its filter."""

    distinct_id: Input
    properties: list[Input]
    keep: Input | None  # the filter: the rows for which it is true are kept

    def computed(self) -> list[pl.Expr]:
        """The scratch columns of the id and property expressions (for after the filter)."""
        return [i.compute for i in (self.distinct_id, *self.properties) if i.compute is not None]

    def failing(self, batch: pl.DataFrame) -> MappingError | None:
        """The error of the first expression that cannot be evaluated on this batch, if any.

        Tried one by one, as the transform meets them: the filter on every row, the others on
        the rows it keeps. Called only after a batch failed, so it costs nothing otherwise.
        """
        frame = batch.lazy()
        if self.keep is not None:
            if (problem := _evaluation_error(frame, self.keep)) is not None:
                return problem
            frame = frame.filter(self.keep.value)
        for item in (self.distinct_id, *self.properties):
            if item.compute is not None and (problem := _evaluation_error(frame, item)) is not None:
                return problem
        return None


def _evaluation_error(frame: pl.LazyFrame, item: Input) -> MappingError | None:
    expr = item.compute if item.compute is not None else item.value
    try:
        frame.select(expr).collect()
    except pl.exceptions.PolarsError as exc:
        return MappingError(
            f"{item.where}: cannot be evaluated on the source's rows: {_first_line(exc)}",
            hint=CAST_HINT,
        )
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _probe(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A few null rows of the source's columns and types, to try expressions on."""
    return pl.DataFrame([pl.Series(c, [None] * _PROBE_ROWS, dtype=t) for c, t in schema.items()])


def _expression(where: str, sql: str, probe: pl.DataFrame) -> tuple[pl.Expr, pl.DataType]:
    """The parsed expression and its result type on the source's columns, or a MappingError."""
    expr = parse_sql(sql)
    reads = list(dict.fromkeys(expr.meta.root_names()))
    missing = [c for c in reads if c not in probe.columns]
    if missing:
        raise MappingError(
            f"{where}: names column(s) {', '.join(map(repr, missing))} that the source does not "
            f"have; its columns are: {', '.join(probe.columns)}",
            hint='column names are case-sensitive; quote one with spaces as "my column"',
        )
    try:
        out = probe.lazy().select(expr.alias("v")).collect()
    except pl.exceptions.PolarsError as exc:
        types = ", ".join(f"{c} is {probe.schema[c]}" for c in reads)
        raise MappingError(
            f"{where}: cannot be evaluated on the source's columns"
            + (f" ({types})" if types else "")
            + f": {_first_line(exc)}",
            hint=CAST_HINT,
        ) from None
    if reads and out.height != probe.height:
        raise MappingError(
            f"{where}: gives one value for many rows (an aggregate such as sum, max or count): "
            "an expression must compute each row's value from that row's columns"
        )
    return expr, out.schema["v"]


def _computed(
    where: str, sql: str, probe: pl.DataFrame, *, name: str, label: str, scratch: str
) -> Input:
    expr, dtype = _expression(where, sql, probe)
    return Input(where, name, label, pl.col(scratch), dtype, compute=expr.alias(scratch))


def _property(mapping: Mapping, index: int, spec: PropertySpec, probe: pl.DataFrame) -> Input:
    if spec.expr is not None:
        where = mapping.at("properties", index, "expr")
        return _computed(
            where, spec.expr, probe, name=spec.target, label=spec.label, scratch=f"__e{index}__"
        )
    if spec.value is not None:
        dtype = _CONSTANT_TYPES[type(spec.value)]
        where = mapping.at("properties", index, "value")
        return Input(where, spec.target, spec.label, pl.lit(spec.value, dtype=dtype), dtype)
    assert spec.column is not None  # the model gives every property exactly one source
    where = mapping.at("properties", index, "column")
    return Input(where, spec.column, spec.label, pl.col(spec.column), probe.schema[spec.column])


def resolve(mapping: Mapping, schema: dict[str, pl.DataType]) -> Inputs:
    """Check the mapping's values against a source's columns (plain columns already checked)."""
    probe = _probe(schema)
    if isinstance(mapping.distinct_id, str):
        column = mapping.distinct_id
        where = mapping.at("distinct_id")
        id_input = Input(where, column, f"column {column}", pl.col(column), schema[column])
    else:
        id_input = _computed(
            mapping.at("distinct_id", "expr"),
            mapping.distinct_id.expr,
            probe,
            name="distinct_id",
            label=mapping.distinct_id.label,
            scratch="__eid__",
        )
    keep = None
    if mapping.filter is not None:
        where = mapping.at("filter")
        expr, dtype = _expression(where, mapping.filter, probe)
        if dtype != pl.Boolean:
            raise MappingError(
                f"{where}: is not a condition: it gives {dtype}, not true or false",
                hint="compare, e.g. plan <> 'test' or TRY_CAST(balance AS DOUBLE) >= 0",
            )
        keep = Input(where, "filter", "filter", expr, dtype)
    properties = [_property(mapping, i, spec, probe) for i, spec in enumerate(mapping.properties)]
    return Inputs(distinct_id=id_input, properties=properties, keep=keep)
