"""The emulator's configuration: how it listens, stores and misbehaves.

Owns ``EmulatorConfig`` and its checks, and ``parse_latency`` for the CLI's ``--latency-ms``.
Knows nothing of requests, profiles or the server that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """How the emulator listens, stores and misbehaves."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = pick a free port
    api_key: str | None = None  # None: any non-empty Bearer key is accepted
    db: Path | None = None  # None: profiles in memory; else this SQLite file
    latency_ms: tuple[int, int] | None = None  # (min, max) waited before applying, uniform
    fail_rate: float = 0.0  # fraction answered 503, nothing applied
    rate_limit: float = 0.0  # requests/s of a token bucket (burst R); 0 = off
    drop_rate: float = 0.0  # fraction applied, then the connection closed with no answer
    seed: int | None = None  # makes the fault draws reproducible
    sink: bool = False  # validate and count items, store no profiles

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.sink and self.db is not None:
            raise ValueError("sink mode stores no profiles: give either sink or db, not both")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (use None to accept any key)")
        for name in ("fail_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate}")
        if not self.rate_limit >= 0.0:  # also refuses NaN
            raise ValueError(
                f"rate_limit must be 0 (off) or a positive rate, not {self.rate_limit}"
            )
        if self.latency_ms is not None:
            low, high = self.latency_ms
            if not 0 <= low <= high:
                raise ValueError(
                    f"latency_ms must be (min, max) with 0 <= min <= max, not {low, high}"
                )


def parse_latency(text: str) -> tuple[int, int]:
    """Parse ``--latency-ms``: ``"50"`` is (50, 50), ``"10-80"`` is (10, 80)."""
    low_text, dash, high_text = text.strip().partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(
            f"invalid latency {text!r}: expected milliseconds as MIN or MIN-MAX, e.g. 50 or 10-80"
        ) from None
    if low < 0 or high < low:
        raise ValueError(f"invalid latency {text!r}: need 0 <= MIN <= MAX milliseconds")
    return low, high
