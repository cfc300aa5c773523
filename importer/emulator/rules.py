"""Fyno's semantics: what a request may hold, and what its operators do to a profile.

Owns the checking of a whole request before anything is applied (``BadRequest`` for a wrong
shape, per-item ``"invalid distinct_id"``, the 202 answer), and applying checked items to
profiles with Fyno's silent drops. Pure functions over parsed JSON and dicts: knows nothing of
HTTP, faults, counters or where profiles are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

VERSIONS: Final = ("live", "test")
OPERATORS: Final = ("$set", "$once", "$add", "$append", "$remove", "$unset")  # order of applying
MAX_STRING: Final = 255  # characters (code points) in a string value or list element

# Single-operator endpoint path -> the operator its body carries.
ENDPOINT_OPERATORS: Final[dict[str, str]] = {
    "set": "$set",
    "set-once": "$once",
    "numerical-add": "$add",
    "list-append": "$append",
    "list-remove": "$remove",
    "unset": "$unset",
}

INVALID_DISTINCT_ID: Final = "invalid distinct_id"
_EMPTY_UNSET: Final = "$unset channel should have atleast one item in array"


# --- checking: the whole request is checked before anything is applied -----------------------


class BadRequest(Exception):
    """The request is refused with a 400 and this message."""


def not_allowed(key: str) -> BadRequest:
    """Fyno's 400 for a key or value of the wrong shape."""
    return BadRequest(f"{key} has object/keys that is not allowed")


def bad_version(version: str) -> str:
    """Fyno's 400 message for a version other than live or test."""
    return f"version {version} is not allowed: use live or test"


@dataclass(slots=True)
class Checked:
    """A batch that passed the checks, with what its 202 answer and the counters need."""

    items: list[dict[str, Any]]
    answers: list[bytes] = field(default_factory=list)  # one JSON object per item
    carried: dict[tuple[str, ...], int] = field(default_factory=dict)  # operators -> items
    valid: int = 0  # items with a valid distinct_id
    refused: int = 0  # items answered "invalid distinct_id"
    dropping: int = 0  # valid items holding a value dropped whatever the profile holds


# Answers per tuple of operators an item carried: a few dozen in practice, 1,957 at most.
_OK_ANSWERS: dict[tuple[str, ...], bytes] = {}
_REFUSED_ANSWERS: dict[tuple[str, ...], bytes] = {}


def _answer(ops: tuple[str, ...], status: str) -> bytes:
    cache = _OK_ANSWERS if status == "ok" else _REFUSED_ANSWERS
    answer = cache.get(ops)
    if answer is None:
        answer = cache[ops] = orjson.dumps(dict.fromkeys(ops, status))
    return answer


def check_batch(body: Any) -> Checked:
    """Check a whole batch body, raising ``BadRequest`` for any wrong shape; prepare its answer.

    One pass with the checks written out, because this runs for every item of every request.
    Values that are dropped whatever the profile holds (too long, null, a non-number $add) are
    counted here, for the sink; applying counts drops again.
    """
    if type(body) is not dict:
        raise not_allowed("batch")
    for key in body:
        if key != "batch":
            raise not_allowed(key)
    batch = body.get("batch")
    if type(batch) is not list:
        raise not_allowed("batch")
    checked = Checked(batch)
    answers, carried, ok_answers = checked.answers, checked.carried, _OK_ANSWERS
    max_string = MAX_STRING  # a local: looked up for every string value
    for item in batch:
        if type(item) is not dict:
            raise not_allowed("batch")
        action = item.get("action")
        if type(action) is not dict:
            raise not_allowed("action")
        if len(item) != 2 or "distinct_id" not in item:
            for key in item:
                if key != "action" and key != "distinct_id":
                    raise not_allowed(key)
        drops = False
        for op, values in action.items():
            if op == "$unset":
                if type(values) is not list:
                    raise not_allowed(op)
                if not values:
                    raise BadRequest(_EMPTY_UNSET)
                for name in values:
                    if type(name) is not str:
                        raise not_allowed(op)
                continue
            if type(values) is not dict:
                raise not_allowed(op)
            if op == "$set" or op == "$once":
                for value in values.values():
                    t = type(value)
                    if t is str:
                        if len(value) > max_string:
                            drops = True
                    elif t is list:
                        for element in value:
                            t = type(element)
                            if t is str:
                                if len(element) > max_string:
                                    drops = True
                            elif t is dict or t is list:
                                raise not_allowed(op)
                            elif t is not int and t is not float:
                                drops = True
                    elif t is dict:
                        raise not_allowed(op)
                    elif t is not int and t is not float and t is not bool:
                        drops = True
            elif op == "$add" or op == "$append" or op == "$remove":
                for value in values.values():
                    t = type(value)
                    if t is str and op != "$add":
                        if len(value) > max_string:
                            drops = True
                    elif t is not int and t is not float:
                        if t is dict or t is list:
                            raise not_allowed(op)
                        drops = True
            else:
                raise not_allowed(op)
        ops = tuple(action)
        distinct_id = item.get("distinct_id")
        if type(distinct_id) is str and distinct_id:
            answers.append(ok_answers.get(ops) or _answer(ops, "ok"))
            carried[ops] = carried.get(ops, 0) + 1
            checked.valid += 1
            if drops:
                checked.dropping += 1
        else:
            answers.append(_answer(ops, INVALID_DISTINCT_ID))
            checked.refused += 1
    return checked


