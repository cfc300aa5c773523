"""Wiring the stages: sources → transform → chunker → sender → ledger, and the summary.

``validate``, ``preview``, ``run_import`` and ``retry_failed`` are the library's entry points; the
CLI only parses options and shows what they report through a ``Reporter``. Each fills a
``RunSummary`` that the caller created, so a failure part-way still leaves a truthful summary.

``run_import`` reads every source twice: pass 1 validates all of them (rejects file, reject rate)
before anything is sent; pass 2 rebuilds the same chunks and sends those the ledger does not show
as accepted. Pass 2 runs in a thread feeding a small queue, so polars builds the next chunks while
the event loop is sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
import polars as pl

from importer.chunker import Chunker, ChunkSettings, shard_of
from importer.config.settings import Settings
from importer.errors import (
    EmptySourceError,
    ImporterError,
    InsecureURLError,
    InterruptedRun,
    MappingError,
    RejectRateError,
    RunConflictError,
    SourceError,
    UsageError,
)
from importer.ledger import Ledger, PackedChunk, RunInfo, pack_chunk
from importer.mapping import Mapping
from importer.model import Chunk, ChunkOutcome, ChunkStatus
from importer.sender import SendConfig, Sender, SendStats
from importer.sources import ROW, Source, resolve_sources
from importer.transform import Transformer, TransformResult

READ_BATCH_ROWS = 50_000
TRANSFORM_AHEAD = 2  # batches transformed at once (this machine class has two cores)
API_VERSIONS = ("live", "test")
DEFAULT_BASE_URL = "https://api.fyno.io"
REJECT_COLUMNS = ["source", "row", "column", "reason", "values"]


# --- what the caller sees ---------------------------------------------------------------------


class Reporter(Protocol):
    """Where the library reports progress; the CLI draws it, tests may record it."""

    def notice(self, message: str) -> None: ...
    def phase(self, name: str, total_rows: int | None) -> None: ...
    def rows(self, count: int) -> None: ...
    def chunk(self, status: ChunkStatus) -> None: ...
    def retry(self, reason: str) -> None: ...
    def event(self, kind: str, data: dict[str, Any]) -> None:
        """A structured event for logs: run_started, source_skipped, chunk_settled (not ok)."""


class NullReporter:
    """A reporter that shows nothing."""

    def notice(self, message: str) -> None:
        """Ignore a notice."""

    def phase(self, name: str, total_rows: int | None) -> None:
        """Ignore a phase change."""

    def rows(self, count: int) -> None:
        """Ignore rows read."""

    def chunk(self, status: ChunkStatus) -> None:
        """Ignore a settled chunk."""

    def retry(self, reason: str) -> None:
        """Ignore a retry."""

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Ignore a structured event."""


@dataclass
class SourceSummary:
    """Per-source counts in the summary."""

    source: str
    rows_read: int = 0
    rows_rejected: int = 0
    skipped: bool = False


@dataclass
class RunSummary:
    """What a command did; ``as_json`` is the contract's JSON summary."""

    command: str
    run_id: str | None = None
    exit_code: int = 0
    error: str | None = None
    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    items_sent: int = 0
    bytes_sent: int = 0
    chunks_total: int = 0
    chunks_accepted: int = 0
    chunks_failed: int = 0
    chunks_ambiguous: int = 0
    chunks_skipped: int = 0
    item_errors: int = 0
    retries: int = 0
    sources_skipped: int = 0
    elapsed_s: float = 0.0
    ledger: str | None = None
    rejects: str | None = None
    sources: list[SourceSummary] = field(default_factory=list)
    dry_run: bool = False
    chunks_refused: int = 0
    profiles_superseded: int | None = None
    items_total: int = 0  # items the valid rows make (what would be sent)
    bytes_total: int = 0  # bytes of all chunk bodies (what would be sent)
    profiles: dict[str, Any] = field(default_factory=dict)  # emulator profiles shown by --emulator
    ledger_temporary: bool = False  # --emulator without --ledger: removed when the run ends
    started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self, error: ImporterError | None = None) -> RunSummary:
        """Set elapsed time, error and exit code (0 clean, 1 partial, 2/3 from the error)."""
        self.elapsed_s = round(time.monotonic() - self.started, 3)
        if error is not None:
            self.error = str(error)
            self.exit_code = error.exit_code
        elif self.rows_rejected or self.chunks_failed or self.chunks_ambiguous or self.item_errors:
            self.exit_code = 1
        else:
            self.exit_code = 0
        return self

    def as_json(self) -> dict[str, Any]:
        """The JSON summary of the contract (plus a few documented extras)."""
        data = asdict(self)
        for key in ("started", "profiles", "command", "ledger_temporary"):
            data.pop(key)
        if self.profiles_superseded is None:
            data.pop("profiles_superseded")
        return data


