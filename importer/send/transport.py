"""A lean HTTP/1.1 transport for httpx: asyncio streams and the C parser of ``httptools``.

The sender posts a few thousand large bodies to one origin over a handful of keep-alive
connections. httpx's default transport (httpcore and the pure-Python h11) spent about 40 % of
the event loop on that; this one keeps the httpx API (``httpx.AsyncClient(transport=...)``) and
does only what the sender needs: one origin, HTTP/1.1, keep-alive, ``Content-Length`` or chunked
answers, TLS through ``ssl``.

Every failure is raised as the httpx exception that says *when* it happened, because the sender
decides on it whether a ``$add`` chunk may be resent: ``ConnectError``/``ConnectTimeout``/
``PoolTimeout`` before a byte was written (surely not applied), ``WriteError``/``WriteTimeout``
while writing, ``ReadError``/``ReadTimeout``/``RemoteProtocolError`` after the body left (it may
have been applied). A connection idle for longer than ``keepalive_expiry`` is closed rather than
reused: a server closing it at the same moment would turn a request that never arrived into an
"ambiguous" one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httptools
import httpx

_READ = 1 << 16


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Answer:
    """httptools callbacks: the status, headers and body of one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        # asked here: once the message is complete the parser resets and always says False
        self.keep_alive = self.parser.should_keep_alive()
        self.done = True


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to one or more origins, at most ``max_connections`` at a time."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._expiry = keepalive_expiry
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request and read its whole answer."""
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection in time", request=request) from None
        try:
            return await self._exchange(request, timeouts)
        finally:
            self._slots.release()

    async def _exchange(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        origin = (request.url.scheme, request.url.host, request.url.port or _port(request))
        connection = self._reuse(origin) or await self._connect(origin, request, timeouts)
        try:
            await self._write(connection, request, timeouts)
            response, keep = await self._read(connection, request, timeouts)
        except BaseException:
            connection.close()
            raise
        if keep:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, deque()).append(connection)
        else:
            connection.close()
        return response

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self._expiry and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def _connect(
        self, origin: tuple[str, str, int], request: httpx.Request, timeouts: dict[str, Any]
    ) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: {exc}", request=request
            ) from None
        return _Connection(reader, writer)

    async def _write(
        self, connection: _Connection, request: httpx.Request, timeouts: dict[str, Any]
    ) -> None:
        body = request.content
        target = request.url.raw_path
        lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
        host = request.url.netloc
        lines.append(b"Host: " + host)
        for name, value in request.headers.raw:
            if name.lower() not in (b"host", b"content-length", b"transfer-encoding"):
                lines.append(name + b": " + value)
        lines.append(b"Content-Length: " + str(len(body)).encode())
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        try:
            async with asyncio.timeout(timeouts.get("write")):
                connection.writer.write(head + body if len(body) < 4096 else head)
                if len(body) >= 4096:
                    connection.writer.write(body)
                await connection.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("write timed out", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(
                f"connection broken while writing: {exc}", request=request
            ) from None

    async def _read(
        self, connection: _Connection, request: httpx.Request, timeouts: dict[str, Any]
    ) -> tuple[httpx.Response, bool]:
        answer = _Answer()
        parser = answer.parser
        try:
            async with asyncio.timeout(timeouts.get("read")):
                while not answer.done:
                    data = await connection.reader.read(_READ)
                    if not data:
                        raise httpx.RemoteProtocolError(
                            "Server disconnected without sending a response.",
                            request=request,
                        )
                    parser.feed_data(data)
        except TimeoutError:
            raise httpx.ReadTimeout("read timed out", request=request) from None
        except httptools.HttpParserError as exc:
            raise httpx.RemoteProtocolError(f"unreadable answer: {exc}", request=request) from None
        except OSError as exc:
            raise httpx.ReadError(
                f"connection broken while reading: {exc}", request=request
            ) from None
        keep = answer.keep_alive
        response = httpx.Response(
            parser.get_status_code(),
            headers=answer.headers,
            content=b"".join(answer.body),
            request=request,
        )
        return response, keep

    async def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


def _port(request: httpx.Request) -> int:
    return 443 if request.url.scheme == "https" else 80
