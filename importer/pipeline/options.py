"""The options of ``run_import`` and ``retry_failed``, already parsed and merged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from importer import config
from importer.chunker import ChunkSettings
from importer.config.settings import Settings
from importer.mapping import Mapping
from importer.send import SendConfig, Target


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """Everything ``validate``, ``preview`` and ``run_import`` need."""

    sources: list[str]
    mapping: Mapping
    settings: Settings
    format: str | None = None
    ledger: Path | None = None  # None: the default (per shard), or a temporary one (emulator)
    rejects: Path = Path(config.DEFAULT_REJECTS)
    dry_run: bool = False
    force: bool = False
    shard: config.Shard | None = None
    target: Target | None = None  # None with dry_run or emulator
    emulator: bool = False
    show_profiles: int = 0  # with emulator: fetch this many resulting profiles for the summary
    state: str | None = None  # --changed-only: the state's path or URL (None: the default)
    full_resync: bool = False

    def chunk_settings(self, sync: str | None = None) -> ChunkSettings:
        """The settings that decide chunk ids (``sync``: the state they are cut against)."""
        return ChunkSettings(
            batch_size=self.settings.batch_size,
            max_batch_bytes=self.settings.max_batch_bytes,
            shard=self.shard,
            sync=sync,
        )

    @property
    def changed_only(self) -> bool:
        """Incremental sync: only what changed since the last delivery is sent."""
        return self.settings.changed_only

    def state_path(self) -> str:
        """Where the sync state lives: --state, or the default (one per shard)."""
        return self.state or config.default_state_path(self.shard)

    def send_config(self) -> SendConfig:
        """The sender's settings."""
        return send_config(self.settings)


@dataclass(frozen=True, kw_only=True)
class RetryOptions:
    """Everything ``retry_failed`` needs."""

    ledger: Path
    run_id: str | None
    include_ambiguous: bool
    settings: Settings
    api_key: str = field(repr=False)
    base_url: str | None = None  # given on the command line: must match the ledger's
    workspace: str | None = None
    api_version: str | None = None


def send_config(settings: Settings) -> SendConfig:
    """The sender's part of the run settings."""
    return SendConfig(
        concurrency=settings.concurrency,
        rate_limit=settings.rate_limit,
        max_retries=settings.max_retries,
        timeout=settings.timeout,
    )
