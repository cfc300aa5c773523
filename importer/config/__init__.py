"""Every default of the importer, in one place, and where they meet the command line.

This module imports nothing heavy (the CLI reads the defaults for its ``--help`` texts from here,
and ``--help`` must answer at once). The validated model of the run settings and the merge of
command line, the mapping's ``settings:`` and these defaults are in ``importer.config.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# --- run settings (the options marked * in the contract; also under the mapping's settings:)
DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_MAX_BATCH_BYTES: Final = 1_000_000
MIN_BATCH_BYTES: Final = 64
DEFAULT_CONCURRENCY: Final = 8
MAX_CONCURRENCY: Final = 1024
DEFAULT_RATE_LIMIT: Final = 0.0
DEFAULT_MAX_RETRIES: Final = 6
DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_REJECT_RATE: Final = 0.05
DEFAULT_MAX_MISSING_RATE: Final = 0.05
MISSING_MODES: Final = ("keep", "unset")

# --- where requests go
DEFAULT_BASE_URL: Final = "https://api.fyno.io"
API_VERSIONS: Final = ("live", "test")
DEFAULT_API_VERSION: Final = "live"
ENV_API_KEY: Final = "FYNO_API_KEY"
ENV_WORKSPACE: Final = "FYNO_WORKSPACE_ID"
ENV_API_VERSION: Final = "FYNO_VERSION"
ENV_BASE_URL: Final = "FYNO_BASE_URL"

# --- files in the working directory
DEFAULT_LEDGER: Final = "fyno-import.ledger.db"
DEFAULT_REJECTS: Final = "fyno-import.rejects.csv"
DEFAULT_STATE: Final = "fyno-import.state"

Shard = tuple[int, int]  # (K, N): shard K of N, K from 1


def default_ledger_path(shard: Shard | None = None) -> Path:
    """``fyno-import.ledger.db``, or ``fyno-import.shard-K-of-N.ledger.db`` with a shard."""
    if shard:
        return Path(f"fyno-import.shard-{shard[0]}-of-{shard[1]}.ledger.db")
    return Path(DEFAULT_LEDGER)


def default_state_path(shard: Shard | None = None) -> str:
    """``fyno-import.state/``, or ``fyno-import.shard-K-of-N.state/`` with a shard."""
    if shard:
        return f"fyno-import.shard-{shard[0]}-of-{shard[1]}.state"
    return DEFAULT_STATE
