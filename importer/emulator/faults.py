"""The ways the emulator misbehaves on purpose: rate limit, failures, latency, dropped answers.

Owns the token bucket, the seeded draws that decide which request fails, waits or loses its
answer, and closing a connection without an answer. Knows nothing of Fyno's rules,
profiles or counters: the app asks, in the order of its steps, and does the counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from importer.emulator.config import EmulatorConfig


class TokenBucket:
    """R requests/s, holding at most R tokens: at least 1, or a burst below one would refuse all."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self.refill()

    def refill(self) -> None:
        """Fill the bucket, as at start."""
        self._tokens = self._capacity
        self._refilled = time.monotonic()

    def take(self) -> bool:
        """Take one request's token from the bucket, if there is one."""
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Draws:
    """The fault draws, all from one ``random.Random(seed)``.

    Each draw is made only when its fault is on, in the order of a request's steps (fail,
    latency, drop), so a seeded run with sequential requests repeats itself. A reset makes new
    draws; a request in flight keeps its own, so it cannot shift the fresh sequence.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)

    def fails(self) -> bool:
        """Whether this request is answered 503, nothing applied."""
        rate = self._config.fail_rate
        return bool(rate) and self._rng.random() < rate

    def latency_s(self) -> float | None:
        """The seconds to wait before applying this request, or None."""
        latency_ms = self._config.latency_ms
        if latency_ms is None:
            return None
        return self._rng.uniform(*latency_ms) / 1000

    def drops(self) -> bool:
        """Whether this applied request loses its answer."""
        rate = self._config.drop_rate
        return bool(rate) and self._rng.random() < rate


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


async def drop_connection(request: Request) -> Response:
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
