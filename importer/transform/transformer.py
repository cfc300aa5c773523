"""Mapping + a batch of source rows → Fyno batch items (already JSON) and rejects with reasons.

Everything here is a polars expression: no Python loop touches a row. For each mapped column
``convert`` gives two expressions over the same input, the converted value and the reason it
is invalid (null when valid). The same function serves a plain cell and, inside ``list.eval``,
each piece of a ``split`` cell, so the value rules are written once.

Item JSON is assembled by string concatenation of per-property fragments (``"name":value``), so
a skipped property is left out instead of being sent as ``null`` (which ``json_encode`` would do).
Values are JSON-encoded by polars (``json_value``), so escaping is polars' own.

A row becomes several items when it has ``append``/``remove`` columns with ``split``: item k
carries the k-th piece of each such column, and the first item also carries every other operator.

A value computed by an expression, or a constant, goes through exactly the same rules as a column
(``inputs`` resolves where each value comes from). The mapping's ``filter`` drops rows before
anything else is evaluated, so an expression never meets a row the filter left out.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from importer.errors import MappingError
from importer.mapping import OPERATOR_KEYS, OPERATORS, Mapping, Operator, PropertySpec, ValueType
from importer.sources import RAGGED, RAGGED_COLUMN, ROW
from importer.transform.inputs import Inputs, resolve
from importer.transform.values import (
    MAX_I64,
    MAX_STRING,
    Converted,
    Fallback,
    convert,
    default_type,
    json_value,
    reason_text,
    split_pieces,
    xxh3,
)

BODY_OVERHEAD = len('{"batch":[]}')

ITEM_SCHEMA = {
    ROW: pl.Int64,
    "distinct_id": pl.String,
    "item": pl.String,
    "nbytes": pl.Int64,
    "has_add": pl.Boolean,
    "id_json": pl.String,  # the distinct_id as JSON text, as the item carries it
}
REJECT_SCHEMA = {ROW: pl.Int64, "column": pl.String, "reason": pl.String, "values": pl.String}


@dataclass(frozen=True, slots=True)
class TransformResult:
    """One batch's valid items (in row, then piece order), its rejected rows, and how many rows
    the mapping's filter left out (neither valid nor rejected)."""

    items: pl.DataFrame  # ITEM_SCHEMA
    rejects: pl.DataFrame  # REJECT_SCHEMA
    rows_valid: int
    rows_filtered: int = 0
    # incremental sync: per valid row, a hash of what each property adds (``contributions``)
    contributions: pl.DataFrame | None = None
    rows_unchanged: int = 0  # valid rows that, masked by ``keep``, send nothing


@dataclass(frozen=True, slots=True)
class _Check:
    """One rule for one value: a cheap flag for every row, a reason only for rejected rows."""

    column: str  # the rejects file's `column`
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
    fallbacks: tuple[Fallback, ...] = ()  # scratch columns' slower second ways


