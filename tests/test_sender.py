"""Tests of the async sender against httpx.MockTransport servers.

Most tests run on an event loop with a virtual clock: ``asyncio.sleep`` and ``loop.time()`` move
in simulated time that jumps straight to the next timer, so backoffs, ``Retry-After`` waits and a
25-second rate-limit run take milliseconds of real time. The sender is given ``loop.time`` as its
clock and a recording wrapper of ``asyncio.sleep`` as its sleep.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import random
import selectors
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from importer.errors import AuthError, LedgerWriteError
from importer.model import Chunk, ChunkOutcome, ChunkStatus, ItemError
from importer.send import SendConfig, Sender, SendStats, parse_retry_after

T = TypeVar("T")
URL = "https://api.test/v1/WS/live/profiles/properties/batch"
API_KEY = "sekrit-key-0123456789"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


# -- a loop whose clock is virtual ---------------------------------------------------------------


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for the next timer moves the virtual clock forward instead."""

    def __init__(self, now: list[float]) -> None:
        super().__init__()
        self._now = now

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("virtual clock: nothing is scheduled, the test would hang")
        self._now[0] += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is simulated; sleeping costs no real time."""

    def __init__(self) -> None:
        self._now = [0.0]
        super().__init__(_VirtualSelector(self._now))

    def time(self) -> float:
        return self._now[0]


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]  # an Awaitable, not a Coroutine


# -- fixtures ----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A ledger stand-in that remembers every call, in order."""

    fail_in_flight: set[str] = field(default_factory=set)
    in_flight: list[str] = field(default_factory=list)
    outcomes: dict[str, ChunkOutcome] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)

    def record_in_flight(self, chunk: Chunk) -> None:
        if chunk.chunk_id in self.fail_in_flight:
            raise LedgerWriteError("disk full")
        self.in_flight.append(chunk.chunk_id)
        self.events.append(("in_flight", chunk.chunk_id))

    def record_outcome(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        self.outcomes[chunk.chunk_id] = outcome
        self.events.append((outcome.status.value, chunk.chunk_id))

    def record_waiting(self, chunk: Chunk, error: str) -> None:
        self.events.append(("waiting", chunk.chunk_id))


def make_chunk(n: int, *, group: int | None = None, has_add: bool = False) -> Chunk:
    """A two-item chunk whose first distinct_id names it, so a handler can tell chunks apart.

    Chunks of one ``group`` share a profile (``shared-G``): the sender must send them one after
    the other, in order; chunks without a group share none.
    """
    shared = [f"c{n}-G{group}-0", f"shared-{group}"]
    ids = [f"c{n}-a", f"c{n}-b"] if group is None else shared
    op = "$add" if has_add else "$set"
    items = [{"distinct_id": i, "action": {op: {"logins": 1, "k": n}}} for i in ids]
    body = json.dumps({"batch": items}, separators=(",", ":")).encode()
    return Chunk.of(
        chunk_id=f"c{n}",
        seq=n,
        body=body,
        rows=[2 * n + 1, 2 * n + 2],
        distinct_ids=ids,
        source="users.csv",
        has_add=has_add,
    )


def chunk_id_of(request: httpx.Request) -> str:
    """The chunk a request carries (from its first distinct_id)."""
    first: str = json.loads(request.content)["batch"][0]["distinct_id"]
    return first.split("-")[0]


def group_of(request: httpx.Request) -> int:
    """The group of a request built by ``make_chunk(n, group=G)``."""
    return int(json.loads(request.content)["batch"][0]["distinct_id"].split("-")[1][1:])


def accepted(request: httpx.Request, **statuses: str) -> httpx.Response:
    """A 202 answer like Fyno's, every operator "ok" unless overridden per item index."""
    items = json.loads(request.content)["batch"]
    batch = [
        {op: statuses.get(str(i), "ok") for op in item["action"]} for i, item in enumerate(items)
    ]
    return httpx.Response(202, json={"request_id": f"req-{chunk_id_of(request)}", "batch": batch})


async def source(chunks: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    """An async iterable of chunks, as the pipeline gives them."""
    for chunk in chunks:
        yield chunk


@dataclass
class Run:
    """What a send left behind."""

    stats: SendStats
    recorder: Recorder
    sender: Sender
    requests: list[httpx.Request]
    sleeps: list[float]
    retries: list[tuple[str, str]]
    outcomes: list[tuple[str, ChunkOutcome]]


async def send(
    handler: Handler,
    chunks: Iterable[Chunk] | AsyncIterator[Chunk],
    *,
    recorder: Recorder | None = None,
    on_sender: Callable[[Sender], object] | None = None,
    **config: Any,
) -> Run:
    """Send chunks through a Sender to a MockTransport handler; the sender's clock is the loop's."""
    loop = asyncio.get_running_loop()
    recorder = recorder or Recorder()
    requests: list[httpx.Request] = []
    sleeps: list[float] = []
    retries: list[tuple[str, str]] = []
    outcomes: list[tuple[str, ChunkOutcome]] = []

    async def logged(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return await handler(request)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    config.setdefault("max_retries", 3)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(logged), headers=headers) as client:
        sender = Sender(
            client,
            url=URL,
            config=SendConfig(**config),
            recorder=recorder,
            on_outcome=lambda c, o: outcomes.append((c.chunk_id, o)),
            on_retry=lambda c, why: retries.append((c.chunk_id, why)),
            sleep=sleep,
            clock=loop.time,
            rng=random.Random(7),
        )
        if on_sender is not None:
            on_sender(sender)
        iterable = source(chunks) if not isinstance(chunks, AsyncIterator) else chunks
        stats = await sender.send_all(iterable)
    return Run(stats, recorder, sender, requests, sleeps, retries, outcomes)


def answers(*replies: int | Exception) -> Handler:
    """A handler giving these statuses (or raising these errors) in turn, then 202s."""
    queue = list(replies)

    async def handler(request: httpx.Request) -> httpx.Response:
        reply = queue.pop(0) if queue else 202
        if isinstance(reply, Exception):
            raise reply
        if reply == 202:
            return accepted(request)
        return httpx.Response(reply, json={"_message": f"status {reply}", "status": "error"})

    return handler


# -- answers and outcomes ----------------------------------------------------------------------


def test_accepted_chunk_is_recorded_with_its_request_id_and_counted_once() -> None:
    """A 202 records the chunk accepted with Fyno's request_id; items and bytes count once."""
    chunk = make_chunk(1)

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and str(request.url) == URL
        assert request.headers["content-type"] == "application/json"
        assert request.extensions["timeout"]["read"] == 12.5
        assert request.content == chunk.body
        return accepted(request)

    run = run_virtual(lambda: send(handler, [chunk], timeout=12.5))
    outcome = run.recorder.outcomes["c1"]
    assert outcome == ChunkOutcome(
        status=ChunkStatus.ACCEPTED, attempts=1, http_status=202, request_id="req-c1"
    )
    assert run.recorder.events == [("in_flight", "c1"), ("accepted", "c1")]
    assert run.outcomes == [("c1", outcome)]
    assert run.stats == SendStats(chunks_accepted=1, items_sent=2, bytes_sent=len(chunk.body))


def test_item_errors_are_recorded_but_the_chunk_stays_accepted() -> None:
    """Per-item statuses other than "ok" become item errors; the chunk is accepted, not resent."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return accepted(request, **{"1": "invalid_value"})

    run = run_virtual(lambda: send(handler, [make_chunk(1, has_add=True)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.ACCEPTED
    assert [(e.index, e.operator, e.status) for e in outcome.item_errors] == [
        (1, "$add", "invalid_value")
    ]
    assert run.stats.item_errors == 1 and run.stats.items_sent == 2
    assert len(run.requests) == 1


def test_400_is_refused_with_the_api_message_and_not_retried() -> None:
    """A 400 ends the chunk refused, with Fyno's _message (truncated), after one request."""
    long_message = "$set has object/keys that is not allowed " + "x" * 500

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"_message": long_message, "status": "error"})

    run = run_virtual(lambda: send(handler, [make_chunk(1)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.REFUSED and outcome.http_status == 400
    assert outcome.error is not None and outcome.error.startswith("$set has object/keys")
    assert len(outcome.error) <= 300
    assert len(run.requests) == 1 and run.stats.chunks_refused == 1 and run.stats.retries == 0


def test_other_client_errors_are_refused_without_retry() -> None:
    """A 404 or 422 cannot be cured by resending: refused after one request."""
    run = run_virtual(lambda: send(answers(404, 422), [make_chunk(1), make_chunk(2)]))
    assert {o.status for o in run.recorder.outcomes.values()} == {ChunkStatus.REFUSED}
    assert {o.http_status for o in run.recorder.outcomes.values()} == {404, 422}
    assert len(run.requests) == 2


@pytest.mark.parametrize("has_add", [False, True], ids=["idempotent", "with-add"])
def test_503_then_202_is_retried_and_accepted(has_add: bool) -> None:
    """A 503 (nothing applied) is retried for any chunk, and the retry counts once."""
    run = run_virtual(lambda: send(answers(503), [make_chunk(1, has_add=has_add)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.ACCEPTED and outcome.attempts == 2
    if has_add:  # marked waiting (resendable after a crash), then in flight again for the retry
        assert run.recorder.events == [
            ("in_flight", "c1"),
            ("waiting", "c1"),
            ("in_flight", "c1"),
            ("accepted", "c1"),
        ]
    else:
        assert run.recorder.in_flight == ["c1"]  # recorded once, not per try
    assert run.stats.retries == 1 and run.stats.items_sent == 2
    assert run.retries == [("c1", "HTTP 503: status 503")]


MAYBE_APPLIED: list[int | Exception] = [
    502,
    504,
    408,
    httpx.ReadTimeout("timed out"),
    httpx.WriteTimeout("timed out"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("connection reset"),
    httpx.WriteError("broken pipe"),
]
SURELY_NOT_APPLIED: list[int | Exception] = [
    429,
    500,
    503,
    httpx.ConnectError("connection refused"),
    httpx.ConnectTimeout("timed out"),
    httpx.PoolTimeout("timed out"),
]


def _name(reply: int | Exception) -> str:
    return str(reply) if isinstance(reply, int) else type(reply).__name__


@pytest.mark.parametrize("reply", MAYBE_APPLIED, ids=_name)
def test_add_chunk_whose_fate_is_unknown_is_ambiguous_after_one_request(
    reply: int | Exception,
) -> None:
    """After a 502/504/408, a timeout or a dropped connection, a $add chunk is never resent."""
    run = run_virtual(lambda: send(answers(reply), [make_chunk(1, has_add=True)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.AMBIGUOUS
    assert outcome.attempts == 1 and len(run.requests) == 1
    assert outcome.http_status == (reply if isinstance(reply, int) else None)
    assert outcome.error is not None and "$add is not resent" in outcome.error
    assert run.stats.chunks_ambiguous == 1 and run.stats.retries == 0


def test_ambiguous_error_says_why() -> None:
    """The ambiguous outcome explains itself: the body was sent, so it may have been applied."""
    run = run_virtual(lambda: send(answers(httpx.ReadTimeout("x")), [make_chunk(1, has_add=True)]))
    assert run.recorder.outcomes["c1"].error == (
        "read timeout after the body was sent (ReadTimeout: x): "
        "may have been applied; $add is not resent"
    )


@pytest.mark.parametrize("reply", MAYBE_APPLIED, ids=_name)
def test_idempotent_chunk_is_retried_after_any_transient_failure(reply: int | Exception) -> None:
    """Without $add, resending is harmless: the same failures are retried and end accepted."""
    run = run_virtual(lambda: send(answers(reply), [make_chunk(1)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.ACCEPTED and outcome.attempts == 2
    assert len(run.requests) == 2


@pytest.mark.parametrize("reply", SURELY_NOT_APPLIED, ids=_name)
def test_add_chunk_is_retried_when_it_surely_was_not_applied(reply: int | Exception) -> None:
    """429, 500, 503 and errors before sending (connect, pool) are safe to resend with $add."""
    run = run_virtual(lambda: send(answers(reply), [make_chunk(1, has_add=True)]))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.ACCEPTED and outcome.attempts == 2


def test_retries_exhausted_end_failed_with_the_last_status() -> None:
    """After max_retries retries the chunk is failed, with every try counted."""
    run = run_virtual(lambda: send(answers(*[503] * 10), [make_chunk(1)], max_retries=4))
    outcome = run.recorder.outcomes["c1"]
    assert outcome.status is ChunkStatus.FAILED
    assert outcome.attempts == 5 and len(run.requests) == 5
    assert outcome.http_status == 503
    assert outcome.error == "gave up after 5 tries: HTTP 503: status 503"
    assert run.stats.retries == 4 and run.stats.chunks_failed == 1 and run.stats.items_sent == 0


def test_backoff_is_exponential_with_full_jitter() -> None:
    """Each backoff wait lies in [0, min(max, base * 2**n)]."""
    run = run_virtual(
        lambda: send(
            answers(*[500] * 8),
            [make_chunk(1)],
            max_retries=7,
            backoff_base=0.5,
            backoff_max=4.0,
        )
    )
    caps = [min(4.0, 0.5 * 2**n) for n in range(7)]
    backoffs = run.sleeps
    assert len(backoffs) == 7
    assert all(0 <= wait <= cap for wait, cap in zip(backoffs, caps, strict=True))
    assert len(set(backoffs)) == 7  # jittered, not a fixed ladder


def _retry_after_reply(value: str) -> Handler:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"Retry-After": value})
        return accepted(request)

    return handler


def test_retry_after_in_seconds_is_honoured() -> None:
    """A 429 with Retry-After: 7 waits at least 7 s before the retry."""
    run = run_virtual(lambda: send(_retry_after_reply("7"), [make_chunk(1, has_add=True)]))
    assert run.recorder.outcomes["c1"].status is ChunkStatus.ACCEPTED
    assert max(run.sleeps) >= 7.0
    assert run.stats.requests_429 == 1


def test_retry_after_as_http_date_is_honoured() -> None:
    """A Retry-After HTTP date 40 s ahead makes the retry wait about that long."""
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    run = run_virtual(lambda: send(_retry_after_reply(when), [make_chunk(1)]))
    assert run.recorder.outcomes["c1"].status is ChunkStatus.ACCEPTED
    assert 38.0 <= max(run.sleeps) <= 41.0


def test_parse_retry_after_reads_seconds_and_dates() -> None:
    """Seconds and HTTP dates are understood; junk is ignored; the past means no wait."""
    now = datetime(2024, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(" 1.5 ", now=now) == 1.5
    assert parse_retry_after("Fri, 01 Mar 2024 10:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Fri, 01 Mar 2024 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("nan", now=now) is None
    assert parse_retry_after(None) is None


# -- stopping the run --------------------------------------------------------------------------


def test_401_raises_auth_error_after_at_most_concurrency_requests() -> None:
    """A refused key stops the run: in-flight ones settle, queued chunks are never recorded."""
    recorder = Recorder()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(401, json={"_message": "Invalid API details", "status": "error"})

    chunks = [make_chunk(n) for n in range(40)]
    with pytest.raises(AuthError) as caught:
        run_virtual(lambda: send(handler, chunks, recorder=recorder, concurrency=4))
    assert str(caught.value) == (
        "the API refused the key or workspace (HTTP 401): "
        "check FYNO_API_KEY / --api-key-file and the workspace id"
    )
    assert API_KEY not in str(caught.value)
    assert 1 <= len(recorder.in_flight) <= 4  # never more than `concurrency` requests
    assert set(recorder.outcomes) == set(recorder.in_flight)  # the rest were never recorded
    for outcome in recorder.outcomes.values():
        assert outcome.status is ChunkStatus.FAILED and outcome.http_status == 401
        assert outcome.error is not None and API_KEY not in outcome.error


def test_403_also_stops_the_run() -> None:
    """A 403 (workspace not allowed) is an authentication failure too."""
    with pytest.raises(AuthError, match=r"HTTP 403"):
        run_virtual(lambda: send(answers(403), [make_chunk(n, group=0) for n in range(3)]))


def test_ledger_write_error_stops_sending_and_is_raised() -> None:
    """A chunk that cannot be recorded is not sent; nothing new starts; in-flight ones settle."""
    recorder = Recorder(fail_in_flight={"c5"})
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(chunk_id_of(request))
        await asyncio.sleep(1.0)
        return accepted(request)

    chunks = [make_chunk(n) for n in range(30)]
    with pytest.raises(LedgerWriteError, match="disk full"):
        run_virtual(lambda: send(handler, chunks, recorder=recorder, concurrency=8))
    assert "c5" not in seen
    assert seen == recorder.in_flight == [f"c{n}" for n in range(5)]
    # The five already in flight got their answer and were recorded.
    assert all(recorder.outcomes[c].status is ChunkStatus.ACCEPTED for c in seen)


def test_failing_record_outcome_stops_the_run() -> None:
    """A ledger that cannot store an outcome stops new sends; the error is raised at the end."""

    class BrokenOutcomes(Recorder):
        def record_outcome(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
            raise LedgerWriteError("database is locked")

    recorder = BrokenOutcomes()
    chunks = [make_chunk(n, group=0) for n in range(5)]
    with pytest.raises(LedgerWriteError, match="locked"):
        run_virtual(lambda: send(answers(), chunks, recorder=recorder))
    assert recorder.in_flight == ["c0"]


def test_error_from_the_chunk_source_is_raised_after_in_flight_ones_settle() -> None:
    """A source that fails halfway stops new sends; sent chunks still get their outcome."""

    async def broken() -> AsyncIterator[Chunk]:
        yield make_chunk(0)
        yield make_chunk(1)
        raise ValueError("source went away")

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.5)
        return accepted(request)

    recorder = Recorder()
    with pytest.raises(ValueError, match="source went away"):
        run_virtual(lambda: send(handler, broken(), recorder=recorder))
    assert "c0" in recorder.in_flight
    assert set(recorder.outcomes) == set(recorder.in_flight)
    assert {o.status for o in recorder.outcomes.values()} == {ChunkStatus.ACCEPTED}


def test_stop_lets_in_flight_requests_finish_and_starts_nothing_new() -> None:
    """stop(): in-flight chunks are answered and recorded, waiting retries close as failed."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if chunk_id_of(request) == "c0":
            # c0 then waits for its retry when the stop comes
            return httpx.Response(503, headers={"Retry-After": "5"})
        await asyncio.sleep(1.0)
        return accepted(request)

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        return await send(
            handler,
            [make_chunk(n) for n in range(50)],
            concurrency=4,
            on_sender=lambda s: loop.call_at(0.5, s.stop),
        )

    run = run_virtual(main)
    assert run.sender.stopped
    started = {chunk_id_of(r) for r in run.requests}
    assert started == {"c0", "c1", "c2", "c3", "c4"}  # c4 took c0's slot during its backoff
    assert set(run.recorder.in_flight) == started
    assert all(run.recorder.outcomes[c].status is ChunkStatus.ACCEPTED for c in started - {"c0"})
    c0 = run.recorder.outcomes["c0"]
    assert c0.status is ChunkStatus.FAILED and c0.attempts == 1 and c0.http_status == 503
    assert run.stats.chunks_accepted == 4 and run.stats.chunks_failed == 1


def test_stop_before_sending_sends_nothing() -> None:
    """A sender stopped before send_all records and sends nothing."""
    run = run_virtual(
        lambda: send(answers(), [make_chunk(1)], on_sender=lambda sender: sender.stop())
    )
    assert run.requests == [] and run.recorder.events == []


def test_cancelling_send_all_leaves_in_flight_chunks_unrecorded() -> None:
    """A second Ctrl-C (cancellation) propagates at once; in-flight chunks stay in_flight."""
    recorder = Recorder()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5.0)
        return accepted(request)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(
            send(handler, [make_chunk(n) for n in range(10)], recorder=recorder, concurrency=3)
        )
        loop.call_at(1.0, task.cancel)
        await task

    with pytest.raises(asyncio.CancelledError):
        run_virtual(main)
    assert len(recorder.in_flight) == 3
    assert recorder.outcomes == {}


# -- order, concurrency and memory -------------------------------------------------------------


def group_chunks(groups: int, per_group: int, rng: random.Random) -> list[Chunk]:
    """Chunks of several groups (each group sharing one profile), randomly interleaved."""
    remaining = {g: per_group for g in range(groups)}
    out: list[Chunk] = []
    while remaining:
        group = rng.choice(sorted(remaining))
        remaining[group] -= 1
        if not remaining[group]:
            del remaining[group]
        out.append(make_chunk(len(out), group=group))
    return out


def test_chunks_sharing_a_profile_go_one_after_the_other_in_order() -> None:
    """With random latencies and retries, a chunk holding a profile starts only after every
    earlier chunk holding it has its final outcome; chunks of other profiles go meanwhile."""
    rng = random.Random(3)
    chunks = group_chunks(groups=6, per_group=15, rng=rng)
    seq_of = {c.chunk_id: (int(c.distinct_ids()[1].split("-")[1]), c.seq) for c in chunks}
    busy: dict[int, int] = {}
    in_flight = 0
    peak = 0
    problems: list[str] = []
    recorder = Recorder()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        chunk_id = chunk_id_of(request)
        group, seq = seq_of[chunk_id]
        if busy.get(group):
            problems.append(f"group {group}: {chunk_id} started beside another request")
        earlier = sorted(s for g, s in seq_of.values() if g == group and s < seq)
        done = sorted(seq_of[c][1] for c in recorder.outcomes if seq_of[c][0] == group)
        if done != earlier:
            problems.append(f"group {group}: {seq} started when only {done} had final outcomes")
        busy[group] = busy.get(group, 0) + 1
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(rng.uniform(0, 0.002))  # real time: a genuine interleaving
            if rng.random() < 0.2:
                return httpx.Response(503)
            return accepted(request)
        finally:
            in_flight -= 1
            busy[group] -= 1

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    async def main() -> SendStats:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            sender = Sender(
                client,
                url=URL,
                config=SendConfig(concurrency=4, max_retries=20),
                recorder=recorder,
                sleep=no_wait,
            )
            return await sender.send_all(source(chunks))

    stats = asyncio.run(main())
    assert problems == []
    assert stats.chunks_accepted == 90
    assert 1 < peak <= 4
    # Each group's outcomes were recorded in its order, and a chunk of a group was recorded in
    # flight only after the previous one had its outcome.
    for group in range(6):
        seqs = sorted(s for g, s in seq_of.values() if g == group)
        events = [(kind, seq_of[c][1]) for kind, c in recorder.events if seq_of[c][0] == group]
        assert events == [(k, s) for s in seqs for k in ("in_flight", "accepted")]


def test_requests_in_flight_never_exceed_concurrency() -> None:
    """Across many profiles, no more than `concurrency` requests are ever in flight."""
    in_flight = 0
    peak = 0
    rng = random.Random(5)

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(rng.uniform(0.01, 0.2))
        in_flight -= 1
        return accepted(request) if rng.random() < 0.8 else httpx.Response(500)

    chunks = group_chunks(groups=40, per_group=5, rng=rng)
    run = run_virtual(lambda: send(handler, chunks, concurrency=3, max_retries=30))
    assert peak == 3
    assert run.stats.chunks_accepted == 200


def test_a_huge_source_is_not_read_far_ahead_of_sending() -> None:
    """Chunks are pulled only when there is room: at most 2 × concurrency held at any time."""
    concurrency = 4
    recorder = Recorder()
    pulled = 0
    most_held = 0

    async def endless() -> AsyncIterator[Chunk]:
        nonlocal pulled, most_held
        for n in range(10**9):
            most_held = max(most_held, pulled - len(recorder.outcomes))
            pulled += 1
            yield make_chunk(n, group=n % 16)

    rng = random.Random(9)

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        return accepted(request)

    async def main() -> Run:
        def stop_after_300(sender: Sender) -> None:
            original = recorder.record_outcome

            def record(chunk: Chunk, outcome: ChunkOutcome) -> None:
                original(chunk, outcome)
                if len(recorder.outcomes) >= 300:
                    sender.stop()

            recorder.record_outcome = record  # type: ignore[method-assign]

        return await send(
            handler,
            endless(),
            recorder=recorder,
            concurrency=concurrency,
            on_sender=stop_after_300,
        )

    run = run_virtual(main)
    assert run.stats.chunks_accepted >= 300
    assert most_held < 2 * concurrency
    assert pulled <= run.stats.chunks_accepted + 2 * concurrency


def test_chunk_is_recorded_in_flight_before_its_request_is_sent() -> None:
    """The ledger knows a chunk may have reached the API before any byte of it is sent."""
    recorder = Recorder()
    unrecorded: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        chunk_id = chunk_id_of(request)
        if chunk_id not in recorder.in_flight or chunk_id in recorder.outcomes:
            unrecorded.append(chunk_id)
        return accepted(request)

    run_virtual(lambda: send(handler, [make_chunk(n) for n in range(20)], recorder=recorder))
    assert unrecorded == []
    assert len(recorder.outcomes) == 20


def test_no_message_carries_the_key_even_if_the_server_echoes_it() -> None:
    """A server that echoes the Authorization header cannot put the key into the ledger."""

    async def handler(request: httpx.Request) -> httpx.Response:
        echoed = request.headers["authorization"]
        return httpx.Response(400, json={"_message": f"bad request from {echoed}"})

    run = run_virtual(lambda: send(handler, [make_chunk(1)]))
    error = run.recorder.outcomes["c1"].error
    assert error is not None and API_KEY not in error and "***" in error


# -- rate ---------------------------------------------------------------------------------------


def test_configured_rate_limit_is_never_exceeded() -> None:
    """With rate_limit R, request starts (retries included) are at least 1/R s apart."""
    starts: list[float] = []
    rng = random.Random(11)

    async def handler(request: httpx.Request) -> httpx.Response:
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.005)
        return accepted(request) if rng.random() < 0.9 else httpx.Response(503)

    chunks = [make_chunk(n, group=n % 32) for n in range(200)]
    run = run_virtual(
        lambda: send(handler, chunks, concurrency=8, rate_limit=10.0, backoff_base=0.01)
    )
    assert run.stats.chunks_accepted == 200
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-9
    # ...and the limit is used, not undershot.
    assert len(starts) / (starts[-1] - starts[0]) >= 9.5


@dataclass
class TokenBucketServer:
    """A Fyno stand-in limited like the emulator's --rate-limit: bucket of R/s, burst R."""

    rate: float
    latency: tuple[float, float]
    rng: random.Random
    tokens: float = 0.0
    updated: float = 0.0
    log: list[tuple[float, int, int]] = field(default_factory=list)  # time, group, status

    def __post_init__(self) -> None:
        self.tokens = self.rate

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        now = asyncio.get_running_loop().time()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        granted = self.tokens >= 1
        if granted:
            self.tokens -= 1
        self.log.append((now, group_of(request), 202 if granted else 429))
        await asyncio.sleep(self.rng.uniform(*self.latency))
        if granted:
            return accepted(request)
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"_message": "slow down"})


def endless_chunks(groups: int) -> AsyncIterator[Chunk]:
    """An endless source of one-item chunks of distinct profiles, labelled round-robin by group."""

    async def gen() -> AsyncIterator[Chunk]:
        n = 0
        while True:
            ids = [f"c{n}-G{n % groups}-0"]
            body = json.dumps({"batch": [{"distinct_id": ids[0], "action": {"$set": {"a": 1}}}]})
            yield Chunk.of(
                chunk_id=f"c{n}", seq=n, body=body.encode(), rows=[n + 1], distinct_ids=ids
            )
            n += 1

    return gen()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sender_adapts_to_a_server_rate_limit(
    seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against a 20 req/s token bucket, after 5 s warm-up: ≥ 90 % of R accepted, ≤ 2 % 429s."""
    rate, warm_up, end = 20.0, 5.0, 25.0
    server = TokenBucketServer(rate=rate, latency=(0.02, 0.08), rng=random.Random(seed))

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        return await send(
            server,
            endless_chunks(64),
            concurrency=8,
            on_sender=lambda s: loop.call_at(end, s.stop),
        )

    run = run_virtual(main)
    measured = [status for t, _, status in server.log if warm_up <= t < end]
    accepted_share = measured.count(202) / (end - warm_up) / rate
    share_429 = measured.count(429) / len(measured)
    with capsys.disabled():
        print(
            f"\n  rate-limit sim (seed {seed}): accepted {accepted_share:.1%} of R, "
            f"429 share {share_429:.2%} ({measured.count(429)} of {len(measured)}), "
            f"sender rate at the end {run.sender.rate:.1f}/s"
        )
    assert accepted_share >= 0.90
    assert share_429 <= 0.02
    assert run.stats.chunks_accepted >= 0.9 * rate * (end - warm_up)


def test_a_429_for_one_request_slows_every_sender_without_a_pause() -> None:
    """One request's 429 lowers the shared start rate for all requests; the others keep going."""
    limited_at: list[float] = []
    rate_after: list[float | None] = []
    starts: list[tuple[float, int]] = []
    senders: list[Sender] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        group = group_of(request)
        starts.append((loop.time(), group))
        if limited_at and not rate_after:  # the first start after the 429 was answered
            rate_after.append(senders[0].rate)
        await asyncio.sleep(0.01)
        if group == 0 and loop.time() >= 1.0 and not limited_at:
            limited_at.append(loop.time())
            return httpx.Response(429, headers={"Retry-After": "1"})
        return accepted(request)

    async def main() -> Run:
        loop = asyncio.get_running_loop()

        def watch(sender: Sender) -> None:
            assert sender.rate is None  # no limit configured: the limiter starts switched off
            senders.append(sender)
            loop.call_at(3.0, sender.stop)

        return await send(handler, endless_chunks(64), concurrency=4, on_sender=watch)

    run_virtual(main)
    assert rate_after and rate_after[0] is not None  # the shared limiter switched on
    limit = rate_after[0]
    t429 = limited_at[0]
    before = [t for t, _ in starts if t429 - 1.0 <= t < t429]
    after = [t for t, group in starts if t429 < t <= t429 + 1.0 and group != 0]
    assert len(before) > limit  # the unthrottled rate was higher than the new limit
    assert 0.8 * limit <= len(after) <= limit + 1  # the others slowed down, but kept going
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert min(gaps) >= 1 / limit - 1e-9


@pytest.mark.parametrize("limit", [0.0, 30.0], ids=["no-limit", "limit-30"])
def test_rate_recovers_after_a_lone_429(limit: float) -> None:
    """After one 429 the shared rate climbs back: to the configured limit, or off without one."""
    rates: list[float | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        now = asyncio.get_running_loop().time()
        await asyncio.sleep(0.05)
        if now >= 1.0 and not rates:
            rates.append(-1.0)  # marks the 429; the rate is sampled just after it
            return httpx.Response(429)
        return accepted(request)

    async def main() -> Run:
        loop = asyncio.get_running_loop()

        def watch(sender: Sender) -> None:
            loop.call_at(1.2, lambda: rates.append(sender.rate))
            loop.call_at(28.0, lambda: rates.append(sender.rate))
            loop.call_at(28.0, sender.stop)

        # Two in flight, 50 ms each: the server takes 40 requests/s.
        return await send(
            handler, endless_chunks(64), concurrency=2, rate_limit=limit, on_sender=watch
        )

    run_virtual(main)
    _, just_after, at_the_end = rates
    assert just_after is not None and just_after < (limit or 40.0)
    assert at_the_end == (limit or None)


def test_invalid_config_is_refused() -> None:
    """Nonsense settings fail at once rather than hang or spin."""
    with pytest.raises(ValueError, match="concurrency"):
        SendConfig(concurrency=0)
    with pytest.raises(ValueError, match="rate_limit"):
        SendConfig(rate_limit=-1)


@pytest.mark.parametrize(
    ("answer", "all_ok"),
    [
        (b'{"request_id":"r","batch":[{"$set":"ok","$add":"ok"},{"$unset":"ok"}]}', True),
        (b'{"request_id":"r","batch":[{"$set":"ok","$add":"refused"}]}', False),
        (b'{"request_id":"r","batch":[{"$set": "ok"}]}', False),  # spaced: checked item by item
        (b'{"request_id":"r","batch":[{"$set":"okay"}]}', False),
        (b'{"request_id":"r","batch":[{"$set":null}]}', False),
    ],
)
def test_the_all_ok_shortcut_never_hides_an_item_status(answer: bytes, all_ok: bool) -> None:
    """The byte-level "every status is ok" shortcut says yes only when that is true."""
    from importer.send.answers import _all_ok

    assert _all_ok(answer) is all_ok


def test_a_compact_all_ok_answer_gives_the_same_outcome_as_a_parsed_one() -> None:
    """Fyno's compact 202 is read on the bytes: same request id, no item errors, as when parsed."""
    from importer.send.answers import _accepted

    answer = {"request_id": "0f3c-91aa.7", "batch": [{"$set": "ok", "$add": "ok"}] * 3}
    compact = httpx.Response(202, content=orjson.dumps(answer))
    spaced = httpx.Response(202, json=answer)  # httpx writes ", " and ": ": the parsing path
    fast, parsed = _accepted(compact, 1), _accepted(spaced, 1)
    assert fast == parsed
    assert fast.request_id == "0f3c-91aa.7" and fast.item_errors == ()
    refused = dict(answer, batch=[{"$set": "ok", "$add": "wrong type"}])
    outcome = _accepted(httpx.Response(202, content=orjson.dumps(refused)), 1)
    assert outcome.item_errors == (ItemError(0, "$add", "wrong type"),)