# --- options ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where requests go. The key is kept out of repr, so it never reaches a log by accident."""

    base_url: str
    workspace: str
    api_version: str
    api_key: str = field(repr=False)

    @property
    def batch_url(self) -> str:
        """The batch endpoint of this workspace and version."""
        base = self.base_url.rstrip("/")
        workspace = quote(self.workspace, safe="")
        return f"{base}/v1/{workspace}/{self.api_version}/profiles/properties/batch"


def check_base_url(url: str) -> None:
    """Refuse a base URL that would carry the key in clear text to a non-loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"base URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise InsecureURLError(
            f"refusing to send the API key over plain http:// to {parts.hostname}",
            hint="use https://, or http:// only to a loopback address such as 127.0.0.1",
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_version(version: str) -> str:
    """Only ``live`` and ``test`` exist."""
    if version not in API_VERSIONS:
        raise UsageError(f"API version {version!r} does not exist: use live or test")
    return version


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """Everything ``run_import`` needs, already parsed and merged."""

    sources: list[str]
    mapping: Mapping
    settings: Settings
    format: str | None = None
    ledger: Path | None = None
    rejects: Path = Path("fyno-import.rejects.csv")
    dry_run: bool = False
    force: bool = False
    shard: tuple[int, int] | None = None
    target: Target | None = None  # None with dry_run or emulator
    emulator: bool = False
    show_profiles: int = 0  # with emulator: fetch this many resulting profiles for the summary

    def chunk_settings(self) -> ChunkSettings:
        """The settings that decide chunk ids."""
        return ChunkSettings(
            batch_size=self.settings.batch_size,
            max_batch_bytes=self.settings.max_batch_bytes,
            shard=self.shard,
        )

    def send_config(self) -> SendConfig:
        """The sender's settings."""
        return send_config(self.settings)


def send_config(settings: Settings) -> SendConfig:
    """The sender's part of the run settings."""
    return SendConfig(
        concurrency=settings.concurrency,
        rate_limit=settings.rate_limit,
        max_retries=settings.max_retries,
        timeout=settings.timeout,
    )


def default_ledger_path(shard: tuple[int, int] | None) -> Path:
    """``fyno-import.ledger.db``, or one per shard."""
    if shard:
        return Path(f"fyno-import.shard-{shard[0]}-of-{shard[1]}.ledger.db")
    return Path("fyno-import.ledger.db")


# --- pass 1: reading and validating ---------------------------------------------------------


@dataclass
class _Prepared:
    source: Source
    transformer: Transformer
    fingerprint: str


class _RejectsWriter:
    """The rejects CSV: rewritten by each run or validate, created readable by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        self._handle = os.fdopen(fd, "wb")
        self._handle.write((",".join(REJECT_COLUMNS) + "\n").encode())

    def write(self, source: str, rejects: pl.DataFrame) -> None:
        """Append one batch's rejected rows."""
        if rejects.height:
            rejects.select(
                pl.lit(source).alias("source"),
                pl.col(ROW).alias("row"),
                "column",
                "reason",
                "values",
            ).write_csv(self._handle, include_header=False)

    def close(self) -> None:
        """Flush and close the file."""
        self._handle.close()


def _open_sources(
    args: list[str], mapping: Mapping, fmt: str | None, reporter: Reporter, allow_empty: bool
) -> list[Source]:
    if fmt not in (None, "csv", "parquet"):
        raise UsageError(f"--format {fmt!r}: use csv or parquet")
    sources, notices = resolve_sources(args, format=fmt, options=mapping.source)  # type: ignore[arg-type]
    for message in notices:
        reporter.notice(message)
    if not sources and not allow_empty:
        raise SourceError(
            f"no CSV or Parquet file matches {' '.join(args)}",
            hint="check the path or glob, or pass --allow-empty for a night with no export",
        )
    return sources


def _prepare(source: Source, mapping: Mapping, settings: Settings) -> _Prepared:
    columns = source.columns()
    schema = source.scan().collect_schema()
    try:
        transformer = Transformer(
            mapping, {c: schema[c] for c in columns}, max_batch_bytes=settings.max_batch_bytes
        )
    except MappingError as exc:  # name the file: with several sources, which one lacks it?
        raise MappingError(f"{source.name}: {exc.message}", hint=exc.hint) from None
    return _Prepared(source=source, transformer=transformer, fingerprint=source.fingerprint())


def _prepare_all(
    sources: list[Source], options: ImportOptions, reporter: Reporter
) -> list[_Prepared]:
    """Check every source against the mapping; empty files are skipped with --allow-empty."""
    prepared = []
    for source in sources:
        try:
            prepared.append(_prepare(source, options.mapping, options.settings))
        except EmptySourceError:
            if not options.settings.allow_empty:
                raise
            reporter.notice(f"skipped {source.name}: empty file (--allow-empty)")
    return prepared


