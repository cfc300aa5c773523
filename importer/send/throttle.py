"""The shared schedule of request starts, and how it adapts to 429 answers."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final


class Throttle:
    """The shared schedule of request starts, adapting to 429 answers.

    Starts are spaced ``1 / rate`` apart (no burst), so with a configured limit R there are never
    more than R starts per second. ``rate`` None means no limit.

    - **Cut.** A 429 for a request that started after the last cut (so it reflects the current
      rate, not an older one) sets the rate to ``CUT`` times the rate of answers that were not
      429 over the last ``WINDOW`` seconds: the best estimate of what the server grants. A cut
      never raises the rate, never goes below ``FLOOR``, and at most halves it (an estimate taken
      after an idle spell would be far too low). Without a configured limit the throttle
      switches on at the first 429, at ``CUT`` times the higher of the accepted and the started
      rate: answers lag starts, so early on the accepted rate undercounts, and a rate too high is
      cut again by the next 429 within moments while one too low takes long to climb back.
    - **Raise.** After ``RAISE_EVERY`` seconds without any 429 and without a change, the rate
      grows by ``RAISE``, up to the configured limit. Without one it keeps growing and switches
      off once it is well above the rate actually used (``OFF`` times it): it no longer binds.

    Against a token bucket of 20 requests/s (burst 20, ``Retry-After: 1``) this settles within
    about 3 s and then accepts about R with about 0.5 % of requests answered 429 (see
    ``test_sender_adapts_to_a_server_rate_limit``).
    """

    WINDOW: Final = 2.0
    CUT: Final = 0.9
    FLOOR: Final = 1.0
    RAISE: Final = 1.05
    RAISE_EVERY: Final = 2.0
    OFF: Final = 1.5
    OFF_MIN_STARTS: Final = 10
    _EPSILON: Final = 1e-9

    def __init__(
        self,
        limit: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.limit: float | None = limit if limit > 0 else None
        self.rate: float | None = self.limit
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._last_start = -math.inf
        self._starts: deque[float] = deque()  # start times within the window
        self._answers: deque[float] = deque()  # times of non-429 answers within the window
        self._first_start: float | None = None
        self._last_429 = -math.inf
        self._last_cut = -math.inf
        self._last_change = -math.inf

    def try_acquire(self) -> float | None:
        """A start time if a request may start right now without waiting, else None."""
        if self._lock.locked():
            return None
        now = self._clock()
        self._adapt(now)
        if self.rate is not None and self._last_start + 1 / self.rate - now > self._EPSILON:
            return None
        return self._grant(now)

    async def acquire(self) -> float:
        """Wait for this request's turn to start; return its start time."""
        async with self._lock:  # FIFO: waiters start in the order they asked
            while True:
                now = self._clock()
                self._adapt(now)
                if self.rate is None:
                    break
                wait = self._last_start + 1 / self.rate - now
                if wait <= self._EPSILON:
                    break
                await self._sleep(wait)  # then look again: the rate may have been cut meanwhile
            return self._grant(now)

    def answered(self, started: float, *, too_many: bool) -> None:
        """Take note of an HTTP answer to a request started at ``started``."""
        now = self._clock()
        if not too_many:
            self._answers.append(now)
            return
        self._last_429 = now
        if started < self._last_cut:
            return  # sent before the last cut: that cut already answered this overshoot
        if self.rate is None:  # switching on: see the class docstring
            target = self.CUT * max(self.accepted_rate(now), self.started_rate(now))
        else:
            target = min(self.rate, max(self.CUT * self.accepted_rate(now), self.rate / 2))
        self.rate = max(self.FLOOR, target)
        self._last_cut = now
        self._last_change = now

    def accepted_rate(self, now: float) -> float:
        """Answers per second that were not 429, over the last window."""
        return self._per_second(self._answers, now)

    def started_rate(self, now: float) -> float:
        """Request starts per second over the last window."""
        return self._per_second(self._starts, now)

    def _per_second(self, times: deque[float], now: float) -> float:
        while times and times[0] < now - self.WINDOW:
            times.popleft()
        if self._first_start is None:
            return 0.0
        # Early in a run the window is not full yet; a floor of 1 s keeps a burst the server
        # allowed at first from passing for a sustained rate.
        span = min(self.WINDOW, max(1.0, now - self._first_start))
        return len(times) / span

    def _grant(self, now: float) -> float:
        self._last_start = now
        self._starts.append(now)
        if self._first_start is None:
            self._first_start = now
        return now

    def _adapt(self, now: float) -> None:
        if self.rate is None or now - max(self._last_429, self._last_change) < self.RAISE_EVERY:
            return
        self._last_change = now
        if self.limit is not None:
            self.rate = min(self.limit, self.rate * self.RAISE)
            return
        self.rate *= self.RAISE
        # Off once the limit clearly no longer binds. Too few starts in the window say nothing
        # (a binding limit of 1/s shows 1 or 2 of them).
        used = self.started_rate(now)
        if len(self._starts) >= self.OFF_MIN_STARTS and self.rate >= self.OFF * used:
            self.rate = None
