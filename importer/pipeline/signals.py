"""SIGTERM during a command stops it as Ctrl-C does, with a summary, never a bare kill."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from importer.errors import InterruptedRun


@contextlib.contextmanager
def sigterm_stops_the_command() -> Iterator[None]:
    """While a command runs, SIGTERM stops it as Ctrl-C does: InterruptedRun (exit 3).

    The sending loop has its own graceful handlers (``sending``); this covers everything around
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
