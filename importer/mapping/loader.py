"""Reading a mapping file (YAML, JSON or TOML) into the model, with errors a person can act on.

Every validation failure becomes one ``MappingError`` naming the file, the key path and, for YAML,
JSON and plain TOML, the line. YAML keys written twice are refused (a key after ``<<:`` may
override the merged one, as YAML says).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from importer.errors import MappingError
from importer.mapping.model import KeyLines, Mapping, key_path


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
    keys = KeyLines(str(path), lines)
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{keys.where(tuple(e['loc']))}: {key_path(e['loc'])}: {_describe(dict(e))}"
            for e in exc.errors()
        ]
        raise MappingError("invalid mapping\n  " + "\n  ".join(problems)) from None
    mapping._lines = keys  # so that later checks against a source can name file and line
    return mapping
