"""Sending: chunks → HTTP requests to the batch endpoint → one final outcome per chunk.

Owns where requests go and the client that takes them (``target``), the sender with its bounded
concurrency, per-profile order, retries and ``$add`` safety (``sender``), the shared rate of
request starts (``throttle``), what each answer means (``answers``) and the sender's settings
(``options``, light: the modules that need httpx load on first use). It records through the
``ChunkRecorder`` it is given and never knows the ledger, sources or the mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from importer.send.options import SendConfig
from importer.send.target import Target, check_api_version, check_base_url, make_client

if TYPE_CHECKING:
    from importer.send.answers import parse_retry_after
    from importer.send.sender import ChunkRecorder, Sender, SendStats

# these need httpx: imported on first use, so commands that never send do not load it
_LAZY = {
    "parse_retry_after": "importer.send.answers",
    "ChunkRecorder": "importer.send.sender",
    "Sender": "importer.send.sender",
    "SendStats": "importer.send.sender",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChunkRecorder",
    "SendConfig",
    "SendStats",
    "Sender",
    "Target",
    "check_api_version",
    "check_base_url",
    "make_client",
    "parse_retry_after",
]
