"""The mapping file: which columns feed which Fyno property operators, and how.

A mapping is YAML (JSON and TOML accepted too), validated by the frozen pydantic models below
with ``extra="forbid"``. ``load_mapping`` turns every validation failure into one
``MappingError`` that names the file, the key path and, for YAML and JSON, the line, so a
person can go straight to the mistake.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from importer.config.settings import Settings
from importer.errors import MappingError

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


# --- loading -------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Only keys written in this mapping count: a key after `<<: *base` overrides the merged one,
    # as YAML says, so the check runs before the merge is flattened in.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def _yaml_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _json_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Key lines of a JSON document, read as the YAML it also is (tabs are only spacing there)."""
    try:
        return _yaml_lines(text.replace("\t", " "))
    except yaml.YAMLError:
        return {}


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses a key written twice (as the YAML loader does)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


_TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*([\w.\-\"]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(r"^\s*\"?([\w\-]+)\"?\s*=")


def _toml_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Key lines of a plain TOML mapping: tables, arrays of tables and ``key =`` lines."""
    lines: dict[tuple[str | int, ...], int] = {}
    prefix: tuple[str | int, ...] = ()
    counts: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        table = _TOML_TABLE.match(raw)
        if table:
            name = table.group(2).replace('"', "")
            if table.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                lines.setdefault((name,), number)
                prefix = (name, counts[name])
            else:
                prefix = tuple(name.split("."))
            lines.setdefault(prefix, number)
            continue
        key = _TOML_KEY.match(raw)
        if key:
            lines.setdefault((*prefix, key.group(1)), number)
    return lines


def _format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key: check its spelling (`fyno-import mapping schema` lists every key)"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind in ("literal_error", "int_parsing", "float_parsing", "bool_parsing", "string_type"):
        message += f" (got {error['input']!r})"
    return message


def _parse_text(path: Path, text: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text), _toml_lines(text)
        if suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_json_object), _json_lines(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        return data, _yaml_lines(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "YAML indents with spaces, never tabs" if "\t" in text else None
        raise MappingError(f"{where}: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: invalid YAML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MappingError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path}: invalid TOML: {exc}") from None
    except ValueError as exc:  # a key written twice in a JSON object
        raise MappingError(f"{path}: invalid JSON: {exc}") from None


def load_mapping(path: Path | str) -> Mapping:
    """Read and validate a mapping file; every problem is a MappingError naming file, key, line."""
    path = Path(path)
    if path.is_dir():
        raise MappingError(f"{path}: is a directory, not a mapping file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(
            f"{path}: no such mapping file",
            hint="`fyno-import mapping init SOURCE` writes a starter mapping",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc}") from None
    data, lines = _parse_text(path, text)
    if not isinstance(data, dict):
        raise MappingError(f"{path}: a mapping file holds keys such as distinct_id and properties")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {_format_loc(loc)}: {_describe(dict(error))}")
        raise MappingError("invalid mapping\n  " + "\n  ".join(problems)) from None


def mapping_json_schema() -> dict[str, Any]:
    """The JSON Schema of the mapping file, for editors with a YAML language server."""
    schema = Mapping.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fyno-import mapping"
    # load_mapping also takes the operators written as Fyno spells them: $set, $once, …
    op = schema["$defs"]["PropertySpec"]["properties"]["op"]
    op["enum"] = [*OPERATORS, *OPERATOR_KEYS.values()]
    return schema
