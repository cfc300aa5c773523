"""Sending: chunks → HTTP requests to the batch endpoint → one final outcome per chunk.

Owns where requests go and the client that takes them (``target``), the sender with its bounded
concurrency, per-profile order, retries and ``$add`` safety (``sender``), the shared rate of
request starts (``throttle``) and what each answer means (``answers``). It records through the
``ChunkRecorder`` it is given and never knows the ledger, sources or the mapping.
"""

from importer.send.answers import parse_retry_after
from importer.send.sender import ChunkRecorder, SendConfig, Sender, SendStats
from importer.send.target import Target, check_api_version, check_base_url, make_client

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
