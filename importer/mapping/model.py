"""The mapping file's model: frozen pydantic models with ``extra="forbid"``, so an unknown key is
an error, and the operator/type/split combinations the API would silently drop are refused.

A property's value comes from exactly one of a source ``column``, an ``expr`` (polars SQL over
the source's columns) or a constant ``value``; ``distinct_id`` is a column or ``{expr: …}``, and
``filter`` keeps the rows for which its condition is true. SQL is parsed when the file loads;
whether it fits a source's columns is checked when that source is prepared (``importer.transform``).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from importer.config.settings import Settings
from importer.mapping.sql import parse_sql, sql_columns

Operator = Literal["set", "once", "add", "append", "remove", "unset"]
ValueType = Literal["string", "integer", "number", "boolean", "date", "datetime", "list"]
OPERATORS: tuple[Operator, ...] = ("set", "once", "add", "append", "remove", "unset")
# The order in which operators appear in an action (and in which Fyno applies them).
OPERATOR_KEYS: dict[Operator, str] = {op: f"${op}" for op in OPERATORS}
SPLIT_OPERATORS = frozenset({"append", "remove", "unset"})
Constant = str | bool | int | float
# pydantic puts a union member's tag in an error's location; the loader leaves these out, since
# no one writes them in a file (``distinct_id.expr``, not ``distinct_id.id-expr.expr``).
UNION_TAGS = frozenset({"id-column", "id-expr"})

Loc = tuple[str | int, ...]


def key_path(loc: Iterable[str | int]) -> str:
    """A key's path as a person writes it: ``properties[2].expr``."""
    out = ""
    for part in loc:
        if part in UNION_TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class KeyLines:
    """The file a mapping was read from and the line of each key path in it."""

    path: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def where(self, loc: Loc) -> str:
        """``m.yaml:7``: the file and the line of the key, or of the nearest key around it."""
        loc = tuple(part for part in loc if part not in UNION_TAGS)
        line = next(
            (self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines), None
        )
        return f"{self.path}:{line}" if line else self.path


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _checked_sql(text: str) -> str:
    """An ``expr:`` or ``filter:`` text, stripped, once polars has parsed it."""
    text = text.strip()
    if not text:
        raise ValueError("is empty: write a polars SQL expression")
    parse_sql(text)
    return text


def _one_line(text: str) -> str:
    """An expression on one line, as reasons quote it: line breaks and their indentation become
    one space (spaces inside it, in a string literal too, stay as written)."""
    return re.sub(r"\s*\n\s*", " ", text)


