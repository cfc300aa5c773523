"""Sending what a reader thread produces: the bridge from that thread to the event loop.

polars builds the next chunks in a thread while the event loop sends: the thread puts typed
messages (``ChunkReady``, ``SourceChunked``, then ``ProducerDone`` or ``ProducerFailed``) on a small
bounded queue, and the loop hands chunks to the ``Sender``. Ctrl-C and SIGTERM stop the sender
gracefully (no new requests, in-flight ones settled); a second Ctrl-C stops waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from importer.events import ChunkSettled, Reporter, RetryScheduled, Stopping
from importer.ledger import Ledger
from importer.model import Chunk, ChunkOutcome, ChunkStatus
from importer.pipeline.building import SourceChunked
from importer.pipeline.summary import RunSummary
from importer.redact import redact
from importer.send import SendConfig, Sender, Target, make_client

_QUEUE_DEPTH = 8  # messages between the reader thread and the loop


@dataclass(frozen=True, slots=True)
class ChunkReady:
    """A chunk, in sending order (with its compressed form when it will be sent)."""

    chunk: Chunk


@dataclass(frozen=True, slots=True)
class ProducerDone:
    """The producer has nothing more."""


@dataclass(frozen=True, slots=True)
class ProducerFailed:
    """The producer stopped on an error, raised again on the event loop."""

    error: BaseException


Message = ChunkReady | SourceChunked | ProducerDone | ProducerFailed
Produce = Callable[[Callable[[Message], None], threading.Event], None]
OnMessage = Callable[[ChunkReady | SourceChunked], Chunk | None]


class LedgerRecorder:
    """Adapts the ledger to the sender's ChunkRecorder, and reports each chunk's outcome."""

    def __init__(self, ledger: Ledger, run_id: str, reporter: Reporter, *, secret: str) -> None:
        self.ledger, self.run_id, self.reporter = ledger, run_id, reporter
        self._secrets = (secret,)

    def record_in_flight(self, chunk: Chunk) -> None:
        """Write the chunk and its body before its request leaves."""
        self.ledger.record_in_flight(self.run_id, chunk, packed=chunk.packed)

    def record_waiting(self, chunk: Chunk, error: str) -> None:
        """A $add chunk surely not applied waits for its retry: resendable after a crash."""
        self.ledger.mark_waiting(self.run_id, chunk.chunk_id, redact(error, self._secrets))

    def record_outcome(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Write the final answer, then report it."""
        outcome = self._without_secret(outcome)
        self.ledger.record_outcome(self.run_id, chunk, outcome)
        self.reporter.emit(
            ChunkSettled(
                run_id=self.run_id,
                chunk_id=chunk.chunk_id,
                source=chunk.source,
                status=outcome.status,
                http_status=outcome.http_status,
                attempts=outcome.attempts,
                item_errors=len(outcome.item_errors),
                error=outcome.error,
            )
        )

    def _without_secret(self, outcome: ChunkOutcome) -> ChunkOutcome:
        """The outcome with the key cut out of every text the server chose.

        A server (or a proxy) that echoes the Authorization header can put the key into a
        request id or a per-item status of a 202, which the sender keeps verbatim; nothing of
        that may reach the ledger, or from there `ledger show` and `ledger export`.
        """

        def clean(text: str | None) -> str | None:
            return None if text is None else redact(text, self._secrets)

        return replace(
            outcome,
            request_id=clean(outcome.request_id),
            error=clean(outcome.error),
            item_errors=tuple(
                replace(e, operator=clean(e.operator) or "", status=clean(e.status) or "")
                for e in outcome.item_errors
            ),
        )


class _Bridge:
    """The bounded queue between the producing thread and the event loop."""

    def __init__(self, produce: Produce, on_message: OnMessage) -> None:
        self._produce = produce
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="fyno-import-reader", daemon=True)

    def start(self) -> None:
        """Start the producing thread."""
        self._thread.start()

    def _put(self, message: Message) -> None:
        """From the thread: wait for room, unless the run stops meanwhile."""
        future = asyncio.run_coroutine_threadsafe(self._queue.put(message), self._loop)
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.2)
                return
        future.cancel()

    def _work(self) -> None:
        try:
            self._produce(self._put, self.stop)
            self._put(ProducerDone())
        except BaseException as exc:  # handed to the event loop, raised there
            self._put(ProducerFailed(exc))

    async def chunks(self) -> AsyncIterator[Chunk]:
        """The chunks to send, as the producer puts them out."""
        while True:
            message = await self._queue.get()
            if isinstance(message, ProducerDone):
                return
            if isinstance(message, ProducerFailed):
                raise message.error
            chunk = self._on_message(message)
            if chunk is not None:
                yield chunk

    async def close(self) -> None:
        """Stop the producer and wait for its thread, unblocking a put on a full queue."""
        self.stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            await asyncio.sleep(0.01)


class _Interruptions:
    """Ctrl-C and SIGTERM while sending: a graceful stop first, then stop waiting."""

    def __init__(self, sender: Sender, bridge: _Bridge, reporter: Reporter) -> None:
        self._sender, self._bridge, self._reporter = sender, bridge, reporter
        self._loop = asyncio.get_running_loop()
        self._installed: dict[int, Any] = {}  # signal -> the Python handler to put back
        self.happened = False

    def _on_signal(self) -> None:
        if self.happened:  # a second Ctrl-C: stop waiting for in-flight answers
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            return
        self.happened = True
        self._reporter.emit(Stopping())
        self._sender.stop()
        self._bridge.stop.set()

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                previous = signal.getsignal(signum)
                self._loop.add_signal_handler(signum, self._on_signal)
                self._installed[signum] = previous

    def restore(self) -> None:
        """Give the signals back to the handlers they had."""
        for handled, previous in self._installed.items():
            self._loop.remove_signal_handler(handled)
            # remove_signal_handler leaves SIG_DFL behind, which would let a SIGTERM during
            # the last ledger writes kill the process without its summary
            if previous is not None:
                signal.signal(handled, previous)


async def send_produced(
    produce: Produce,
    on_message: OnMessage,
    *,
    target: Target,
    config: SendConfig,
    recorder: LedgerRecorder,
    reporter: Reporter,
    summary: RunSummary,
) -> bool:
    """Send what ``produce`` (run in a thread) puts out; counts go to the summary even when it
    fails part-way. Returns whether the run was stopped (Ctrl-C, SIGTERM)."""
    bridge = _Bridge(produce, on_message)
    async with make_client(target, config) as client:
        sender = Sender(
            client,
            url=target.batch_url,
            config=config,
            recorder=recorder,
            on_retry=lambda _chunk, reason: reporter.emit(RetryScheduled(reason)),
        )
        interruptions = _Interruptions(sender, bridge, reporter)
        interruptions.install()
        bridge.start()
        try:
            await sender.send_all(bridge.chunks())
        finally:
            summary.add_send_stats(sender.stats)
            await bridge.close()
            interruptions.restore()
        return interruptions.happened or sender.stopped


def settled_before(status: ChunkStatus | None) -> bool:
    """A chunk the ledger shows as settled in an earlier try: not sent again by `run`."""
    return status is not None and status.is_settled