def _shard_filter(
    batch: pl.DataFrame, transformer: Transformer, shard: tuple[int, int] | None
) -> pl.DataFrame:
    """Keep the rows of shard K (rows without an id are kept by shard 1, which rejects them)."""
    if shard is None:
        return batch
    k, n = shard
    ids = transformer.distinct_ids(batch)
    shards = shard_of(ids.fill_null(""), n)
    keep = (shards == k - 1) & ids.is_not_null()
    if k == 1:
        keep = keep | ids.is_null()
    return batch.filter(keep)


def _batches(
    prepared: _Prepared, shard: tuple[int, int] | None, seen: list[int] | None = None
) -> Iterator[pl.DataFrame]:
    """The source's batches, filtered to the shard; ``seen[0]`` counts the rows before that."""
    columns = prepared.source.columns()
    for batch in prepared.source.batches(columns, READ_BATCH_ROWS):
        if seen is not None:
            seen[0] += batch.height
        yield _shard_filter(batch, prepared.transformer, shard)


def _transformed(
    prepared: _Prepared, shard: tuple[int, int] | None, seen: list[int] | None = None
) -> Iterator[tuple[pl.DataFrame, TransformResult]]:
    """Each batch with its transform result, in file order.

    Two batches are transformed at once: polars releases the GIL, so this keeps both cores
    busy while memory stays bounded (at most ``TRANSFORM_AHEAD`` batches in flight).
    """
    with ThreadPoolExecutor(max_workers=TRANSFORM_AHEAD, thread_name_prefix="transform") as pool:
        pending: deque[tuple[pl.DataFrame, Future[TransformResult]]] = deque()
        for batch in _batches(prepared, shard, seen):
            pending.append((batch, pool.submit(prepared.transformer.apply, batch)))
            if len(pending) >= TRANSFORM_AHEAD:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _validate_all(
    prepared: list[_Prepared],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    mapping_hash: str,
) -> None:
    """Pass 1: read and validate every source, write the rejects file, count chunks."""
    total = _row_total(prepared)
    reporter.phase("validating", total)
    writer = _RejectsWriter(options.rejects)
    summary.rejects = str(options.rejects)
    # By position, not by name: the same path may be given twice.
    active = [s for s in summary.sources if not s.skipped]
    try:
        for index, (item, per_source) in enumerate(zip(prepared, active, strict=True)):
            chunker = Chunker(
                source_index=index,
                source=item.source.name,
                source_fingerprint=item.fingerprint,
                mapping_hash=mapping_hash,
                settings=options.chunk_settings(),
                build_bodies=False,
            )
            seen = [0]  # rows in the file, whatever the shard
            for batch, result in _transformed(item, options.shard, seen):
                writer.write(item.source.name, result.rejects)
                per_source.rows_read += batch.height
                per_source.rows_rejected += result.rejects.height
                summary.rows_valid += result.rows_valid
                summary.items_total += result.items.height
                for _ in chunker.add(result.items):
                    pass
                reporter.rows(batch.height)
            for _ in chunker.finish():
                pass
            summary.chunks_total += chunker.chunks
            summary.bytes_total += chunker.bytes
            # A file whose rows all fall in other shards is not empty: with --shard K/N over a
            # small file, some shards simply have nothing to send.
            if seen[0] == 0 and not options.settings.allow_empty:
                raise SourceError(
                    f"{item.source.name}: no data rows (only a header)",
                    hint="pass --allow-empty if an empty export is expected",
                )
    finally:
        writer.close()
        summary.rows_read = sum(s.rows_read for s in summary.sources)
        summary.rows_rejected = sum(s.rows_rejected for s in summary.sources)


def _row_total(prepared: list[_Prepared]) -> int | None:
    total = 0
    for item in prepared:
        hint = item.source.row_count_hint()
        if hint is None:
            return None
        total += hint
    return total


