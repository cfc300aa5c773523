"""How hard and how carefully to send: the sender's settings, without the HTTP client.

Kept apart from ``sender`` so that the commands that never send (``validate``, ``preview``,
``run --dry-run``) build their options without importing httpx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from importer import config


@dataclass(frozen=True, kw_only=True)
class SendConfig:
    """How hard and how carefully to send."""

    concurrency: int = config.DEFAULT_CONCURRENCY  # most requests in flight
    rate_limit: float = config.DEFAULT_RATE_LIMIT  # most request starts per second (0 = none)
    max_retries: int = config.DEFAULT_MAX_RETRIES  # tries after the first, for transient failures
    timeout: float = config.DEFAULT_TIMEOUT_S  # per request, in seconds
    backoff_base: float = 0.5  # first retry waits up to this long (full jitter), doubling
    backoff_max: float = 30.0  # cap of one backoff wait (Retry-After may ask for longer)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if not self.rate_limit >= 0 or math.isinf(self.rate_limit):
            raise ValueError(f"rate_limit must be a finite number >= 0, not {self.rate_limit}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, not {self.max_retries}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be above 0, not {self.timeout}")
        if not (self.backoff_base >= 0 and self.backoff_max >= 0):
            raise ValueError("backoff_base and backoff_max must be >= 0")
