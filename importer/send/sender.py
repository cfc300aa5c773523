"""Sending chunks to the batch endpoint: bounded concurrency, per-profile order, retries, rate.

The sender is given an ``httpx.AsyncClient`` (auth header and base URL already on it) and never
builds one. ``Sender.send_all`` pulls chunks from an async iterable and POSTs each body:

    chunks ─▶ dispatcher ─▶ one task per chunk ─────────────▶ POST ─▶ recorder
             (takes room    (waits while an earlier          (slot, then a start
              before it      unsettled chunk shares one       token from the shared
              pulls)         of its profiles)                 rate limiter)

- **Order per profile.** Chunks arrive in import order. A chunk starts only once every earlier
  chunk that carries one of its profiles (``Chunk.id_keys``) has its final outcome, after all
  retries; chunks sharing no profile go in parallel, at most ``concurrency`` requests in flight.
  In the usual export, one row per profile, nothing waits. The check is a few set operations
  per chunk on the keys of the at most ``2 * concurrency`` chunks held (``_ProfileOrder``).
- **Bounded memory.** The dispatcher takes a unit of room *before* it pulls a chunk, so at most
  ``2 * concurrency`` chunks are held (waiting or being sent) however long the input is, each
  with one task.
- **Record before sending.** ``record_in_flight`` is called right before a chunk's first request
  (after its slot and start token were granted), ``record_outcome`` after its final answer.
- **Retries.** 429, 408, 5xx and transport errors are transient: retried with full-jitter
  exponential backoff, ``Retry-After`` honoured. A chunk carrying ``$add`` is resent only when it
  surely was not applied (429, 500, 503, or a connect/pool error before anything was sent);
  otherwise it ends ``ambiguous`` at once.
- **Rate.** One adaptive token schedule for request starts (retries included), shared by every
  chunk: a 429 lowers the rate for all of them, quiet periods raise it again (``Throttle``).
- **Stopping.** ``stop()`` starts no new request, lets in-flight requests get their answer and be
  recorded, closes chunks waiting for a retry as failed, and lets ``send_all`` return. A 401/403,
  a ``LedgerWriteError`` or an error from the chunk source does the same, then ``send_all``
  raises it. Cancelling ``send_all`` cancels everything at once and records nothing more.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Final, Protocol, TypeVar

import httpx

from importer.errors import AuthError, LedgerWriteError
from importer.model import Chunk, ChunkOutcome, ChunkStatus
from importer.redact import redact
from importer.send.answers import NOT_RESENT, Transient, classify, describe_error, transport_failure
from importer.send.options import SendConfig
from importer.send.throttle import Throttle

__all__ = [
    "ChunkRecorder",
    "SendConfig",
    "SendStats",
    "Sender",
]

T = TypeVar("T")

AUTH_MESSAGE: Final = (
    "the API refused the key or workspace (HTTP {status}): "
    "check FYNO_API_KEY / --api-key-file and the workspace id"
)
_JSON_HEADERS: Final = {"Content-Type": "application/json"}


class ChunkRecorder(Protocol):
    """Where chunk states go (the ledger, through an adapter in pipeline.py)."""

    def record_in_flight(self, chunk: Chunk) -> None:
        """Record that the chunk is about to be sent; LedgerWriteError means: do not send it."""
        ...

    def record_outcome(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Record the chunk's final outcome."""
        ...

    def record_waiting(self, chunk: Chunk, error: str) -> None:
        """Record that a $add chunk surely not applied waits for its retry (resendable after a
        crash); ``record_in_flight`` is called again right before the retry."""
        ...


@dataclass
class SendStats:
    """Running counts of one ``send_all`` call (read ``Sender.stats`` even after it raised)."""

    chunks_accepted: int = 0
    chunks_failed: int = 0
    chunks_refused: int = 0
    chunks_ambiguous: int = 0
    items_sent: int = 0  # items of accepted chunks, each counted once
    bytes_sent: int = 0  # body bytes of accepted chunks, each counted once
    retries: int = 0  # requests resent
    item_errors: int = 0  # per-item statuses other than "ok" in 202 answers
    requests_429: int = 0  # answers with HTTP 429