def validate(
    options: ImportOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Read and validate the sources; count the chunks they would make. Sends nothing."""
    with _sigterm_stops_the_run():
        return _validate(options, summary, reporter or NullReporter())


def _validate(options: ImportOptions, summary: RunSummary, reporter: Reporter) -> RunSummary:
    summary.dry_run = options.dry_run
    sources = _open_sources(
        options.sources, options.mapping, options.format, reporter, options.settings.allow_empty
    )
    try:
        prepared = _prepare_all(sources, options, reporter)
        summary.sources = [SourceSummary(source=p.source.name) for p in prepared]
        _validate_all(prepared, options, summary, reporter, options.mapping.fingerprint())
        if options.dry_run:
            _check_reject_rate(summary, options.settings)
    finally:
        for source in sources:
            source.close()
    return summary


def _check_reject_rate(summary: RunSummary, settings: Settings) -> None:
    if summary.rows_read and summary.rows_rejected / summary.rows_read > settings.max_reject_rate:
        raise RejectRateError(
            f"{summary.rows_rejected} of {summary.rows_read} rows are invalid "
            f"({summary.rows_rejected / summary.rows_read:.1%}), over --max-reject-rate "
            f"{settings.max_reject_rate:g}; nothing was sent",
            hint=f"see the reasons in {summary.rejects}; fix the export or raise --max-reject-rate",
        )


def preview(options: ImportOptions, count: int, reporter: Reporter | None = None) -> list[bytes]:
    """The first ``count`` request bodies, exactly as ``run`` would send them."""
    reporter = reporter or NullReporter()
    sources = _open_sources(options.sources, options.mapping, options.format, reporter, True)
    bodies: list[bytes] = []
    try:
        for index, source in enumerate(sources):
            for chunk in _source_chunks(
                index, _prepare(source, options.mapping, options.settings), options, None
            ):
                bodies.append(chunk.body)
                if len(bodies) >= count:
                    return bodies
    finally:
        for source in sources:
            source.close()
    return bodies


def _source_chunks(
    index: int,
    prepared: _Prepared,
    options: ImportOptions,
    reporter: Reporter | None,
) -> Iterator[Chunk]:
    """Pass 2 for one source: its chunks, in the order they close."""
    chunker = Chunker(
        source_index=index,
        source=prepared.source.name,
        source_fingerprint=prepared.fingerprint,
        mapping_hash=options.mapping.fingerprint(),
        settings=options.chunk_settings(),
    )
    for batch, result in _transformed(prepared, options.shard):
        yield from chunker.add(result.items)
        if reporter is not None:
            reporter.rows(batch.height)
    yield from chunker.finish()


# --- pass 2: sending ------------------------------------------------------------------------


def source_key(fingerprints: list[str], shard: tuple[int, int] | None) -> str:
    """Identifies "the same command again": the ordered source fingerprints and the shard."""
    data = json.dumps({"sources": fingerprints, "shard": list(shard) if shard else None})
    return hashlib.sha256(data.encode()).hexdigest()


_STRANDED_ADD = "was in flight when an earlier try stopped; carries $add, so it is not resent"
_SETTLED = frozenset(
    {ChunkStatus.ACCEPTED, ChunkStatus.AMBIGUOUS, ChunkStatus.REFUSED, ChunkStatus.ABANDONED}
)


@dataclass(frozen=True)
class _SourceDone:
    index: int
    chunks: int


class _LedgerRecorder:
    """Adapts the ledger to the sender's ChunkRecorder and keeps the summary and progress."""

    def __init__(self, ledger: Ledger, run_id: str, reporter: Reporter, *, secret: str) -> None:
        self.ledger, self.run_id, self.reporter = ledger, run_id, reporter
        self.packed: dict[str, PackedChunk] = {}  # compressed by the reader thread
        self._secret = secret

    def record_in_flight(self, chunk: Chunk) -> None:
        """Write the chunk and its body before its request leaves."""
        packed = self.packed.pop(chunk.chunk_id, None)
        self.ledger.record_in_flight(self.run_id, chunk, packed=packed)

    def record_waiting(self, chunk: Chunk, error: str) -> None:
        """A $add chunk surely not applied waits for its retry: resendable after a crash."""
        self.ledger.mark_waiting(self.run_id, chunk.chunk_id, _scrub(error, self._secret))

    def record_outcome(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Write the final answer, then show it."""
        outcome = _without_secret(outcome, self._secret)
        self.ledger.record_outcome(self.run_id, chunk, outcome)
        self.reporter.chunk(outcome.status)
        if outcome.status is not ChunkStatus.ACCEPTED or outcome.item_errors:
            self.reporter.event(
                "chunk_settled",
                {
                    "run_id": self.run_id,
                    "chunk_id": chunk.chunk_id,
                    "source": chunk.source,
                    "status": str(outcome.status),
                    "http_status": outcome.http_status,
                    "attempts": outcome.attempts,
                    "item_errors": len(outcome.item_errors),
                    "error": outcome.error,
                },
            )


_MIN_SECRET = 4  # shorter cannot be told from ordinary text; never the case for a real key


def _scrub(text: str, secret: str) -> str:
    """The text with the key cut out (a server may echo the Authorization header)."""
    return text.replace(secret, "***") if len(secret) >= _MIN_SECRET else text


def _without_secret(outcome: ChunkOutcome, secret: str) -> ChunkOutcome:
    """The outcome with the key cut out of every text the server chose.

    A server (or a proxy) that echoes the Authorization header can put the key into a request
    id or a per-item status of a 202, which the sender keeps verbatim; nothing of that may reach
    the ledger, or from there `ledger show` and `ledger export`.
    """
    if len(secret) < _MIN_SECRET:
        return outcome

    def clean(text: str | None) -> str | None:
        return None if text is None else _scrub(text, secret)

    return replace(
        outcome,
        request_id=clean(outcome.request_id),
        error=clean(outcome.error),
        item_errors=tuple(
            replace(e, operator=clean(e.operator) or "", status=clean(e.status) or "")
            for e in outcome.item_errors
        ),
    )


def _client(target: Target, config: SendConfig) -> httpx.AsyncClient:
    # Idle connections are dropped after 2 s, before a server's own idle timeout (uvicorn's is
    # 5 s, httpx's default is also 5 s): reusing a connection the server is closing makes an
    # "ambiguous" failure out of a request that never arrived, and a $add chunk is then held back.
    limits = httpx.Limits(
        max_connections=config.concurrency,
        max_keepalive_connections=config.concurrency,
        keepalive_expiry=2.0,
    )
    return httpx.AsyncClient(
        headers={
            "Authorization": f"Bearer {target.api_key}",
            "Content-Type": "application/json",
            "User-Agent": "fyno-import",
        },
        limits=limits,
        timeout=config.timeout,
        trust_env=False,
    )


def _apply_stats(summary: RunSummary, stats: SendStats) -> None:
    summary.chunks_accepted += stats.chunks_accepted
    summary.chunks_failed += stats.chunks_failed + stats.chunks_refused
    summary.chunks_refused += stats.chunks_refused
    summary.chunks_ambiguous += stats.chunks_ambiguous
    summary.items_sent += stats.items_sent
    summary.bytes_sent += stats.bytes_sent
    summary.retries += stats.retries
    summary.item_errors += stats.item_errors


async def _send(
    produce: Callable[[Callable[[object], None], threading.Event], None],
    *,
    target: Target,
    config: SendConfig,
    recorder: _LedgerRecorder,
    reporter: Reporter,
    summary: RunSummary,
    on_item: Callable[[object], Chunk | None],
) -> bool:
    """Send what ``produce`` (run in a thread) puts out; counts go to the summary even when it
    fails part-way. Returns whether the run was stopped (Ctrl-C, SIGTERM)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=8)
    stop = threading.Event()
    done = object()

    def put(item: object) -> None:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.2)
                return
        future.cancel()

    def worker() -> None:
        try:
            produce(put, stop)
            put(done)
        except BaseException as exc:  # handed to the event loop, raised there
            put(exc)

    async def chunks() -> AsyncIterator[Chunk]:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, tuple):  # (chunk, its compressed form for the ledger)
                fresh, packed = item
                recorder.packed[fresh.chunk_id] = packed
                item = fresh
            chunk = on_item(item)
            if chunk is not None:
                yield chunk
            elif isinstance(item, Chunk):
                recorder.packed.pop(item.chunk_id, None)

    async with _client(target, config) as client:
        sender = Sender(
            client,
            url=target.batch_url,
            config=config,
            recorder=recorder,
            on_retry=lambda _chunk, reason: reporter.retry(reason),
        )
        interrupted = False

        def on_signal() -> None:
            nonlocal interrupted
            if interrupted:  # a second Ctrl-C: stop waiting for in-flight answers
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                return
            interrupted = True
            reporter.notice("stopping: no new requests; waiting for those in flight…")
            sender.stop()
            stop.set()

        installed: dict[int, Any] = {}  # signal -> the Python handler to put back afterwards
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    previous = signal.getsignal(signum)
                    loop.add_signal_handler(signum, on_signal)
                    installed[signum] = previous
        thread = threading.Thread(target=worker, name="fyno-import-reader", daemon=True)
        thread.start()
        try:
            await sender.send_all(chunks())
        finally:
            _apply_stats(summary, sender.stats)
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                await asyncio.sleep(0.01)
            for handled, previous in installed.items():
                loop.remove_signal_handler(handled)
                # remove_signal_handler leaves SIG_DFL behind, which would let a SIGTERM during
                # the last ledger writes kill the process without its summary
                if previous is not None:
                    signal.signal(handled, previous)
        return interrupted or sender.stopped