class Transformer:
    """Validates batches of one source's rows and builds their items, all in polars expressions."""

    def __init__(
        self, mapping: Mapping, schema: pl.Schema | dict[str, pl.DataType], *, max_batch_bytes: int
    ) -> None:
        self.mapping = mapping
        self.schema = dict(schema)
        self.max_item_bytes = max_batch_bytes - BODY_OVERHEAD
        plain = [mapping.id_column, *(spec.column for spec in mapping.properties)]
        missing = list(dict.fromkeys(c for c in plain if c is not None and c not in self.schema))
        if missing:
            raise MappingError(
                f"the mapping reads column(s) {', '.join(map(repr, missing))} that the source "
                f"does not have; its columns are: {', '.join(self.schema)}"
            )
        self.inputs: Inputs = resolve(mapping, self.schema)
        self.types = {
            i: default_type(spec, self.inputs.properties[i].dtype)
            for i, spec in enumerate(mapping.properties)
        }
        for i, spec in enumerate(mapping.properties):
            dtype = self.inputs.properties[i].dtype
            if (
                self.types[i] == "list"
                and spec.split is None
                and not isinstance(dtype, (pl.List, pl.Array))
            ):
                raise MappingError(
                    f"properties[{i}] ({spec.label}): type list needs split: for a "
                    f"{dtype} value (a list column in Parquet needs none)"
                )
        self._columns = [self._column(spec, i) for i, spec in enumerate(mapping.properties)]
        self._check_constants()
        self.spreading = any(c.pieces is not None for c in self._columns)

    # --- per-column expressions -----------------------------------------------------------

    def _column(self, spec: PropertySpec, index: int) -> _Column:
        source = self.inputs.properties[index]
        dtype, raw = source.dtype, source.value
        vtype = self.types[index]
        name_json = _json_str(spec.target)
        is_null = raw.is_null()
        if dtype == pl.String and vtype != "string":
            is_null = is_null | (raw.str.strip_chars() == "")
        checks: list[_Check] = []

        def check(invalid: pl.Expr, reason: pl.Expr) -> None:
            checks.append(_Check(source.name, invalid, reason))

        def check_pieces(split: pl.Expr, piece: Converted) -> None:
            """The row is invalid when any piece is; the reason is the first bad piece's."""
            reasons = split.list.eval(pl.when(piece.invalid).then(piece.reason))
            check(split.list.eval(piece.invalid).list.any(), reasons.list.drop_nulls().list.first())

        unset: list[pl.Expr] = []
        prepared: tuple[tuple[str, pl.Expr], ...] = ()
        fallbacks: tuple[Fallback, ...] = ()
        if spec.on_null == "reject":
            check(is_null, pl.lit(f"{spec.label}: empty (on_null: reject)"))
        elif spec.on_null == "unset" and spec.op != "unset":
            unset.append(pl.when(is_null).then(pl.lit(name_json)))

        fragment: pl.Expr | None = None
        pieces: pl.Expr | None = None
        if spec.op == "unset":
            if spec.split is not None:
                names = split_pieces(raw, spec.split)
                too_long = names.list.eval(pl.element().str.len_chars()).list.max() > MAX_STRING
                check(
                    too_long,
                    pl.lit(f"{spec.label}: a property name is over 255 characters"),
                )
                encoded = json_value(names).str.slice(1).str.head(-1)
                unset.append(pl.when(names.list.len() > 0).then(encoded))
            else:
                flag = convert(raw, dtype, "boolean", spec)
                check(~is_null & flag.invalid, flag.reason)
                unset.append(pl.when(flag.json == "true").then(pl.lit(name_json)))
        elif spec.split is not None and spec.op in ("append", "remove"):
            ptype: ValueType = "string" if vtype == "list" else vtype
            piece = convert(pl.element(), pl.String(), ptype, spec)
            split = split_pieces(raw, spec.split)
            check_pieces(split, piece)
            pieces = split.list.eval(pl.concat_str([pl.lit(name_json + ":"), piece.json]))
        elif spec.split is not None:  # a list for set/once, from a split cell
            piece = convert(pl.element(), pl.String(), "string", spec)
            split = split_pieces(raw, spec.split)
            check_pieces(split, piece)
            values = split.list.eval(pl.element().str.slice(0, MAX_STRING))
            fragment = pl.when(~is_null).then(
                pl.concat_str([pl.lit(name_json + ":"), json_value(values)])
            )
        else:
            converted = convert(raw, dtype, vtype, spec, scratch=f"__v{index}__")
            check(~is_null & converted.invalid, converted.reason)
            prepared, fallbacks = converted.prepared, converted.fallbacks
            # a null value gives a null json, and concat_str passes the null on: property left out
            fragment = pl.concat_str([pl.lit(name_json + ":"), converted.json])

        return _Column(
            spec=spec,
            op=spec.op,
            checks=checks,
            prepared=prepared,
            fallbacks=fallbacks,
            fragment=fragment,
            pieces=pieces,
            unset_names=(
                _empty_to_null(pl.concat_str(unset, separator=",", ignore_nulls=True))
                if unset
                else None
            ),
        )

    def _check_constants(self) -> None:
        """A constant that breaks its own rules would reject every row: refuse the mapping."""
        for column, source in zip(self._columns, self.inputs.properties, strict=True):
            if column.spec.value is None or not column.checks:
                continue
            frame = _scratch(pl.LazyFrame({ROW: [1]}), [column])
            flags = [k.invalid.fill_null(False) for k in column.checks]
            found = frame.select(_reasons(flags, column.checks)).collect().item()
            if found:
                raise MappingError(f"{source.where}: {found}")

    def _distinct_id(self) -> tuple[pl.Expr, list[_Check]]:
        """The id as a trimmed string, and the checks that reject an unusable one."""
        source = self.inputs.distinct_id
        name, label, dtype, raw = source.name, source.label, source.dtype, source.value
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
            too_large = raw.is_not_null() & whole & (number.abs() >= MAX_I64)
            text = pl.when(whole & ~too_large).then(
                number.cast(pl.Int64, strict=False).cast(pl.String)
            )
            unusable = raw.is_not_null() & ~whole
        else:
            text = raw.cast(pl.String).str.strip_chars()
            unusable = pl.lit(False)
        missing = raw.is_null() | (raw.cast(pl.String).str.strip_chars() == "")
        checks = [
            _Check(name, missing, pl.lit(f"{label}: distinct_id is empty")),
            _Check(
                name,
                ~missing & unusable,
                reason_text(label, raw, "is not a usable distinct_id (not a whole number)"),
            ),
            _Check(
                name,
                ~missing & too_large,
                reason_text(
                    label,
                    raw,
                    "is too large for a whole-number distinct_id (a float column holds it exactly "
                    "only below 2^63); export the id as text",
                ),
            ),
        ]
        empty = text.is_null() | (text == "")
        return pl.when(~empty).then(text), checks

    def distinct_ids(self, batch: pl.DataFrame) -> pl.Series:
        """Each row's distinct_id exactly as it would be sent (null where it is unusable, and
        where the mapping's filter leaves the row out)."""
        distinct_id, checks = self._distinct_id()
        bad = pl.any_horizontal([c.invalid.fill_null(False) for c in checks])
        keep, compute = self.inputs.keep, self.inputs.distinct_id.compute
        with self._naming_failures(batch):
            kept, rows = batch, None
            if keep is not None:  # the id is computed only where the filter keeps the row
                mask = batch.select(keep.value.fill_null(False)).to_series()
                kept, rows = batch.filter(mask), mask.arg_true()
            frame = kept.lazy() if compute is None else kept.lazy().with_columns(compute)
            ids = frame.select(pl.when(~bad).then(distinct_id).alias("distinct_id")).collect()
        if rows is None:
            return ids.to_series()
        blank = pl.Series("distinct_id", [None] * batch.height, dtype=pl.String)
        return blank.scatter(rows, ids.to_series())

    @contextlib.contextmanager
    def _naming_failures(self, batch: pl.DataFrame) -> Iterator[None]:
        """A polars error from an expression of the mapping becomes a MappingError naming it."""
        try:
            yield
        except pl.exceptions.PolarsError:
            problem = self.inputs.failing(batch)
            if problem is None:
                raise  # not the mapping's expressions: a failure of the transform itself
            raise problem from None

    # --- a batch --------------------------------------------------------------------------

    def apply(
        self, batch: pl.DataFrame, *, keep: pl.DataFrame | None = None, contribute: bool = False
    ) -> TransformResult:
        """Validate one batch of rows (with ``__row__``) and build the items of its valid rows;
        rows the mapping's filter leaves out are only counted.

        Incremental sync: ``contribute`` adds each valid row's per-property hashes; ``keep``
        (``distinct_id`` and a boolean ``s<i>`` per property) sends only those properties of
        only those profiles, the rest of each row masked out.
        """
        with self._naming_failures(batch):
            return self._apply(batch, keep, contribute)

    def _checked(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.Expr], list[_Check]]:
        """The rows the filter keeps, with the id, a bad flag and the JSON fragments added."""
        distinct_id, id_checks = self._distinct_id()
        checks = [*id_checks, *(k for c in self._columns for k in c.checks)]
        flags = [k.invalid.fill_null(False) for k in checks]
        frame = batch.lazy()
        if self.inputs.keep is not None:  # first, so no expression meets a row left out
            frame = frame.filter(self.inputs.keep.value)
        computed = self.inputs.computed()
        if computed:  # each expression once, then read by the checks and the fragments
            frame = frame.with_columns(computed)
        frame = _scratch(frame, self._columns)
        checked = frame.with_columns(
            pl.any_horizontal(flags).alias("__bad__"),
            distinct_id.alias("__id__"),
            *(e.alias(name) for name, e in self._parts()),
        ).collect()
        return checked, flags, checks

    def _apply(
        self, batch: pl.DataFrame, keep: pl.DataFrame | None, contribute: bool
    ) -> TransformResult:
        batch, ragged = _split_ragged(batch)
        checked, flags, checks = self._checked(batch)
        bad = checked.filter(pl.col("__bad__"))
        good = checked.filter(~pl.col("__bad__"))
        contributions = self._contributions(good) if contribute else None
        items = self._items(good if keep is None else self._masked(good, keep))
        # reasons are strings built per row: only for the (few) rejected rows
        rejects = bad.select(
            pl.col(ROW).cast(pl.Int64),
            pl.coalesce(
                [pl.when(f).then(pl.lit(k.column)) for f, k in zip(flags, checks, strict=True)]
            ).alias("column"),
            _reasons(flags, checks).alias("reason"),
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
                    pl.lit(self.inputs.distinct_id.name).alias("column"),
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
        if ragged is not None:
            rejects = pl.concat([rejects, ragged]).sort(ROW)
        return TransformResult(
            items=items,
            rejects=rejects,
            rows_valid=good.height - (oversize[ROW].n_unique() if oversize.height else 0),
            rows_filtered=batch.height - checked.height,
            contributions=contributions,
            rows_unchanged=0 if keep is None else good.height - items[ROW].n_unique(),
        )

    # --- incremental sync -----------------------------------------------------------------

    def _part_names(self, index: int) -> list[str]:
        """The fragment, pieces and unset columns one property fills (those it has)."""
        c = self._columns[index]
        present = (c.fragment, c.pieces, c.unset_names)
        return [
            f"__{kind}{index}"
            for kind, part in zip("fpu", present, strict=True)
            if part is not None
        ]

    def _contribution(self, index: int) -> pl.Expr:
        """A hash of everything property ``index`` adds to a row's items; null when nothing."""
        texts = []
        for name in self._part_names(index):
            column = pl.col(name)
            if name.startswith("__p"):  # the pieces of a split cell, one item each
                column = pl.when(column.list.len() > 0).then(column.list.join("\x1f"))
            texts.append(column)
        some = pl.any_horizontal([t.is_not_null() for t in texts])
        joined = pl.concat_str([t.fill_null("\x00") for t in texts], separator="\x1e")
        return xxh3(pl.when(some).then(joined))

    def _contributions(self, good: pl.DataFrame) -> pl.DataFrame:
        """Per valid row: its id, each property's contribution hash (``c<i>``), and the names an
        unset-split property clears (``n<i>``)."""
        exprs = [pl.col(ROW).cast(pl.Int64), pl.col("__id__").alias("distinct_id")]
        for i, column in enumerate(self._columns):
            exprs.append(self._contribution(i).alias(f"c{i}"))
            if column.op == "unset" and column.spec.split is not None:
                names = pl.concat_str([pl.lit("["), pl.col(f"__u{i}"), pl.lit("]")])
                exprs.append(names.str.json_decode(pl.List(pl.String)).alias(f"n{i}"))
        return good.select(exprs)

    def unset_hashes(self) -> dict[int, int]:
        """For each property with ``on_null: unset``: its contribution hash for a null cell."""
        out: dict[int, int] = {}
        for i, column in enumerate(self._columns):
            if column.spec.on_null != "unset" or column.op == "unset":
                continue
            row: dict[str, str | None] = dict.fromkeys(self._part_names(i))
            row[f"__u{i}"] = _json_str(column.spec.target)
            schema = {
                name: (pl.List(pl.String) if name.startswith("__p") else pl.String) for name in row
            }
            frame = pl.DataFrame([row], schema=schema)
            out[i] = int(frame.select(self._contribution(i)).item())
        return out

    def _masked(self, good: pl.DataFrame, keep: pl.DataFrame) -> pl.DataFrame:
        """The rows of the profiles in ``keep``, with the properties it does not send nulled."""
        sent = good.join(keep, left_on="__id__", right_on="distinct_id", maintain_order="left")
        masks = [
            pl.when(pl.col(f"s{i}")).then(pl.col(name)).alias(name)
            for i in range(len(self._columns))
            for name in self._part_names(i)
        ]
        return sent.with_columns(masks) if masks else sent

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
                pl.col("id_json"),
                pl.lit(',"action":{'),
                pl.col("__action"),
                pl.lit("}}"),
            ]
        )
        has_add = pl.col("__op_add").is_not_null() if "add" in used else pl.lit(False)
        return (
            frame.with_columns(__action=action)
            .filter(pl.col("__action").is_not_null())
            .with_columns(id_json=json_value(pl.col("distinct_id")))
            .select(ROW, "distinct_id", item.alias("item"), has_add.alias("has_add"), "id_json")
            .with_columns(nbytes=pl.col("item").str.len_bytes().cast(pl.Int64))
            .select(*ITEM_SCHEMA)
            .collect()
        )


