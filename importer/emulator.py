"""A local Fyno: the user-property API served over real HTTP, with faults on demand.

Tests, benchmarks and ``make demo`` import into this server through a real socket, so it answers
the way ``fyno-api.md`` says Fyno does, and can misbehave the ways a real network does.

Endpoints::

    POST /v1/{WSID}/{version}/profiles/properties/batch   {"batch": [{"distinct_id", "action"}]}
    POST /v1/{WSID}/{version}/profiles/properties/{op}    set | set-once | numerical-add |
                                                          list-append | list-remove | unset
    GET  /v1/{WSID}/{version}/profiles/{distinct_id}      {"distinct_id", "properties"} or 404
    GET  /_emulator/stats                                 counters (no key needed)
    POST /_emulator/reset                                 forget profiles and counters (no key)

One write request goes through these steps, in this order (each refusal applies nothing):

1. the key: ``Authorization: Bearer <key>``; missing or wrong -> 401 ``Invalid API details``;
2. the rate limit: a token bucket of R requests/s holding at most R (at least 1) -> 429 with
   ``Retry-After: 1``;
3. ``fail_rate`` -> 503;
4. ``latency_ms`` -> an ``asyncio.sleep``, so slow requests overlap as they do against Fyno;
5. validation of the *whole* request (version, body shape, operator values) -> 400 with Fyno's
   ``{"_message": …, "status": "error"}``; then every item is applied, in one transaction;
6. ``drop_rate`` -> the connection is closed with no answer at all, *after* applying: the client
   sees a dropped connection (httpx raises ``RemoteProtocolError``) for a batch that took effect,
   which is exactly the "ambiguous" case the importer must not resend blindly when it holds $add.

All draws come from one ``random.Random(seed)``, so a seeded run with sequential requests
repeats itself.

Semantics, where ``fyno-api.md`` is silent and a choice had to be made (a user of the emulator
can rely on these):

- Operators of one item are applied in the order $set, $once, $add, $append, $remove, $unset,
  whatever their order in the JSON, and the answer has one ``"ok"`` per operator the item carried.
- A property's type (string, number, boolean, list) is that of its current value in the profile:
  the first value written fixes it until the property is unset. Dates are strings. Booleans are
  not numbers. A later value of another type, a string over 255 characters (code points; also as
  a list element or an appended value), a null, an ``$add`` of a non-number such as ``"12"``, or
  an $append / $remove on a property that is not a list, is answered ``"ok"`` and silently
  dropped, as Fyno does. ``items_dropped`` counts the items with at least one dropped value.
- Lists keep unique values (a $set list is de-duplicated, first occurrence kept) and hold
  strings or numbers.
- Shapes are errors, not drops: an object as a property value, an array or object given to
  $add / $append / $remove, a non-object operator value, an unknown operator or item key.
- **Per-item errors.** An item whose ``distinct_id`` is not a non-empty string is answered
  ``"invalid distinct_id"`` for each of its operators and nothing of it is applied (Fyno
  documents no per-item error; this one lets tests exercise the importer's handling of them).
  It is counted in ``items_refused``. On a single-operator endpoint, which has no per-item
  answer, such a request is a 400 instead.
- The single-operator endpoints take the batch operator name as their body key: ``$set`` for
  ``set``, ``$once`` for ``set-once``, ``$add``, ``$append``, ``$remove``, ``$unset``.
- Profiles are kept per (workspace, version, distinct_id): live and test never mix. Any
  workspace id is accepted.

``GET /_emulator/stats`` answers ``requests_by_status`` (write requests by HTTP status, plus
``"dropped"`` for answers withheld by ``drop_rate`` and ``"disconnected"`` for clients gone
before the body arrived), ``items_applied``, ``items_dropped``, ``items_refused``,
``ops_applied`` (items applied per operator), ``max_in_flight`` (the most write requests being
handled at once, from arrival to answer, latency included) and
``max_in_flight_per_distinct_id`` (the most in-flight write requests holding one same
distinct_id, counted from the moment the body is read: 1 proves a client never had two requests
for one profile in flight). Reset clears profiles and counters, refills the token bucket and
reseeds the draws.

Stores. In memory, profiles are dicts, readable after the server stops. With ``db``, they are
rows of ``profiles(workspace, version, distinct_id, properties JSON)`` in a SQLite file (WAL,
closed cleanly on stop, so ``sqlite3`` can read it afterwards); each request is one transaction.
The sink checks and counts but keeps nothing, so the drops it counts are only those that need
no stored profile (too long, null, non-number $add), and every GET is a 404.

Design. A Starlette app whose state is one ``_Emulator``: config, store, counters, draws. All
requests run on the server's event loop, and each is checked and applied synchronously between
two awaits, which makes it atomic towards the others; a ``threading.Lock`` guards store and
counters only because ``EmulatorServer.stats()`` and ``.profile()`` read them from the caller's
thread. The emulator must never be the bottleneck of a benchmark, so the per-item path is one
checking pass with the type tests written out and one applying pass, bodies are parsed with
orjson, answers are joined from JSON fragments cached per tuple of operators, and uvicorn runs
on httptools and uvloop. ``EmulatorServer`` serves in a background thread (tests, ``run
--emulator``); ``serve`` in the foreground until SIGINT or SIGTERM (the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import random
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

try:
    import uvloop

    _new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
    _new_event_loop = asyncio.new_event_loop

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app", "parse_latency", "serve"]

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
_GRACEFUL_STOP_S: Final = 5  # seconds stop() lets in-flight requests finish
_KEEP_ALIVE_S: Final = 30  # idle keep-alive: longer than clients keep idle connections
_START_TIMEOUT_S: Final = 30


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """How the emulator listens, stores and misbehaves."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = pick a free port
    api_key: str | None = None  # None: any non-empty Bearer key is accepted
    db: Path | None = None  # None: profiles in memory; else this SQLite file
    latency_ms: tuple[int, int] | None = None  # (min, max) waited before applying, uniform
    fail_rate: float = 0.0  # fraction answered 503, nothing applied
    rate_limit: float = 0.0  # requests/s of a token bucket (burst R); 0 = off
    drop_rate: float = 0.0  # fraction applied, then the connection closed with no answer
    seed: int | None = None  # makes the fault draws reproducible
    sink: bool = False  # validate and count items, store no profiles

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.sink and self.db is not None:
            raise ValueError("sink mode stores no profiles: give either sink or db, not both")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (use None to accept any key)")
        for name in ("fail_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if not self.rate_limit >= 0.0:  # also refuses NaN
            raise ValueError(
                f"rate_limit must be 0 (off) or a positive rate, not {self.rate_limit}"
            )
        if self.latency_ms is not None:
            low, high = self.latency_ms
            if not 0 <= low <= high:
                raise ValueError(
                    f"latency_ms must be (min, max) with 0 <= min <= max, not {low, high}"
                )


def parse_latency(text: str) -> tuple[int, int]:
    """Parse ``--latency-ms``: ``"50"`` is (50, 50), ``"10-80"`` is (10, 80)."""
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(
            f"invalid latency {text!r}: expected milliseconds as MIN or MIN-MAX, e.g. 50 or 10-80"
        ) from None
    if low < 0 or high < low:
        raise ValueError(f"invalid latency {text!r}: need 0 <= MIN <= MAX milliseconds")
    return low, high


# --- validation: the whole request is checked before anything is applied -------------------


class _BadRequest(Exception):
    """The request is refused with a 400 and this message."""


def _not_allowed(key: str) -> _BadRequest:
    return _BadRequest(f"{key} has object/keys that is not allowed")


@dataclass(slots=True)
class _Checked:
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


def _check_batch(body: Any) -> _Checked:
    """Check a whole batch body, raising ``_BadRequest`` for any wrong shape; prepare its answer.

    One pass with the checks written out, because this runs for every item of every request.
    Values that are dropped whatever the profile holds (too long, null, a non-number $add) are
    counted here, for the sink; the stores count drops again while applying.
    """
    if type(body) is not dict:
        raise _not_allowed("batch")
    for key in body:
        if key != "batch":
            raise _not_allowed(key)
    batch = body.get("batch")
    if type(batch) is not list:
        raise _not_allowed("batch")
    checked = _Checked(batch)
    answers, carried, ok_answers = checked.answers, checked.carried, _OK_ANSWERS
    max_string = MAX_STRING  # a local: looked up for every string value
    for item in batch:
        if type(item) is not dict:
            raise _not_allowed("batch")
        action = item.get("action")
        if type(action) is not dict:
            raise _not_allowed("action")
        if len(item) != 2 or "distinct_id" not in item:
            for key in item:
                if key != "action" and key != "distinct_id":
                    raise _not_allowed(key)
        drops = False
        for op, values in action.items():
            if op == "$unset":
                if type(values) is not list:
                    raise _not_allowed(op)
                if not values:
                    raise _BadRequest(_EMPTY_UNSET)
                for name in values:
                    if type(name) is not str:
                        raise _not_allowed(op)
                continue
            if type(values) is not dict:
                raise _not_allowed(op)
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
                                raise _not_allowed(op)
                            elif t is not int and t is not float:
                                drops = True
                    elif t is dict:
                        raise _not_allowed(op)
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
                            raise _not_allowed(op)
                        drops = True
            else:
                raise _not_allowed(op)
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


def _single_as_batch(operator: str, body: Any) -> _Checked:
    """Turn a single-operator body into the one-item batch it means, or raise ``_BadRequest``."""
    if type(body) is not dict:
        raise _not_allowed(operator)
    for key in body:
        if key != "distinct_id" and key != operator:
            raise _not_allowed(key)
    distinct_id = body.get("distinct_id")
    if type(distinct_id) is not str or not distinct_id:
        raise _not_allowed("distinct_id")
    if operator not in body:
        raise _not_allowed(operator)
    return _check_batch(
        {"batch": [{"distinct_id": distinct_id, "action": {operator: body[operator]}}]}
    )


def _distinct_ids(body: Any) -> set[str]:
    """The distinct_ids a (not yet validated) batch body names."""
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


def _apply_action(props: dict[str, Any], action: dict[str, Any]) -> bool:
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


# --- stores: where profiles live -------------------------------------------------------------

Profiles = dict[str, dict[str, Any]]  # distinct_id -> properties, for one workspace and version


class _MemoryStore:
    """Profiles in dicts, one per (workspace, version)."""

    def __init__(self) -> None:
        self._spaces: dict[tuple[str, str], Profiles] = {}

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close: profiles stay readable after the server stops."""

    @contextlib.contextmanager
    def batch(
        self, workspace: str, version: str, items: list[dict[str, Any]]
    ) -> Iterator[Profiles]:
        """The live profiles of one workspace and version, changed in place."""
        yield self._spaces.setdefault((workspace, version), {})

    def find(self, version: str, distinct_id: str, workspace: str | None) -> list[dict[str, Any]]:
        """Properties of that profile in each matching workspace."""
        return [
            _copy(profiles[distinct_id])
            for (ws, ver), profiles in self._spaces.items()
            if ver == version and (workspace is None or ws == workspace) and distinct_id in profiles
        ]

    def clear(self) -> None:
        """Forget every profile."""
        self._spaces.clear()


class _SqliteStore:
    """Profiles in a SQLite table, one row per profile, properties as JSON text."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS profiles (
            workspace   TEXT NOT NULL,
            version     TEXT NOT NULL,
            distinct_id TEXT NOT NULL,
            properties  TEXT NOT NULL,  -- JSON object
            PRIMARY KEY (workspace, version, distinct_id)
        ) WITHOUT ROWID
    """
    _LOAD = """
        SELECT distinct_id, properties FROM profiles
        WHERE workspace = ? AND version = ? AND distinct_id IN (SELECT value FROM json_each(?))
    """
    _SAVE = """
        INSERT INTO profiles (workspace, version, distinct_id, properties) VALUES (?, ?, ?, ?)
        ON CONFLICT (workspace, version, distinct_id) DO UPDATE SET properties = excluded.properties
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (and create) the database; a no-op when open."""
        if self._conn is None:
            # Used from the server's loop and, under the emulator's lock, from the caller's thread.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(self._SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        """Close the database, so the file is complete and can be read by anyone."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def batch(
        self, workspace: str, version: str, items: list[dict[str, Any]]
    ) -> Iterator[Profiles]:
        """The batch's profiles, loaded and written back in one transaction."""
        ids = list({d for item in items if type(d := item.get("distinct_id")) is str})
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(self._LOAD, (workspace, version, orjson.dumps(ids).decode()))
            profiles = {distinct_id: orjson.loads(text) for distinct_id, text in rows}
            yield profiles
            conn.executemany(
                self._SAVE,
                [
                    (workspace, version, distinct_id, orjson.dumps(props).decode())
                    for distinct_id, props in profiles.items()
                ],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def find(self, version: str, distinct_id: str, workspace: str | None) -> list[dict[str, Any]]:
        """Properties of that profile in each matching workspace (works after ``close`` too)."""
        query = "SELECT properties FROM profiles WHERE version = ? AND distinct_id = ?"
        params: tuple[str, ...] = (version, distinct_id)
        if workspace is not None:
            query += " AND workspace = ?"
            params += (workspace,)
        if self._conn is not None:
            rows = self._conn.execute(query, params).fetchall()
        else:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                rows = conn.execute(query, params).fetchall()
        return [orjson.loads(text) for (text,) in rows]

    def clear(self) -> None:
        """Forget every profile."""
        self._connection().execute("DELETE FROM profiles")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the emulator's database is not open")
        return self._conn


_Store = _MemoryStore | _SqliteStore


def _copy(props: dict[str, Any]) -> dict[str, Any]:
    """A copy the caller may keep: lists are the only mutable values stored."""
    return {k: list(v) if type(v) is list else v for k, v in props.items()}


# --- the emulator's state and request handling -----------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"_message": message, "status": "error"})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _json(status: int, content: Any) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


_UNAUTHORIZED: Final = "Invalid API details"


@dataclass
class _Counters:
    """What ``/_emulator/stats`` reports; cleared by reset."""

    requests_by_status: dict[str, int] = field(default_factory=dict)
    items_applied: int = 0
    items_dropped: int = 0
    items_refused: int = 0
    ops_applied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATORS, 0))
    max_in_flight: int = 0
    max_in_flight_per_distinct_id: int = 0