def _resolve_target(options: ImportOptions, server_url: str | None) -> Target:
    if server_url is not None:
        return Target(
            base_url=server_url, workspace="emulator", api_version="live", api_key="emulator"
        )
    if options.target is None:
        raise UsageError("no API target: set FYNO_API_KEY and FYNO_WORKSPACE_ID, or use --emulator")
    check_base_url(options.target.base_url)
    check_api_version(options.target.api_version)
    return options.target


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """While a command runs, SIGTERM stops it as Ctrl-C does: InterruptedRun (exit 3).

    The sending loop has its own graceful handlers (``_send``); this covers everything around
    it (reading, validating, opening the ledger), where SIGTERM's default action would kill the
    process without a summary. The handler raises KeyboardInterrupt, not an ImporterError, so
    no ``except Exception`` on the way (a reader turning errors into SourceError) can mistake it
    for a failure of its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        raise InterruptedRun("interrupted: no request was sent after the signal") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_import(
    options: ImportOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Validate every source, then send the chunks the ledger does not show as accepted."""
    with _sigterm_stops_the_run():
        return _run_import(options, summary, reporter or NullReporter())


def _run_import(options: ImportOptions, summary: RunSummary, reporter: Reporter) -> RunSummary:
    if options.dry_run:
        return _validate(options, summary, reporter)
    if options.emulator:
        from importer.emulator import EmulatorConfig, EmulatorServer

        with tempfile.TemporaryDirectory(prefix="fyno-import-emulator-") as scratch:
            with EmulatorServer(EmulatorConfig(port=0)) as server:
                ledger = options.ledger or Path(scratch) / "emulator.ledger.db"
                summary.ledger_temporary = options.ledger is None
                _run(options, summary, reporter, _resolve_target(options, server.url), ledger)
                for distinct_id in _first_ids(options, options.show_profiles):
                    summary.profiles[distinct_id] = server.profile(
                        distinct_id, workspace="emulator"
                    )
            return summary
    target = _resolve_target(options, None)
    return _run(
        options, summary, reporter, target, options.ledger or default_ledger_path(options.shard)
    )


