"""Fyno's semantics: what a request may hold, and what its operators do to a profile.

Owns the checking of a whole request before anything is applied (``BadRequest`` for a wrong
shape, per-item ``"invalid distinct_id"``, the 202 answer), and applying checked items to
profiles with Fyno's silent drops. Pure functions over parsed JSON and dicts: knows nothing of
HTTP, faults, counters or where profiles are stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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
    answers: list[bytes]  # one JSON object per item
    carried: dict[tuple[str, ...], int]  # operators -> items with a valid distinct_id
    valid: int  # items with a valid distinct_id
    dropping: int  # valid items holding a value dropped whatever the profile holds

    @property
    def refused(self) -> int:
        """Items answered "invalid distinct_id"."""
        return len(self.items) - self.valid


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

    The hot path: every item passes here, so the common case is inline, with no call per item.
    """
    batch = _batch_of(body)
    answers: list[bytes] = []
    valid_ops: list[tuple[str, ...]] = []  # counted once at the end, in C
    ok_answers, max_string = _OK_ANSWERS, MAX_STRING  # locals: looked up for every item
    dropping = 0
    for item in batch:
        if type(item) is not dict or type(action := item.get("action")) is not dict:
            raise _bad_item(item)
        if len(item) != 2 or "distinct_id" not in item:
            _check_item_keys(item)
        drops = False  # a value dropped whatever the profile holds: the sink counts it
        for op, values in action.items():
            if op == "$unset":
                if type(values) is not list or not values:
                    raise _bad_unset(values)
                for name in values:
                    if type(name) is not str:
                        raise not_allowed(op)
            elif type(values) is not dict:
                raise not_allowed(op)
            elif op == "$set" or op == "$once":
                for value in values.values():
                    t = type(value)
                    if t is str:
                        if len(value) > max_string:
                            drops = True
                    elif t is list:
                        if _list_drops(op, value):
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
            valid_ops.append(ops)
            if drops:
                dropping += 1
        else:
            answers.append(_answer(ops, INVALID_DISTINCT_ID))
    return Checked(batch, answers, Counter(valid_ops), len(valid_ops), dropping)


def _batch_of(body: Any) -> list[Any]:
    """The list under ``"batch"``, the body's only key."""
    if type(body) is not dict:
        raise not_allowed("batch")
    for key in body:
        if key != "batch":
            raise not_allowed(key)
    batch = body.get("batch")
    if type(batch) is not list:
        raise not_allowed("batch")
    return batch


def _bad_item(item: Any) -> BadRequest:
    """The refusal of an item that is not an object, or whose action is not one."""
    return not_allowed("action" if type(item) is dict else "batch")


def _check_item_keys(item: dict[str, Any]) -> None:
    """Refuse an item key other than distinct_id and action.

    A missing distinct_id is no shape error: the item is answered "invalid distinct_id".
    """
    for key in item:
        if key != "action" and key != "distinct_id":
            raise not_allowed(key)


def _bad_unset(names: Any) -> BadRequest:
    """The refusal of an $unset that is not a list, or an empty one."""
    return not_allowed("$unset") if type(names) is not list else BadRequest(_EMPTY_UNSET)


def _list_drops(op: str, value: list[Any]) -> bool:
    """Check a list given to $set / $once; return whether it will be dropped."""
    drops = False
    for element in value:
        t = type(element)
        if t is str:
            if len(element) > MAX_STRING:
                drops = True
        elif t is dict or t is list:
            raise not_allowed(op)
        elif t is not int and t is not float:
            drops = True
    return drops


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

    Strings and numbers take the short paths written inline: they are nearly every value. The
    list operators, rarer, have helpers, called only when the item carries them.
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
    if values is not None and _append(props, values):
        dropped = True
    values = action.get("$remove")
    if values is not None and _remove(props, values):
        dropped = True
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


def _append(props: dict[str, Any], values: dict[str, Any]) -> bool:
    """$append: add each value to its list, once; return whether one was dropped."""
    dropped = False
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
    return dropped


def _remove(props: dict[str, Any], values: dict[str, Any]) -> bool:
    """$remove: take each value out of its list; return whether one was dropped."""
    dropped = False
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
    return dropped
