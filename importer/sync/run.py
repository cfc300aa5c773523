"""One run's incremental sync: pass 1's contributions, the comparison, and the state's advance.

The pipeline drives it in this order: ``contribute`` for every validated batch, ``compare`` once
pass 1 is done (what to send; missing profiles; the --max-missing-rate guard), and ``advance``
once every chunk has its answer, with the ids of the chunks that were not accepted: their
profiles keep their previous state, so the next run sends them again.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from importer import config
from importer.errors import MissingRateError, StateError, StateWriteError
from importer.mapping import Mapping
from importer.send import Target
from importer.sync.diff import PartDiff, Rule, Spill, diff_partition, rules_for
from importer.sync.state import (
    ID,
    Manifest,
    SyncState,
    conform,
    new_manifest,
    partitions_for,
)
from importer.transform import Transformer, TransformResult


@dataclass(frozen=True)
class Comparison:
    """What the comparison decided."""

    keep: pl.DataFrame | None  # ID and s<i>; None: send everything (a new state, a resync)
    missing_items: pl.DataFrame  # $unset items for profiles no longer imported
    profiles_changed: int
    profiles_missing: int
    state_profiles: int


class SyncRun:
    """The sync work of one run (or dry run)."""

    def __init__(
        self,
        state: SyncState,
        *,
        mapping: Mapping,
        full_resync: bool,
        missing: str,
        max_missing_rate: float,
        expected_rows: int,
    ) -> None:
        self.state = state
        self.mapping = mapping
        manifest = state.manifest
        self.resync = full_resync or manifest is None
        self.missing_unset = missing == "unset" and not self.resync
        self.max_missing_rate = max_missing_rate
        self.partitions = manifest.partitions if manifest else partitions_for(expected_rows)
        self._folder = Path(tempfile.mkdtemp(prefix="fyno-import-sync-"))
        self.spill = Spill(self._folder, self.partitions)
        self.rules: list[Rule] = []

    @property
    def key(self) -> str:
        """What the chunks of this run are cut against (part of their ids)."""
        mode = "resync" if self.resync else f"diff/{'unset' if self.missing_unset else 'keep'}"
        return f"{self.state.state_id}/{mode}"

    def contribute(self, transformer: Transformer, result: TransformResult, index: int) -> None:
        """Pass 1: spill one validated batch's contributions."""
        if not self.rules:
            self.rules = rules_for(self.mapping, transformer.unset_hashes())
        if result.contributions is not None:
            self.spill.add(result.contributions, index)

    def compare(self) -> Comparison:
        """Compare the import with the state, partition by partition; keep what advance needs."""
        self.spill.close()
        keeps: list[pl.DataFrame] = []
        items: list[pl.DataFrame] = []
        changed = missing = state_profiles = 0
        for part in range(self.partitions):
            diff = self._diff(part)
            keeps.append(diff.keep)
            items.append(diff.missing_items)
            changed += diff.keep.height
            missing += diff.missing.height
            state_profiles += diff.state_profiles
            diff.pending.write_ipc(self._folder / f"pending-{part:04d}.arrow")
            diff.missing_items.select(ID).write_ipc(self._folder / f"cleared-{part:04d}.arrow")
        self._guard_missing(missing, state_profiles)
        return Comparison(
            keep=None if self.resync else pl.concat(keeps),
            missing_items=pl.concat(items),
            profiles_changed=changed,
            profiles_missing=missing if self.missing_unset else 0,
            state_profiles=state_profiles,
        )

    def _guard_missing(self, missing: int, state_profiles: int) -> None:
        """A truncated export must not wipe profiles: stop before sending (exit 3)."""
        if not (self.missing_unset and state_profiles):
            return
        share = missing / state_profiles
        if share > self.max_missing_rate:
            raise MissingRateError(
                f"{missing} of the state's {state_profiles} profiles ({share:.1%}) are missing "
                f"from this import, over --max-missing-rate {self.max_missing_rate:g}; "
                "nothing was sent",
                hint="check that the export is complete; raise --max-missing-rate if so many "
                "profiles really left, or use --missing keep",
            )

    def _diff(self, part: int) -> PartDiff:
        return diff_partition(
            self.spill.read(part),
            None if self.resync else self.state.partition(part),
            self.rules,
            resync=self.resync,
            missing_unset=self.missing_unset,
        )

    def advance(
        self, *, failed: pl.DataFrame, target: Target, shard: config.Shard | None, run_id: str
    ) -> Manifest:
        """Write the state that this run's accepted items make, as a new generation.

        ``failed`` holds the ids of every item of a chunk that was not accepted: those profiles
        keep their previous state, so the next run sends their values again.
        """
        base = new_manifest(
            target=target,
            shard=shard,
            partitions=self.partitions,
            mapping=self.mapping,
            run_id=run_id,
        )
        keys = list(base.properties)
        try:
            return self.state.write(
                ((p, self._advanced(p, keys, failed)) for p in range(self.partitions)), base=base
            )
        except StateError as exc:
            raise StateWriteError(
                f"the state {self.state.where} could not be written, so it was not advanced: "
                f"{exc.message}",
                hint="the next run sends these values again (nothing is lost); rerun this same "
                "command to finish writing it",
            ) from None

    def _advanced(self, part: int, keys: list[str], failed: pl.DataFrame) -> pl.DataFrame:
        pending = conform(pl.read_ipc(self._folder / f"pending-{part:04d}.arrow"), keys)
        pending = pending.join(failed, on=ID, how="anti")
        if self.resync:
            return _without_empty(pending)
        old = conform(self.state.partition(part), keys)
        merged = pl.concat([old.join(pending, on=ID, how="anti"), pending])
        cleared = pl.read_ipc(self._folder / f"cleared-{part:04d}.arrow").join(
            failed, on=ID, how="anti"
        )
        if cleared.height:
            gone = [r.column for r in self.rules if r.op in ("set", "once")]
            marked = merged.join(
                cleared.with_columns(pl.lit(True).alias("__gone")), on=ID, how="left"
            )
            merged = marked.with_columns(
                pl.when(pl.col("__gone")).then(None).otherwise(pl.col(c)).alias(c) for c in gone
            ).drop("__gone")
        return _without_empty(merged)

    def close(self) -> None:
        """Remove the spill."""
        self.spill.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _without_empty(frame: pl.DataFrame) -> pl.DataFrame:
    """Profiles with at least one delivered property (a profile holding nothing is forgotten)."""
    hashes = [c for c in frame.columns if c.startswith("h_")]
    if not hashes:
        return frame.clear()
    return frame.filter(pl.any_horizontal([pl.col(c).is_not_null() for c in hashes]))