def _first_ids(options: ImportOptions, count: int) -> list[str]:
    if count <= 0:
        return []
    sources, _ = resolve_sources(options.sources, options=options.mapping.source)
    if not sources:
        return []
    frame = sources[0].scan().select(options.mapping.distinct_id).head(count * 4).collect()
    ids = [str(v).strip() for v in frame.to_series().to_list() if v is not None and str(v).strip()]
    return ids[:count]


def _run(
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    target: Target,
    ledger_path: Path,
) -> RunSummary:
    sources = _open_sources(
        options.sources, options.mapping, options.format, reporter, options.settings.allow_empty
    )
    if not sources:
        return summary
    mapping_hash = options.mapping.fingerprint()
    chunk_key = options.chunk_settings().key()
    try:
        prepared = _prepare_all(sources, options, reporter)
        if not prepared:  # only empty files, and --allow-empty: nothing to do
            return summary
        fingerprints = [p.fingerprint for p in prepared]
        key = source_key(fingerprints, options.shard)
        summary.ledger = str(ledger_path)
        with Ledger.open(ledger_path) as ledger:
            ledger.lock_for_run()
            resumable = ledger.find_resumable_run(key)
            if (
                resumable is not None
                and not options.force
                and (resumable.mapping_hash != mapping_hash or resumable.chunk_key != chunk_key)
            ):
                raise RunConflictError(
                    f"run {resumable.run_id} on these sources is unfinished and used another "
                    "mapping or other chunk settings (batch size, max batch bytes, shard)",
                    hint="run it again with its own mapping and settings to finish it, or pass "
                    "--force to start afresh",
                )
            if options.force:
                resumable = None
            imported = (
                {}
                if options.force
                else ledger.imported_sources(
                    fingerprints, exclude_run=resumable.run_id if resumable else None
                )
            )
            todo: list[_Prepared] = []
            for item in prepared:
                earlier = imported.get(item.fingerprint)
                twin = next(
                    (t.source.name for t in todo if t.fingerprint == item.fingerprint), None
                )
                duplicate = earlier is None and twin is not None
                summary.sources.append(
                    SourceSummary(source=item.source.name, skipped=earlier is not None or duplicate)
                )
                if duplicate:
                    # Chunk ids come from the content, not the path: a second source with the
                    # same content would reuse the first one's ids, and the ledger could no
                    # longer tell their chunks apart (a resume would skip the copy).
                    summary.sources_skipped += 1
                    reporter.event(
                        "source_skipped", {"source": item.source.name, "same_content_as": twin}
                    )
                    reporter.notice(
                        f"skipped {item.source.name}: "
                        + ("given twice" if twin == item.source.name else f"same content as {twin}")
                        + "; a source is imported once per run"
                    )
                elif earlier is not None:
                    summary.sources_skipped += 1
                    reporter.event(
                        "source_skipped", {"source": item.source.name, "imported_by": earlier}
                    )
                    reporter.notice(
                        f"skipped {item.source.name}: already imported by run {earlier} "
                        "(--force imports it again)"
                    )
                else:
                    todo.append(item)
            if not todo:
                raise RunConflictError(
                    "every source was already imported ("
                    + ", ".join(sorted(set(imported.values())))
                    + "); nothing sent",
                    hint="pass --force to import them again",
                )
            _validate_all(todo, options, summary, reporter, mapping_hash)
            _check_reject_rate(summary, options.settings)
            if resumable is not None:
                run_id = resumable.run_id
                reporter.notice(f"resuming run {run_id}")
            else:
                run_id = ledger.create_run(
                    source_key=key,
                    mapping_hash=mapping_hash,
                    chunk_key=chunk_key,
                    shard=f"{options.shard[0]}/{options.shard[1]}" if options.shard else None,
                    settings=options.settings.model_dump(mode="json"),
                    base_url=target.base_url,
                    workspace=target.workspace,
                    api_version=target.api_version,
                    sources=[(p.source.name, p.fingerprint) for p in prepared],
                )
            summary.run_id = run_id
            ledger.mark_run(run_id, "running")
            reporter.event(
                "run_started",
                {
                    "run_id": run_id,
                    "resumed": resumable is not None,
                    "sources": [p.source.name for p in todo],
                    "rows_valid": summary.rows_valid,
                    "chunks_total": summary.chunks_total,
                },
            )
            _send_run(ledger, run_id, prepared, todo, options, summary, reporter, target)
    finally:
        for source in sources:
            source.close()
    return summary