def _reasons(flags: list[pl.Expr], checks: list[_Check]) -> pl.Expr:
    """Every rule a row breaks, its reasons joined by ``; `` (null for a valid row)."""
    return pl.concat_str(
        [pl.when(f).then(k.reason) for f, k in zip(flags, checks, strict=True)],
        separator="; ",
        ignore_nulls=True,
    )


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _empty_to_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _scratch(frame: pl.LazyFrame, columns: Sequence[_Column]) -> pl.LazyFrame:
    """The frame with every column's scratch values: parsed once, then read by both the checks
    and the JSON fragments; a slower second way only on the rows the first left null."""
    for column in columns:  # in order: a scratch value may read the one before it
        for name, expr in column.prepared:
            frame = frame.with_columns(expr.alias(name))
    fallbacks = [f for c in columns for f in c.fallbacks]
    if not fallbacks:
        return frame
    done = frame.collect()
    for fallback in fallbacks:
        rows = done.select(fallback.missing.fill_null(False)).to_series().arg_true()
        if rows.len():
            values = done[rows].select(fallback.slow).to_series()
            done = done.with_columns(done[fallback.name].scatter(rows, values))
    return done.lazy()


def _split_ragged(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The batch without its ragged CSV records, and their rejects (None when there are none).

    A record with fewer or more fields than the header is rejected for that alone, before the
    filter or any rule sees its padded (or cut) cells: with ``on_null: unset`` a short row would
    otherwise clear properties the file never meant to touch.
    """
    if RAGGED not in batch.columns:
        return batch, None
    marked = pl.col(RAGGED).is_not_null()
    ragged = batch.filter(marked)
    rest = batch.filter(~marked).drop(RAGGED, RAGGED_COLUMN)
    if not ragged.height:
        return rest, None
    rejects = ragged.select(
        pl.col(ROW).cast(pl.Int64),
        pl.col(RAGGED_COLUMN).alias("column"),
        pl.col(RAGGED).alias("reason"),
        _original_values(ragged).alias("values"),
    )
    return rest, rejects


def _original_values(batch: pl.DataFrame) -> pl.Expr:
    """The row's original cells as a JSON object (for the rejects file)."""
    cells = [
        pl.col(c).cast(pl.String) if batch.schema[c].is_decimal() else pl.col(c)
        for c in batch.columns
        if c != ROW and not c.startswith("__")
    ]
    return pl.struct(cells).struct.json_encode()
