"""The emulator as a Starlette app: its state, its counters and its endpoints.

Owns ``Emulator`` (config, store, counters, fault draws, the requests in flight), the order of a
write request's steps (key, rate limit, failure, latency, checks, applying, dropped answer),
Fyno's error bodies and ``create_app``. Leans on ``rules`` for what a request means, ``stores``
for where profiles live and ``faults`` for misbehaving; knows nothing of uvicorn.

All requests run on the server's event loop, and each is checked and applied synchronously
between two awaits, which makes it atomic towards the others; the lock guards store and
counters only because ``EmulatorServer.stats()`` and ``.profile()`` read them from the caller's
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from importer.emulator.config import EmulatorConfig
from importer.emulator.faults import Draws, TokenBucket, drop_connection
from importer.emulator.rules import (
    ENDPOINT_OPERATORS,
    OPERATORS,
    VERSIONS,
    BadRequest,
    apply_items,
    bad_version,
    check_batch,
    distinct_ids,
    single_as_batch,
)
from importer.emulator.stores import MemoryStore, SqliteStore, Store

_UNAUTHORIZED: Final = "Invalid API details"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"_message": message, "status": "error"})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _json(status: int, content: Any) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


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


class Emulator:
    """The state behind the app: config, store, counters, fault draws."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store: Store = SqliteStore(config.db) if config.db is not None else MemoryStore()
        self.lock = threading.Lock()  # store and counters, against readers in other threads
        self.counters = _Counters()
        self._draws = Draws(config)
        self._bucket = TokenBucket(config.rate_limit)
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
            self._draws = Draws(self.config)
            self._bucket.refill()

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

    def _count(self, status: str) -> None:
        with self.lock:
            by_status = self.counters.requests_by_status
            by_status[status] = by_status.get(status, 0) + 1

    # -- endpoints

    async def write(self, request: Request) -> Response:
        """POST .../profiles/properties/{batch|op}: the fault steps, then check and apply."""
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
            body = _parse(raw)
            if endpoint == "batch":
                number = self._arrive(distinct_ids(body))
            elif type(body) is dict and type(did := body.get("distinct_id")) is str and did:
                number = self._arrive({did})
            if self.config.rate_limit and not self._bucket.take():
                status = "429"
                return _error(429, "Too many requests", headers={"Retry-After": "1"})
            draws = self._draws  # this request's, even if a reset comes during its latency
            if draws.fails():
                status = "503"
                return _error(503, "Service unavailable")
            delay = draws.latency_s()
            if delay is not None:
                await asyncio.sleep(delay)
            try:
                answer = self._apply(request.path_params, endpoint, body)
            except BadRequest as exc:
                status = "400"
                return _error(400, str(exc))
            if draws.drops():
                # counted before the close: a client that has seen the drop must see it counted
                self._count("dropped")
                status = ""
                return await drop_connection(request)
            status = "202"
            return Response(answer, status_code=202, media_type="application/json")
        finally:
            self._in_flight -= 1
            self._in_flight_ids.pop(number, None)
            if status:
                self._count(status)

    async def read_profile(self, request: Request) -> Response:
        """GET .../profiles/{distinct_id}: the stored properties, or 404."""
        if not self._authorized(request):
            return _error(401, _UNAUTHORIZED)
        params = request.path_params
        version = params["version"]
        if version not in VERSIONS:
            return _error(400, bad_version(version))
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
        """Check the whole request, apply it in one go, and return the 202 body."""
        if isinstance(body, BadRequest):
            raise body
        version = params["version"]
        if version not in VERSIONS:
            raise BadRequest(bad_version(version))
        if endpoint == "batch":
            checked = check_batch(body)
        else:
            checked = single_as_batch(ENDPOINT_OPERATORS[endpoint], body)
        with self.lock:
            if self.config.sink:
                dropped = checked.dropping
            else:
                with self.store.batch(params["workspace"], version, checked.items) as profiles:
                    dropped = apply_items(profiles, checked.items)
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


def _parse(raw: bytes) -> Any:
    """The JSON body, or the ``BadRequest`` to answer once the fault steps have passed."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return BadRequest("Request body is not valid JSON")


async def _not_found(request: Request, exc: Exception) -> Response:
    """Fyno-style body for unknown paths and methods."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return _error(status, f"Cannot {request.method} {request.url.path}")


def create_app(config: EmulatorConfig) -> Starlette:
    """The emulator as a Starlette app (its store opens and closes with the app's lifespan)."""
    emulator = Emulator(config)

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


def emulator_of(app: Starlette) -> Emulator:
    """The state behind an app made by ``create_app``."""
    emulator = app.state.emulator
    assert isinstance(emulator, Emulator)
    return emulator