def single_as_batch(operator: str, body: Any) -> Checked:
    """Turn a single-operator body into the one-item batch it means, or raise ``BadRequest``."""
    if type(body) is not dict:
        raise not_allowed(operator)
    for key in body:
        if key != "distinct_id" and key != operator:
            raise not_allowed(key)
    distinct_id = body.get("distinct_id")
    if type(distinct_id) is not str or not distinct_id:
        raise not_allowed("distinct_id")
    if operator not in body:
        raise not_allowed(operator)
    return check_batch(
        {"batch": [{"distinct_id": distinct_id, "action": {operator: body[operator]}}]}
    )


def distinct_ids(body: Any) -> set[str]:
    """The distinct_ids a (not yet checked) batch body names."""
    batch = body.get("batch") if type(body) is dict else None
    if type(batch) is not list:
        return set()
    return {
        d
        for item in batch
        if type(item) is dict and type(d := item.get("distinct_id")) is str and d
    }


# --- applying: Fyno's operators, with its silent drops ---------------------------------------

_DROP: Final = object()  # a value Fyno accepts with 202 and then ignores

# A property keeps the kind of its first value; ints and floats are one kind, bools another.
_KIND: Final[dict[type, str]] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    list: "list",
}


def apply_items(profiles: dict[str, dict[str, Any]], items: list[dict[str, Any]]) -> int:
    """Apply checked items to these profiles (distinct_id -> properties); count drops.

    Returns how many items had a value dropped. A profile is created by its first stored value.
    """
    dropped = 0
    for item in items:
        distinct_id = item.get("distinct_id")
        if type(distinct_id) is not str or not distinct_id:
            continue  # answered "invalid distinct_id"
        props = profiles.get(distinct_id)
        if props is None:
            props = {}
            if apply_action(props, item["action"]):
                dropped += 1
            if props:
                profiles[distinct_id] = props
        elif apply_action(props, item["action"]):
            dropped += 1
    return dropped


def apply_action(props: dict[str, Any], action: dict[str, Any]) -> bool:
    """Apply one checked item's operators to its profile; return whether a value was dropped.

    Strings and numbers take the short paths written inline: they are nearly every value.
    """
    dropped = False
    values = action.get("$set")
    if values is not None:
        for name, value in values.items():
            if type(value) is not str or len(value) > MAX_STRING:
                value = _storable(value)
                if value is _DROP:
                    dropped = True
                    continue
            old = props.get(name)
            if old is None or type(old) is type(value) or _KIND[type(old)] == _KIND[type(value)]:
                props[name] = value
            else:
                dropped = True  # the property's type was fixed by its first value
    values = action.get("$once")
    if values is not None:
        for name, value in values.items():
            if name in props:
                continue
            if type(value) is not str or len(value) > MAX_STRING:
                value = _storable(value)
                if value is _DROP:
                    dropped = True
                    continue
            props[name] = value
    values = action.get("$add")
    if values is not None:
        for name, value in values.items():
            old = props.get(name, 0)
            t, t_old = type(value), type(old)
            if (t is int or t is float) and (t_old is int or t_old is float):
                props[name] = old + value
            else:
                dropped = True
    values = action.get("$append")
    if values is not None:
        for name, value in values.items():
            t = type(value)
            if not ((t is str and len(value) <= MAX_STRING) or t is int or t is float):
                dropped = True
                continue
            old = props.get(name)
            if old is None:
                props[name] = [value]
            elif type(old) is list:
                if value not in old:  # lists keep unique values
                    old.append(value)
            else:
                dropped = True
    values = action.get("$remove")
    if values is not None:
        for name, value in values.items():
            t = type(value)
            old = props.get(name)
            if not ((t is str and len(value) <= MAX_STRING) or t is int or t is float):
                dropped = True
            elif old is None:
                pass  # a missing profile or property is ignored
            elif type(old) is not list:
                dropped = True
            elif value in old:
                old.remove(value)
    names = action.get("$unset")
    if names is not None:
        for name in names:
            props.pop(name, None)
    return dropped


def _storable(value: Any) -> Any:
    """The value to store for $set / $once, or ``_DROP``."""
    t = type(value)
    if t is str:
        return value if len(value) <= MAX_STRING else _DROP
    if t is int or t is float or t is bool:
        return value
    if t is list:
        for element in value:
            t = type(element)
            if not ((t is str and len(element) <= MAX_STRING) or t is int or t is float):
                return _DROP
        return list(dict.fromkeys(value))  # lists keep unique values, first occurrence wins
    return _DROP  # null
