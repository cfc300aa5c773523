"""The mapping file's model: frozen pydantic models with ``extra="forbid"``, so an unknown key is
an error, and the operator/type/split combinations the API would silently drop are refused.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from importer.config.settings import Settings

Operator = Literal["set", "once", "add", "append", "remove", "unset"]
ValueType = Literal["string", "integer", "number", "boolean", "date", "datetime", "list"]
OPERATORS: tuple[Operator, ...] = ("set", "once", "add", "append", "remove", "unset")
# The order in which operators appear in an action (and in which Fyno applies them).
OPERATOR_KEYS: dict[Operator, str] = {op: f"${op}" for op in OPERATORS}
SPLIT_OPERATORS = frozenset({"append", "remove", "unset"})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PropertySpec(_Frozen):
    """One mapped column: source column → Fyno property, through one operator."""

    column: Annotated[str, Field(min_length=1, description="the source column")]
    property: Annotated[
        str | None,
        Field(min_length=1, description="the Fyno property name; defaults to the column name"),
    ] = None
    op: Annotated[Operator, Field(description="set | once | add | append | remove | unset")]
    type: Annotated[
        ValueType | None,
        Field(
            description="string | integer | number | boolean | date | datetime | list; "
            "default: string for CSV, the column's own type for Parquet, number for add"
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
        """The Fyno property name this column writes."""
        return self.property or self.column


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

    distinct_id: Annotated[str, Field(min_length=1, description="the column holding the id")]
    properties: Annotated[list[PropertySpec], Field(min_length=1)]
    source: SourceOptions = Field(default_factory=SourceOptions)
    settings: Settings = Field(default_factory=Settings)

    @model_validator(mode="after")
    def _no_duplicate_targets(self) -> Mapping:
        seen: dict[tuple[str, str], int] = {}
        for index, spec in enumerate(self.properties):
            key = (spec.op, spec.target)
            if key in seen and spec.op != "unset":
                raise ValueError(
                    f"properties[{index}] (column {spec.column}) writes property "
                    f"{spec.target!r} with op {spec.op} again, as properties[{seen[key]}] does: "
                    "map it once"
                )
            seen[key] = index
        return self

    @property
    def columns(self) -> list[str]:
        """Every source column the mapping reads, id first, without repeats."""
        out = [self.distinct_id]
        for spec in self.properties:
            if spec.column not in out:
                out.append(spec.column)
        return out

    def fingerprint(self) -> str:
        """A hash of everything that shapes the request bodies (``settings`` excluded)."""
        data = self.model_dump(mode="json", exclude={"settings"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def mapping_json_schema() -> dict[str, Any]:
    """The JSON Schema of the mapping file, for editors with a YAML language server."""
    schema = Mapping.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fyno-import mapping"
    # load_mapping also takes the operators written as Fyno spells them: $set, $once, …
    op = schema["$defs"]["PropertySpec"]["properties"]["op"]
    op["enum"] = [*OPERATORS, *OPERATOR_KEYS.values()]
    return schema
