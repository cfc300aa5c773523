"""Keeping the API key out of everything the importer writes: one rule, used everywhere.

Nothing is meant to print or store the key; redaction is the second line of defence against a
server, proxy or library that echoes it back (in an error message, a request id, a per-item
status). A secret shorter than ``MIN_SECRET`` is not redacted: it could not be told from ordinary
words in a message, and no real key is that short.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

MIN_SECRET: Final = 4
MASK: Final = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """The text with every (long enough) secret replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET and secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_values(data: Any, secrets: Iterable[str]) -> Any:
    """JSON-able data with secrets redacted in its string values (keys are left alone)."""
    secrets = tuple(secrets)
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, dict):
        return {key: redact_values(value, secrets) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_values(value, secrets) for value in data]
    return data