class _Halted:
    """Marker returned by a wait that was interrupted by a stop."""


_HALTED: Final = _Halted()


class Sender:
    """Sends chunks concurrently, in order per profile, and records each outcome."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        config: SendConfig,
        recorder: ChunkRecorder,
        on_outcome: Callable[[Chunk, ChunkOutcome], None] | None = None,
        on_retry: Callable[[Chunk, str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._url = url
        self._config = config
        self._recorder = recorder
        self._on_outcome = on_outcome
        self._on_retry = on_retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._throttle = Throttle(config.rate_limit, clock=clock, sleep=sleep)
        self.stopped = False  # stop() was called
        self.stats = SendStats()
        self._running = False
        self._halt = asyncio.Event()  # no new request may start (stop, auth, ledger or source)
        self._error: BaseException | None = None  # raised by send_all once in-flight ones settle
        self._slots = asyncio.Semaphore(config.concurrency)  # requests in flight
        self._room = asyncio.Semaphore(2 * config.concurrency)  # chunks held, queued or sending
        self._order = _ProfileOrder()

    @property
    def rate(self) -> float | None:
        """The current limit on request starts per second, or None when there is none."""
        return self._throttle.rate

    def stop(self) -> None:
        """Start no new request; in-flight ones get their answer and ``send_all`` returns."""
        self.stopped = True
        self._halt.set()

    async def send_all(self, chunks: AsyncIterable[Chunk]) -> SendStats:
        """Send every chunk; return the counts, or raise what stopped the run once settled."""
        if self._running:
            raise RuntimeError("send_all is already running on this Sender")
        self._running = True
        self.stats = SendStats()
        self._error = None
        self._halt = asyncio.Event()
        if self.stopped:
            self._halt.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                await self._dispatch(chunks.__aiter__(), tasks)
        finally:
            self._running = False
            self._order = _ProfileOrder()
        if self._error is not None:
            raise self._error
        return self.stats

    # -- dispatching --------------------------------------------------------------------------

    async def _dispatch(self, chunks: AsyncIterator[Chunk], tasks: asyncio.TaskGroup) -> None:
        """Pull chunks only when there is room for them, and start a task for each."""
        while True:
            if not self._room.locked():
                await self._room.acquire()  # free: returns without waiting
            elif isinstance(await self._unless_halted(self._room.acquire), _Halted):
                return
            if self._halt.is_set():
                self._room.release()
                return
            try:
                chunk = await self._unless_halted(partial(_next_or_none, chunks))
            except Exception as exc:  # the chunk source failed: settle, then raise it
                self._room.release()
                self._fail(exc)
                return
            if chunk is None or isinstance(chunk, _Halted):
                self._room.release()
                return
            held, earlier = self._order.admit(chunk)
            tasks.create_task(self._run_chunk(held, earlier))

    async def _run_chunk(self, held: _Held, earlier: list[asyncio.Event]) -> None:
        """Send one chunk once the earlier chunks sharing a profile with it have settled."""
        try:
            if earlier and not self._halt.is_set():
                await self._unless_halted(partial(_all_set, earlier))
            if not self._halt.is_set():
                await self._send_chunk(held.chunk)
        except Exception as exc:  # a bug or a failing callback: stop cleanly, raise it later
            self._fail(exc)
        finally:
            self._order.release(held)
            self._room.release()

    # -- one chunk ----------------------------------------------------------------------------

    async def _send_chunk(self, chunk: Chunk) -> None:
        """Send one chunk until it has a final outcome, or until the run stops."""
        attempts = 0
        last: Transient | None = None
        waiting = False  # recorded as waiting: record it in flight again before the retry
        while True:
            started = await self._start_request()
            if started is None:
                if last is not None:  # it was sent before: close it as failed, retry can resend
                    self._finish(chunk, self._stopped_outcome(attempts, last))
                return  # never sent: not recorded at all, it stays pending
            try:
                if attempts == 0 or waiting:
                    try:
                        self._recorder.record_in_flight(chunk)
                    except LedgerWriteError as exc:
                        self._fail(exc)
                        return
                    waiting = False
                if attempts:
                    self.stats.retries += 1
                attempts += 1
                result = await self._try_once(chunk, attempts, started)
            finally:
                self._slots.release()

            if isinstance(result, ChunkOutcome):
                self._finish(chunk, result)
                if result.http_status in (401, 403):
                    self._fail(AuthError(AUTH_MESSAGE.format(status=result.http_status)))
                return
            last = result
            if chunk.has_add and not last.resend_safe:
                self._finish(
                    chunk,
                    ChunkOutcome(
                        status=ChunkStatus.AMBIGUOUS,
                        attempts=attempts,
                        http_status=last.http_status,
                        error=f"{last.error}: {NOT_RESENT}",
                    ),
                )
                return
            if attempts > self._config.max_retries:
                self._finish(
                    chunk,
                    ChunkOutcome(
                        status=ChunkStatus.FAILED,
                        attempts=attempts,
                        http_status=last.http_status,
                        error=f"gave up after {attempts} tries: {last.error}",
                    ),
                )
                return
            if self._halt.is_set():
                self._finish(chunk, self._stopped_outcome(attempts, last))
                return
            if self._on_retry is not None:
                self._on_retry(chunk, self._redact(last.error))
            if chunk.has_add:  # surely not applied: a crash during the wait must not strand it
                try:
                    self._recorder.record_waiting(chunk, self._redact(last.error))
                except LedgerWriteError as exc:
                    self._fail(exc)
                    return
                waiting = True
            delay = self._backoff(attempts - 1, last.retry_after)
            if isinstance(await self._unless_halted(partial(self._sleep, delay)), _Halted):
                self._finish(chunk, self._stopped_outcome(attempts, last))
                return

    async def _start_request(self) -> float | None:
        """Take an in-flight slot, then a start token; None (holding nothing) if halted."""
        if self._halt.is_set():
            return None
        if self._slots.locked():
            if isinstance(await self._unless_halted(self._slots.acquire), _Halted):
                return None
        else:
            await self._slots.acquire()  # free: returns without waiting
        try:
            started = self._throttle.try_acquire()
            if started is None:
                waited = await self._unless_halted(self._throttle.acquire)
                started = None if isinstance(waited, _Halted) else waited
        except BaseException:
            self._slots.release()
            raise
        if started is None or self._halt.is_set():
            self._slots.release()
            return None
        return started

    async def _try_once(
        self, chunk: Chunk, attempt: int, started: float
    ) -> ChunkOutcome | Transient:
        """Send the body once and classify the answer."""
        try:
            response = await self._client.post(
                self._url, content=chunk.body, headers=_JSON_HEADERS, timeout=self._config.timeout
            )
        except httpx.TransportError as exc:
            return transport_failure(exc)
        except httpx.RequestError as exc:  # e.g. an undecodable answer: it did reach the API
            return ChunkOutcome(
                status=ChunkStatus.AMBIGUOUS if chunk.has_add else ChunkStatus.FAILED,
                attempts=attempt,
                error=f"unreadable answer ({describe_error(exc)})"
                + (f": {NOT_RESENT}" if chunk.has_add else ""),
            )
        status = response.status_code
        self._throttle.answered(started, too_many=status == 429)
        if status == 429:
            self.stats.requests_429 += 1
        return classify(response, attempt)

    # -- outcomes -----------------------------------------------------------------------------

    def _finish(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Count, record and report a chunk's final outcome."""
        if outcome.error is not None:
            outcome = replace(outcome, error=self._redact(outcome.error))
        stats = self.stats
        if outcome.status is ChunkStatus.ACCEPTED:
            stats.chunks_accepted += 1
            stats.items_sent += chunk.items
            stats.bytes_sent += len(chunk.body)
            stats.item_errors += len(outcome.item_errors)
        elif outcome.status is ChunkStatus.REFUSED:
            stats.chunks_refused += 1
        elif outcome.status is ChunkStatus.AMBIGUOUS:
            stats.chunks_ambiguous += 1
        else:
            stats.chunks_failed += 1
        try:
            self._recorder.record_outcome(chunk, outcome)
        except LedgerWriteError as exc:
            self._fail(exc)
        if self._on_outcome is not None:
            self._on_outcome(chunk, outcome)

    def _stopped_outcome(self, attempts: int, last: Transient) -> ChunkOutcome:
        return ChunkOutcome(
            status=ChunkStatus.FAILED,
            attempts=attempts,
            http_status=last.http_status,
            error=f"the run stopped before its retry; last try: {last.error}",
        )

    def _fail(self, exc: BaseException) -> None:
        """Keep the first error for send_all to raise, and start no new request."""
        if self._error is None:
            self._error = exc
        self._halt.set()

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """Full jitter: uniform(0, min(max, base * 2**retry)), but never less than Retry-After."""
        cap = min(self._config.backoff_max, self._config.backoff_base * 2.0 ** min(retry, 64))
        delay = self._rng.uniform(0.0, cap)
        return delay if retry_after is None else max(delay, retry_after)

    def _redact(self, text: str) -> str:
        """Belt and braces: no message may carry the key, even if a server echoed it."""
        auth = self._client.headers.get("authorization")
        return redact(text, [auth.split(" ", 1)[-1].strip()]) if auth else text

    async def _unless_halted(self, start: Callable[[], Awaitable[T]]) -> T | _Halted:
        """Await ``start()`` unless the run halts first (then it is cancelled)."""
        if self._halt.is_set():
            return _HALTED
        work = asyncio.ensure_future(start())
        halted = asyncio.ensure_future(self._halt.wait())
        try:
            await asyncio.wait((work, halted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        return _HALTED


@dataclass(slots=True)
class _Held:
    """A chunk the sender holds (waiting or being sent), with the event its settling sets."""

    chunk: Chunk
    settled: asyncio.Event


class _ProfileOrder:
    """Which held chunks carry which profiles, so a chunk waits only for earlier ones sharing one.

    ``_keys`` is the union of the held chunks' profile keys; ``_shared`` counts, for the rare key
    that more than one held chunk carries, how many do. The usual chunk (no profile in common
    with those held) costs two set operations when admitted and one when released.
    """

    def __init__(self) -> None:
        self._held: list[_Held] = []  # in the order admitted
        self._keys: set[int] = set()
        self._shared: dict[int, int] = {}

    def admit(self, chunk: Chunk) -> tuple[_Held, list[asyncio.Event]]:
        """Hold ``chunk``; the settled events of the earlier held chunks it must wait for."""
        keys = chunk.id_keys
        earlier: list[asyncio.Event] = []
        if not self._keys.isdisjoint(keys):
            common = self._keys & keys
            earlier = [h.settled for h in self._held if not h.chunk.id_keys.isdisjoint(common)]
            for key in common:
                self._shared[key] = self._shared.get(key, 1) + 1
        self._keys |= keys
        held = _Held(chunk, asyncio.Event())
        self._held.append(held)
        return held, earlier

    def release(self, held: _Held) -> None:
        """``held`` has its final outcome (or will not be sent): the chunks after it may go."""
        held.settled.set()
        self._held.remove(held)
        keys = held.chunk.id_keys
        shared = keys & self._shared.keys() if self._shared else set()
        for key in shared:
            count = self._shared[key] - 1
            if count > 1:
                self._shared[key] = count
            else:
                del self._shared[key]
        self._keys -= keys - shared if shared else keys


async def _all_set(events: list[asyncio.Event]) -> None:
    """Wait until every event is set."""
    for event in events:
        await event.wait()


async def _next_or_none(chunks: AsyncIterator[Chunk]) -> Chunk | None:
    """The next chunk, or None at the end (StopAsyncIteration does not cross a task well)."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