class _Emulator:
    """The state behind the app: config, store, counters, fault draws."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store: _Store
        if config.db is not None:
            self.store = _SqliteStore(config.db)
        else:
            self.store = _MemoryStore()
        self.lock = threading.Lock()  # store and counters, against readers in other threads
        self.counters = _Counters()
        self._rng = random.Random(config.seed)
        self._capacity = max(config.rate_limit, 1.0)  # a burst below one request would refuse all
        self._tokens = self._capacity
        self._refilled = time.monotonic()
        self._in_flight = 0
        self._in_flight_ids: dict[int, set[str]] = {}  # request number -> its distinct_ids
        self._requests = 0

    def open(self) -> None:
        """Open the store."""
        with self.lock:
            self.store.open()

    def close(self) -> None:
        """Close the store."""
        with self.lock:
            self.store.close()

    # -- counters

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_emulator/stats`` answers them."""
        with self.lock:
            c = self.counters
            return {
                "requests_by_status": dict(c.requests_by_status),
                "items_applied": c.items_applied,
                "items_dropped": c.items_dropped,
                "items_refused": c.items_refused,
                "ops_applied": dict(c.ops_applied),
                "max_in_flight": c.max_in_flight,
                "max_in_flight_per_distinct_id": c.max_in_flight_per_distinct_id,
            }

    def reset(self) -> None:
        """Forget profiles and counters; start the draws and the bucket afresh."""
        with self.lock:
            self.store.clear()
            self.counters = _Counters()
            # Requests still in flight keep their places: they will leave later.
            self.counters.max_in_flight = self._in_flight
            self.counters.max_in_flight_per_distinct_id = 1 if self._in_flight_ids else 0
            self._rng = random.Random(self.config.seed)
            self._tokens = self._capacity
            self._refilled = time.monotonic()

    def profile(
        self, distinct_id: str, version: str, workspace: str | None
    ) -> dict[str, Any] | None:
        """Properties of one profile, or None; without a workspace, the one workspace holding it."""
        with self.lock:
            found = self.store.find(version, distinct_id, workspace)
        if len(found) > 1:
            raise ValueError(
                f"profile {distinct_id!r} ({version}) exists in {len(found)} workspaces: "
                "pass workspace="
            )
        return found[0] if found else None

    def _arrive(self, ids: set[str]) -> int:
        """Count a request in flight with these distinct_ids; return its number."""
        self._requests += 1
        number = self._requests
        counters = self.counters
        if ids:
            # Requests in flight are few (the client's concurrency): compare sets, not ids.
            overlaps = [
                other & ids for other in self._in_flight_ids.values() if not ids.isdisjoint(other)
            ]
            peak = 1
            if overlaps:
                holders: dict[str, int] = {}
                for shared in overlaps:
                    for distinct_id in shared:
                        holders[distinct_id] = holders.get(distinct_id, 0) + 1
                peak += max(holders.values())
            if peak > counters.max_in_flight_per_distinct_id:
                counters.max_in_flight_per_distinct_id = peak
            self._in_flight_ids[number] = ids
        return number

    def _take_token(self) -> bool:
        """Take one request's token from the bucket, if there is one."""
        now = time.monotonic()
        self._tokens = min(
            self._capacity, self._tokens + (now - self._refilled) * self.config.rate_limit
        )
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # -- endpoints

    async def write(self, request: Request) -> Response:
        """POST .../profiles/properties/{batch|op}: the fault steps, then validate and apply."""
        endpoint = request.path_params["op"]
        if endpoint != "batch" and endpoint not in ENDPOINT_OPERATORS:
            return _error(404, f"Unknown endpoint properties/{endpoint}")
        self._in_flight += 1
        counters = self.counters
        if self._in_flight > counters.max_in_flight:
            counters.max_in_flight = self._in_flight
        number = 0
        status = "500"
        try:
            if not self._authorized(request):
                status = "401"
                return _error(401, _UNAUTHORIZED)
            try:
                raw = await request.body()
            except ClientDisconnect:  # the client gave up while sending: nothing to answer
                status = "disconnected"
                return Response(status_code=499)
            try:
                body: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _BadRequest("Request body is not valid JSON")
            if endpoint == "batch":
                number = self._arrive(_distinct_ids(body))
            elif type(body) is dict and type(did := body.get("distinct_id")) is str and did:
                number = self._arrive({did})
            config = self.config
            if config.rate_limit and not self._take_token():
                status = "429"
                return _error(429, "Too many requests", headers={"Retry-After": "1"})
            rng = self._rng
            if config.fail_rate and rng.random() < config.fail_rate:
                status = "503"
                return _error(503, "Service unavailable")
            if config.latency_ms is not None:
                await asyncio.sleep(rng.uniform(*config.latency_ms) / 1000)
            try:
                answer = self._apply(request.path_params, endpoint, body)
            except _BadRequest as exc:
                status = "400"
                return _error(400, str(exc))
            if config.drop_rate and rng.random() < config.drop_rate:
                # counted before the close: a client that has seen the drop must see it counted
                self._count("dropped")
                status = ""
                return await _drop_connection(request)
            status = "202"
            return Response(answer, status_code=202, media_type="application/json")
        finally:
            self._in_flight -= 1
            self._in_flight_ids.pop(number, None)
            if status:
                self._count(status)

    def _count(self, status: str) -> None:
        with self.lock:
            by_status = self.counters.requests_by_status
            by_status[status] = by_status.get(status, 0) + 1

    async def read_profile(self, request: Request) -> Response:
        """GET .../profiles/{distinct_id}: the stored properties, or 404."""
        if not self._authorized(request):
            return _error(401, _UNAUTHORIZED)
        params = request.path_params
        version = params["version"]
        if version not in VERSIONS:
            return _error(400, _bad_version(version))
        distinct_id = params["distinct_id"]
        with self.lock:
            found = self.store.find(version, distinct_id, params["workspace"])
        if not found:
            return _error(404, f"Profile {distinct_id} not found")
        return _json(200, {"distinct_id": distinct_id, "properties": found[0]})

    async def stats_endpoint(self, request: Request) -> Response:
        """GET /_emulator/stats."""
        return _json(200, self.stats())

    async def reset_endpoint(self, request: Request) -> Response:
        """POST /_emulator/reset."""
        self.reset()
        return _json(200, {"reset": True})

    def _authorized(self, request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        expected = self.config.api_key
        return expected is None or hmac.compare_digest(key.encode(), expected.encode())

    def _apply(self, params: dict[str, Any], endpoint: str, body: Any) -> bytes:
        """Validate the whole request, apply it in one go, and return the 202 body."""
        if isinstance(body, _BadRequest):
            raise body
        version = params["version"]
        if version not in VERSIONS:
            raise _BadRequest(_bad_version(version))
        if endpoint == "batch":
            checked = _check_batch(body)
        else:
            checked = _single_as_batch(ENDPOINT_OPERATORS[endpoint], body)
        with self.lock:
            if self.config.sink:
                dropped = checked.dropping
            else:
                dropped = self._store_items(params["workspace"], version, checked.items)
            counters = self.counters
            counters.items_applied += checked.valid
            counters.items_dropped += dropped
            counters.items_refused += checked.refused
            ops_applied = counters.ops_applied
            for ops, count in checked.carried.items():
                for op in ops:
                    ops_applied[op] += count
        request_id = str(uuid.uuid4()).encode()
        if endpoint != "batch":
            return b'{"request_id":"' + request_id + b'"}'
        answers = b",".join(checked.answers)
        return b'{"request_id":"' + request_id + b'","batch":[' + answers + b"]}"

    def _store_items(self, workspace: str, version: str, items: list[dict[str, Any]]) -> int:
        """Apply checked items in one transaction; return how many had a value dropped."""
        dropped = 0
        with self.store.batch(workspace, version, items) as profiles:
            for item in items:
                distinct_id = item.get("distinct_id")
                if type(distinct_id) is not str or not distinct_id:
                    continue  # answered "invalid distinct_id"
                props = profiles.get(distinct_id)
                if props is None:
                    props = {}
                    if _apply_action(props, item["action"]):
                        dropped += 1
                    if props:  # a profile is created by its first stored value
                        profiles[distinct_id] = props
                elif _apply_action(props, item["action"]):
                    dropped += 1
        return dropped


def _bad_version(version: str) -> str:
    return f"version {version} is not allowed: use live or test"


class _CutShortResponse(Response):
    """A 202 head promising a body that never comes: the fallback way to drop an answer."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        raise ConnectionAbortedError("emulator: answer dropped on purpose (drop_rate)")


async def _drop_connection(request: Request) -> Response:
    """Close the client's connection with no answer at all, as a crashed server would."""
    # uvicorn's receive() is a method of its per-request cycle, which holds the transport;
    # ASGI offers no way to abort a connection, and closing it is the fault we emulate.
    cycle = getattr(request.receive, "__self__", None)
    close = getattr(getattr(cycle, "transport", None), "close", None)
    if not callable(close):  # not uvicorn: cut the answer short instead
        return _CutShortResponse()
    close()
    # Wait for uvicorn to notice, so it neither answers a 500 nor logs a missing response.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    return Response(status_code=202)  # never sent: the connection is gone


async def _not_found(request: Request, exc: Exception) -> Response:
    """Fyno-style body for unknown paths and methods."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return _error(status, f"Cannot {request.method} {request.url.path}")


def create_app(config: EmulatorConfig) -> Starlette:
    """The emulator as a Starlette app (its store opens and closes with the app's lifespan)."""
    emulator = _Emulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emulator.open()
        try:
            yield
        finally:
            emulator.close()

    prefix = "/v1/{workspace}/{version}/profiles"
    app = Starlette(
        routes=[
            Route(prefix + "/properties/{op}", emulator.write, methods=["POST"]),
            Route(prefix + "/{distinct_id:path}", emulator.read_profile, methods=["GET"]),
            Route("/_emulator/stats", emulator.stats_endpoint, methods=["GET"]),
            Route("/_emulator/reset", emulator.reset_endpoint, methods=["POST"]),
        ],
        exception_handlers={404: _not_found, 405: _not_found},
        lifespan=lifespan,
    )
    app.state.emulator = emulator
    return app


def _emulator_of(app: Starlette) -> _Emulator:
    emulator = app.state.emulator
    assert isinstance(emulator, _Emulator)
    return emulator


# --- serving ---------------------------------------------------------------------------------


class _UvicornServer(uvicorn.Server):
    """uvicorn's server, which reports when it accepts connections and leaves signals to us."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # In a thread uvicorn ignores signals anyway; in `serve` we install our own handlers,
        # because uvicorn re-raises the signal after shutting down, which would kill the CLI.
        yield


def _uvicorn_server(app: Starlette, on_started: Callable[[], None]) -> _UvicornServer:
    has_httptools = importlib.util.find_spec("httptools") is not None
    http: Literal["httptools", "h11"] = "httptools" if has_httptools else "h11"
    config = uvicorn.Config(
        app,
        http=http,
        lifespan="on",
        log_config=None,  # leave the host process's logging alone
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=_GRACEFUL_STOP_S,
        # longer than clients keep idle connections, so an idle close never races a request
        timeout_keep_alive=_KEEP_ALIVE_S,
    )
    return _UvicornServer(config, on_started)


def _bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A socket bound to host:port (0 = a free port), and the server's URL."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting on the same port must not wait for the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    return sock, f"http://{url_host}:{bound_port}"


def _run(server: _UvicornServer, sock: socket.socket) -> None:
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        runner.run(server.serve(sockets=[sock]))


class EmulatorServer:
    """The emulator served by uvicorn in a background thread, for tests and ``run --emulator``."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self._emulator = _emulator_of(self.app)
        self.url = ""
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start serving; return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        self._emulator.open()  # a bad --db fails here, in the caller's thread
        try:
            self._server, self._thread, self.url = self._start_thread()
        except BaseException:
            self._emulator.close()
            raise

    def _start_thread(self) -> tuple[_UvicornServer, threading.Thread, str]:
        sock, url = _bind(self.config.host, self.config.port)
        started = threading.Event()
        server = _uvicorn_server(self.app, started.set)
        self._error = None
        thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"fyno-emulator {url}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not started.wait(0.01):
            if not thread.is_alive():
                raise RuntimeError(
                    f"the emulator failed to start: {self._error!r}"
                ) from self._error
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(_GRACEFUL_STOP_S + 2)
                raise RuntimeError(f"the emulator did not start within {_START_TIMEOUT_S} s")
        return server, thread, url

    def _serve(self, server: _UvicornServer, sock: socket.socket) -> None:
        try:
            _run(server, sock)
        except BaseException as exc:  # reported by start(); a thread has no one else to tell
            self._error = exc
        finally:
            sock.close()

    def stop(self) -> None:
        """Stop serving, free the port and join the thread (in-flight requests may finish)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_GRACEFUL_STOP_S + 2)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        if thread.is_alive():
            raise RuntimeError("the emulator's server thread did not stop")
        self._server = self._thread = None

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_emulator/stats`` answers them."""
        return self._emulator.stats()

    def reset(self) -> None:
        """Forget profiles and counters, as ``POST /_emulator/reset`` does."""
        self._emulator.reset()

    def profile(
        self, distinct_id: str, version: str = "live", workspace: str | None = None
    ) -> dict[str, Any] | None:
        """The properties of one profile, or None when it does not exist."""
        return self._emulator.profile(distinct_id, version, workspace)


def serve(config: EmulatorConfig, on_ready: Callable[[str], None]) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; call ``on_ready(url)`` once serving."""
    app = create_app(config)
    emulator = _emulator_of(app)
    emulator.open()  # a bad --db fails before the port is taken
    try:
        sock, url = _bind(config.host, config.port)
    except BaseException:
        emulator.close()
        raise
    server = _uvicorn_server(app, lambda: on_ready(url))

    def stop(signum: int, frame: object) -> None:
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for in-flight requests
        server.should_exit = True

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, stop)
    try:
        _run(server, sock)
    finally:
        sock.close()
        emulator.close()  # already closed by the app's lifespan, unless startup failed
        for handled, handler in previous.items():
            signal.signal(handled, handler)