class PropertySpec(_Frozen):
    """One mapped value (a column, an expression or a constant) → a Fyno property, one operator."""

    model_config = ConfigDict(
        # exactly one source of the value, and `property` whenever it is not a column
        json_schema_extra={
            "oneOf": [{"required": [key]} for key in ("column", "expr", "value")],
            "anyOf": [{"required": ["column"]}, {"required": ["property"]}],
        }
    )

    column: Annotated[str | None, Field(min_length=1, description="the source column")] = None
    expr: Annotated[
        str | None,
        Field(
            min_length=1,
            description="instead of column: a polars SQL expression over the source's columns, "
            "e.g. \"first_name || ' ' || last_name\" (CSV columns are text: CAST them for numbers)",
        ),
    ] = None
    value: Annotated[
        Constant | None,
        Field(description="instead of column: a constant, the same on every row"),
    ] = None
    property: Annotated[
        str | None,
        Field(
            min_length=1,
            description="the Fyno property name; defaults to the column name "
            "(required with expr and value)",
        ),
    ] = None
    op: Annotated[Operator, Field(description="set | once | add | append | remove | unset")]
    type: Annotated[
        ValueType | None,
        Field(
            description="string | integer | number | boolean | date | datetime | list; "
            "default: string for CSV, the column's own type for Parquet (an expression's result "
            "type), number for add"
        ),
    ] = None
    split: Annotated[
        str | None,
        Field(
            min_length=1,
            description="delimiter: one item per piece (append/remove), a list (list type), "
            "or the names to clear (unset)",
        ),
    ] = None
    on_null: Annotated[
        Literal["skip", "unset", "reject"],
        Field(description="a null cell: skip the property, unset it, or reject the row"),
    ] = "skip"
    on_too_long: Annotated[
        Literal["reject", "truncate"],
        Field(description="a string over 255 characters: reject the row or truncate it"),
    ] = "reject"
    format: Annotated[
        str | None,
        Field(min_length=1, description='strftime input format for date/datetime, e.g. "%d/%m/%Y"'),
    ] = None

    @field_validator("op", mode="before")
    @classmethod
    def _strip_dollar(cls, value: Any) -> Any:
        # only a known operator loses its $, so an error quotes what the user wrote ($upsert)
        if isinstance(value, str) and value.startswith("$") and value[1:] in OPERATORS:
            return value[1:]
        return value

    @field_validator("expr")
    @classmethod
    def _parse_expr(cls, text: str | None) -> str | None:
        return None if text is None else _checked_sql(text)

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_value(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("a constant cannot be null: leave the property out, or op unset")
        if isinstance(value, (date, datetime)):  # YAML and TOML read 2024-03-01 as a date
            return value.isoformat()
        if not isinstance(value, (str, bool, int, float)):
            raise ValueError(
                "a constant is text, a number or true/false (for a list: a text with split)"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> PropertySpec:
        given = [key for key in ("column", "expr", "value") if getattr(self, key) is not None]
        if not given:
            raise ValueError("each property needs one of column, expr or value")
        if len(given) > 1:
            raise ValueError(f"column, expr and value are alternatives: give one, not {given}")
        if self.column is None and self.property is None:
            raise ValueError(f"property (the Fyno property name) is required with {given[0]}")
        return self

    @model_validator(mode="after")
    def _check_combination(self) -> PropertySpec:
        op, vtype = self.op, self.type
        if op == "add" and vtype not in (None, "integer", "number"):
            raise ValueError(f"op add takes only integer or number values, not type {vtype}")
        if op in ("append", "remove") and vtype == "list":
            raise ValueError(f"op {op} sends one value per item: use split, not type list")
        if op == "unset" and vtype not in (None, "boolean"):
            raise ValueError(
                "op unset takes no type: with split the cell lists property names, "
                "without it a true boolean cell clears the property"
            )
        if self.split is not None and not (op in SPLIT_OPERATORS or vtype == "list"):
            raise ValueError(f"split is for append, remove, unset or type list, not op {op}")
        if self.format is not None and vtype not in ("date", "datetime"):
            raise ValueError("format is only for type date or datetime")
        return self

    @builtins.property  # the field `property` shadows the builtin in this class body
    def target(self) -> str:
        """The Fyno property name this entry writes."""
        return self.property or str(self.column)  # _one_source: no column means a property

    @builtins.property
    def source_key(self) -> str:
        """Where the value comes from, stably: ``column:email``, ``expr:lower(email)`` or
        ``value:"crm"`` (the constant as JSON, so ``1`` and ``"1"`` differ)."""
        if self.expr is not None:
            return f"expr:{self.expr}"
        if self.value is not None:
            return "value:" + json.dumps(self.value, ensure_ascii=False)
        return f"column:{self.column}"

    @builtins.property
    def label(self) -> str:
        """How errors and rejects name this entry: ``column email``, ``property tier (expr:
        CASE …)``, ``property source (value: "crm")``."""
        if self.expr is not None:
            return f"property {self.target} (expr: {_one_line(self.expr)})"
        if self.value is not None:
            return f"property {self.target} (value: {json.dumps(self.value, ensure_ascii=False)})"
        return f"column {self.column}"

    @builtins.property
    def columns(self) -> list[str]:
        """The source columns this entry reads."""
        if self.expr is not None:
            return sql_columns(self.expr)
        return [] if self.column is None else [self.column]


class ComputedId(_Frozen):
    """``distinct_id: {expr: …}``: the id computed from the source's columns."""

    expr: Annotated[
        str,
        Field(min_length=1, description="a polars SQL expression, e.g. \"'cust-' || c_custkey\""),
    ]

    @field_validator("expr")
    @classmethod
    def _parse_expr(cls, text: str) -> str:
        return _checked_sql(text)

    @property
    def label(self) -> str:
        """How errors and rejects name the id: ``distinct_id (expr: 'cust-' || c_custkey)``."""
        return f"distinct_id (expr: {_one_line(self.expr)})"


def _id_kind(value: Any) -> str:
    return "id-expr" if isinstance(value, (dict, ComputedId)) else "id-column"


class SourceOptions(_Frozen):
    """Reader options for the sources."""

    delimiter: Annotated[
        str | None,
        Field(min_length=1, max_length=1, description="CSV delimiter; default , (tab for .tsv)"),
    ] = None
    null_values: Annotated[list[str], Field(description='cells read as null; default [""]')] = (
        Field(default_factory=lambda: [""])
    )
    encoding: Annotated[
        Literal["utf8", "latin1"], Field(description="utf8 | latin1 (transcoded as a stream)")
    ] = "utf8"
    storage_options: Annotated[
        dict[str, str], Field(description="options for s3://, gs://, az:// sources")
    ] = Field(default_factory=dict)


class Mapping(_Frozen):
    """A whole mapping file."""

    distinct_id: Annotated[
        Annotated[str, Field(min_length=1), Tag("id-column")]
        | Annotated[ComputedId, Tag("id-expr")],
        Discriminator(_id_kind),
        Field(description="the column holding the id, or {expr: …} to compute it"),
    ]
    filter: Annotated[
        str | None,
        Field(
            min_length=1,
            description="a polars SQL condition: only rows for which it is true are sent; "
            "the others are counted in rows_filtered",
        ),
    ] = None
    properties: Annotated[list[PropertySpec], Field(min_length=1)]
    source: SourceOptions = Field(default_factory=SourceOptions)
    settings: Settings = Field(default_factory=Settings)
    _lines: KeyLines | None = PrivateAttr(default=None)  # set by load_mapping

    def __eq__(self, other: object) -> bool:
        """Equal when the keys are: the file a mapping was read from is not part of its value."""
        return isinstance(other, Mapping) and self.__dict__ == other.__dict__

    @field_validator("filter")
    @classmethod
    def _parse_filter(cls, text: str | None) -> str | None:
        return None if text is None else _checked_sql(text)

    @model_validator(mode="after")
    def _no_duplicate_targets(self) -> Mapping:
        seen: dict[tuple[str, str], int] = {}
        for index, spec in enumerate(self.properties):
            key = (spec.op, spec.target)
            if key in seen and spec.op != "unset":
                raise ValueError(
                    f"properties[{index}] ({spec.label}) writes property "
                    f"{spec.target!r} with op {spec.op} again, as properties[{seen[key]}] does: "
                    "map it once"
                )
            seen[key] = index
        return self

    @property
    def id_column(self) -> str | None:
        """The column holding the id, or None when the id is computed by an expression."""
        return self.distinct_id if isinstance(self.distinct_id, str) else None

    @property
    def columns(self) -> list[str]:
        """Every source column the mapping reads (expressions included), id first, no repeats."""
        out = (
            [self.distinct_id]
            if isinstance(self.distinct_id, str)
            else sql_columns(self.distinct_id.expr)
        )
        for spec in self.properties:
            out += spec.columns
        if self.filter is not None:
            out += sql_columns(self.filter)
        return list(dict.fromkeys(out))

    def at(self, *loc: str | int) -> str:
        """``m.yaml:7: properties[2].expr``: a key, with its file and line when read from one."""
        if self._lines is None:
            return key_path(loc)
        return f"{self._lines.where(loc)}: {key_path(loc)}"

    def fingerprint(self) -> str:
        """A hash of everything that shapes the request bodies (``settings`` excluded)."""
        data = self.model_dump(mode="json", exclude={"settings"})
        # The keys of computed values are left out where unused, so a mapping written before
        # they existed keeps its fingerprint (and its chunk ids, so an unfinished run resumes).
        if data["filter"] is None:
            del data["filter"]
        for spec in data["properties"]:
            for key in ("expr", "value"):
                if spec[key] is None:
                    del spec[key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def mapping_json_schema() -> dict[str, Any]:
    """The JSON Schema of the mapping file, for editors with a YAML language server."""
    schema = Mapping.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fyno-import mapping"
    spec = schema["$defs"]["PropertySpec"]["properties"]
    # load_mapping also takes the operators written as Fyno spells them: $set, $once, …
    spec["op"]["enum"] = [*OPERATORS, *OPERATOR_KEYS.values()]
    # a constant is never null (leaving `value` out is how to say "no constant")
    spec["value"]["anyOf"] = [t for t in spec["value"]["anyOf"] if t.get("type") != "null"]
    return schema