def _send_run(
    ledger: Ledger,
    run_id: str,
    prepared: list[_Prepared],
    todo: list[_Prepared],
    options: ImportOptions,
    summary: RunSummary,
    reporter: Reporter,
    target: Target,
) -> None:
    known = ledger.chunk_statuses(run_id)
    indexes = {id(p): i for i, p in enumerate(prepared)}
    per_source = {s.source: s for s in summary.sources if not s.skipped}
    recorder = _LedgerRecorder(ledger, run_id, reporter, secret=target.api_key)

    def produce(put: Callable[[object], None], stop: threading.Event) -> None:
        for item in todo:
            index = indexes[id(item)]
            count = 0
            for chunk in _source_chunks(index, item, options, reporter):
                if stop.is_set():
                    return
                count += 1
                # zlib releases the GIL: compressing here keeps it off the event loop
                settled = known.get(chunk.chunk_id) in _SETTLED
                put(chunk if settled else (chunk, pack_chunk(chunk)))
            put(_SourceDone(index, count))

    def on_item(item: object) -> Chunk | None:
        if isinstance(item, _SourceDone):
            name = prepared[item.index].source.name
            ledger.set_source_counts(
                run_id,
                item.index,
                rows_read=per_source[name].rows_read,
                rows_rejected=per_source[name].rows_rejected,
                chunks_total=item.chunks,
            )
            return None
        assert isinstance(item, Chunk)
        status = known.get(item.chunk_id)
        if status is ChunkStatus.ACCEPTED:
            summary.chunks_skipped += 1
            reporter.chunk(ChunkStatus.ACCEPTED)
            return None
        if status is ChunkStatus.IN_FLIGHT and item.has_add:
            ledger.mark_ambiguous(run_id, item.chunk_id, _STRANDED_ADD)
            status = ChunkStatus.AMBIGUOUS
        if status in (ChunkStatus.AMBIGUOUS, ChunkStatus.REFUSED, ChunkStatus.ABANDONED):
            if status is ChunkStatus.AMBIGUOUS:
                summary.chunks_ambiguous += 1
            elif status is ChunkStatus.REFUSED:
                summary.chunks_failed += 1
                summary.chunks_refused += 1
            reporter.chunk(status)
            return None
        return item

    reporter.phase("sending", summary.rows_read)
    error: ImporterError | None = None
    try:
        stopped = asyncio.run(
            _send(
                produce,
                target=target,
                config=options.send_config(),
                recorder=recorder,
                reporter=reporter,
                summary=summary,
                on_item=on_item,
            )
        )
        if stopped:
            raise InterruptedRun(
                "interrupted: no new requests were started; in-flight ones were settled"
            )
    except ImporterError as exc:
        error = exc
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        error = InterruptedRun("interrupted: chunks still in flight stay marked in the ledger")
        raise error from None
    finally:
        status = (
            "finished"
            if error is None
            else ("interrupted" if isinstance(error, InterruptedRun) else "aborted")
        )
        with contextlib.suppress(ImporterError):
            summary.finish(error)
            ledger.mark_run(run_id, status, summary.as_json())


# --- retry ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetryOptions:
    """Everything ``retry_failed`` needs."""

    ledger: Path
    run_id: str | None
    include_ambiguous: bool
    settings: Settings
    api_key: str = field(repr=False)
    base_url: str | None = None  # given on the command line: must match the ledger's
    workspace: str | None = None
    api_version: str | None = None


def retry_failed(
    options: RetryOptions, summary: RunSummary, reporter: Reporter | None = None
) -> RunSummary:
    """Resend a run's failed chunks (and ambiguous ones, if asked) from the ledger alone."""
    with _sigterm_stops_the_run():
        return _retry_failed(options, summary, reporter or NullReporter())


