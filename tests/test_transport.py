"""The lean HTTP/1.1 transport against real servers on 127.0.0.1: answers read whole, connections
reused and retired, and every failure raised as the httpx exception that says when it happened
(the sender resends a $add chunk only when nothing can have been applied)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from importer.send.transport import LeanTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; yields its URL and a list counting the connections it accepted."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/batch", accepted
    finally:
        listening.close()
        await listening.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's body (its head read up to Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


def answering(*answers: bytes) -> Handler:
    """A handler that answers each request of a connection with the next answer (and repeats)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            n += 1

    return handle


OK = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def client(**kw: float) -> httpx.AsyncClient:
    transport = LeanTransport(max_connections=2, keepalive_expiry=kw.pop("expiry", 5.0))
    return httpx.AsyncClient(transport=transport, timeout=kw.pop("timeout", 5.0))


def test_answers_are_read_whole_and_the_connection_is_kept() -> None:
    """A Content-Length answer and a chunked one are read whole; five requests share one
    connection."""
    chunked = (
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )

    async def main() -> tuple[list[bytes], int]:
        async with server(answering(OK, chunked)) as (url, accepted), client() as c:
            bodies = [(await c.post(url, content=b'{"batch":[]}')).content for _ in range(5)]
            return bodies, len(accepted)

    bodies, connections = asyncio.run(main())
    assert bodies == [b"{}", b"abcde", b"abcde", b"abcde", b"abcde"] and connections == 1


def test_a_connection_idle_too_long_or_closed_by_the_server_is_not_reused() -> None:
    """Past keepalive_expiry, or after `Connection: close`, the next request opens a new one."""
    closing = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    async def main() -> tuple[int, int]:
        async with server(answering(OK)) as (url, accepted), client(expiry=0.05) as c:
            await c.post(url, content=b"x")
            await asyncio.sleep(0.15)
            await c.post(url, content=b"x")
            idle = len(accepted)
        async with server(answering(closing)) as (url, accepted), client() as c:
            await c.post(url, content=b"x")
            await c.post(url, content=b"x")
            return idle, len(accepted)

    assert asyncio.run(main()) == (2, 2)


def test_a_connection_dropped_after_the_body_is_a_remote_protocol_error() -> None:
    """The server reads the body and closes without answering: RemoteProtocolError (the body may
    have been applied)."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def main() -> None:
        async with server(drop) as (url, _), client() as c:
            await c.post(url, content=b'{"batch":[]}')

    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(main())


def test_no_server_is_a_connect_error_and_silence_a_read_timeout() -> None:
    """A refused port is ConnectError (nothing sent); a server that never answers is
    ReadTimeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def refused() -> None:
        async with client() as c:
            await c.post(f"http://127.0.0.1:{port}/batch", content=b"x")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(refused())

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def waiting() -> None:
        async with server(silent) as (url, _), client(timeout=0.2) as c:
            await c.post(url, content=b"x")

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(waiting())


def test_the_request_goes_out_as_written() -> None:
    """Method, path, headers and body arrive as the client gave them, with Host and length."""
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(5))
        writer.write(OK)
        await writer.drain()

    async def main() -> None:
        async with server(record) as (url, _), client() as c:
            await c.post(url + "?q=1", content=b"hello", headers={"Authorization": "Bearer k"})

    asyncio.run(main())
    head, body = seen[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /batch?q=1 HTTP/1.1" and body == b"hello"
    assert b"authorization: Bearer k" in [line.lower()[:15] + line[15:] for line in lines]
    assert any(line.lower() == b"content-length: 5" for line in lines)
    assert any(line.lower().startswith(b"host: 127.0.0.1:") for line in lines)
