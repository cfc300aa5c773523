"""Serving the emulator with uvicorn: in a background thread, or in the foreground.

Owns the uvicorn plumbing (httptools and uvloop when present, no access log, no signal
handling of its own), binding the socket, ``EmulatorServer`` (a thread, for tests and
``run --emulator``) and ``serve`` (the CLI's foreground server, stopped by SIGINT or SIGTERM).
Knows nothing of Fyno's rules, stores or faults: it serves the app ``create_app`` makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

import uvicorn
from starlette.applications import Starlette

from importer.emulator.app import create_app, emulator_of
from importer.emulator.config import EmulatorConfig

try:
    import uvloop

    _new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
    _new_event_loop = asyncio.new_event_loop

_GRACEFUL_STOP_S: Final = 5  # seconds stop() lets in-flight requests finish
_KEEP_ALIVE_S: Final = 30  # idle keep-alive: longer than clients keep idle connections
_START_TIMEOUT_S: Final = 30


class _UvicornServer(uvicorn.Server):
    """uvicorn's server, which reports when it accepts connections and leaves signals to us."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then report that connections are accepted."""
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signal handlers alone."""
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
        self._emulator = emulator_of(self.app)
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
    emulator = emulator_of(app)
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