def _retry_failed(options: RetryOptions, summary: RunSummary, reporter: Reporter) -> RunSummary:
    summary.ledger = str(options.ledger)
    with Ledger.open(options.ledger, create=False) as ledger:
        ledger.lock_for_run()
        run = ledger.get_run(options.run_id) if options.run_id else _latest_run_to_retry(ledger)
        if run is None:
            reporter.notice(f"no run in {options.ledger} has failed chunks: nothing to retry")
            return summary
        summary.run_id = run.run_id
        reporter.event("retry_started", {"run_id": run.run_id})
        for name, given, recorded in (
            ("base URL", options.base_url, run.base_url),
            ("workspace", options.workspace, run.workspace),
            ("API version", options.api_version, run.api_version),
        ):
            if given is not None and given.rstrip("/") != recorded.rstrip("/"):
                raise UsageError(
                    f"run {run.run_id} was sent to {name} {recorded!r}, not {given!r}; "
                    "retry resends to where the run went",
                    hint=f"drop the {name} option, or start a new run for the other target",
                )
        target = Target(
            base_url=run.base_url,
            workspace=run.workspace,
            api_version=run.api_version,
            api_key=options.api_key,
        )
        check_base_url(target.base_url)
        if run.status != "finished":
            # retry has only the chunks that were sent; ones never sent are not in the ledger
            reporter.notice(
                f"run {run.run_id} did not finish ({run.status}): chunks it never sent are not "
                "in the ledger; run the same `run` command again to send them"
            )
        _settle_stranded(ledger, run.run_id)
        # In flight now means: an idempotent chunk a killed process left (see _settle_stranded);
        # pending: a chunk surely not applied that a killed process left waiting for its retry.
        statuses = {ChunkStatus.FAILED, ChunkStatus.IN_FLIGHT, ChunkStatus.PENDING}
        if options.include_ambiguous:
            statuses.add(ChunkStatus.AMBIGUOUS)
        all_statuses = ledger.chunk_statuses(run.run_id)
        # Ids only: the bodies stay in the ledger until the sender is ready for each one, so a
        # run that failed wholesale (an outage) is retried in bounded memory.
        to_send = [cid for cid, status in all_statuses.items() if status in statuses]
        refused = sum(1 for status in all_statuses.values() if status is ChunkStatus.REFUSED)
        if refused:
            reporter.notice(
                f"{refused} chunk(s) were refused by the API (HTTP 400) and are not resent; "
                "`fyno-import ledger export --failures FILE` lists their rows"
            )
        left_ambiguous = 0
        if not options.include_ambiguous:
            left_ambiguous = sum(1 for s in all_statuses.values() if s is ChunkStatus.AMBIGUOUS)
        summary.chunks_total = len(to_send)
        summary.profiles_superseded = ledger.profiles_superseded(run.run_id, to_send)
        if summary.profiles_superseded:
            reporter.notice(
                f"{summary.profiles_superseded} profile(s) in these chunks received later updates; "
                "resending now may overwrite newer values with older ones"
            )
        if to_send:
            reporter.phase("retrying", None)
            recorder = _LedgerRecorder(ledger, run.run_id, reporter, secret=target.api_key)

            def produce(put: Callable[[object], None], stop: threading.Event) -> None:
                for chunk in ledger.load_chunks(run.run_id, statuses):
                    if stop.is_set():
                        return
                    put(chunk)

            def on_item(item: object) -> Chunk | None:
                assert isinstance(item, Chunk)
                reporter.rows(item.items)
                return item

            stopped = asyncio.run(
                _send(
                    produce,
                    target=target,
                    config=send_config(options.settings),
                    recorder=recorder,
                    reporter=reporter,
                    summary=summary,
                    on_item=on_item,
                )
            )
            if stopped:
                raise InterruptedRun("interrupted: no new requests were started")
        summary.chunks_failed += refused
        summary.chunks_refused += refused
        summary.chunks_ambiguous += left_ambiguous
    return summary


_OPEN = frozenset(
    {
        ChunkStatus.FAILED,
        ChunkStatus.REFUSED,
        ChunkStatus.AMBIGUOUS,
        ChunkStatus.IN_FLIGHT,
        ChunkStatus.PENDING,
    }
)


def _latest_run_to_retry(ledger: Ledger) -> RunInfo | None:
    """The latest run with chunks still open: failed, refused, ambiguous, or left in flight.

    In flight counts too: a `retry` killed with -9 leaves its chunks so, and they must not
    fall out of sight (the run lock is held, so no live process is sending them).
    """
    for run in reversed(ledger.list_runs()):
        if _OPEN.intersection(ledger.chunk_statuses(run.run_id).values()):
            return run
    return None


def _settle_stranded(ledger: Ledger, run_id: str) -> None:
    """Chunks a killed process left in flight: $add ones become ambiguous, as on resume.

    The caller holds the run lock, so nothing is sending them now. Idempotent ones stay in
    flight and are resent with the failed ones.
    """
    for chunk in ledger.load_chunks(run_id, {ChunkStatus.IN_FLIGHT}):
        if chunk.has_add:
            ledger.mark_ambiguous(run_id, chunk.chunk_id, _STRANDED_ADD)
