"""The sync state: for each profile and mapped property, a hash of the value last accepted.

Layout (a directory, or the same names under an object-store prefix)::

    manifest.json              which generation is current, and what it was written for
    gen-<G>/part-<PPPP>.parquet   the profiles whose id hashes to partition P (xxh3 mod N)
    lock                       the run lock (local: flock; remote: a lease object)

A partition holds ``distinct_id``, ``__i`` (the profile's properties interacted at the last
delivery: see ``diff``) and one ``h_<key>`` column (UInt64) per mapped property, ``key`` naming
the property's identity (name, operator, source, type, …). A new generation is written whole,
partition by partition, then the manifest is replaced in one atomic step: a crash while writing
leaves the previous generation current and whole. Old generations are removed after the switch.

Hashes are xxh3 (polars-hash), stable across versions of polars and of this tool.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl

from importer import config
from importer.errors import StateError, StateMismatchError
from importer.mapping import Mapping, PropertySpec
from importer.send import Target
from importer.sync.files import StateFiles
from importer.transform.values import xxh3

FORMAT: Final = 1
MANIFEST: Final = "manifest.json"
INTERACTED: Final = "__i"
ID: Final = "distinct_id"
_GENERATION = re.compile(r"^gen-(\d+)/")
_MIN_PARTITIONS, _MAX_PARTITIONS = 1, 256
_ROWS_PER_PARTITION = 100_000  # measured: 1.5M profiles peak at 402 MB, 452 MB with 250k


def spec_key(spec: PropertySpec) -> str:
    """The identity of a mapped property: a change of its source, operator or type (or of what
    shapes its values) makes it a new property, sent again in full."""
    data = {
        "property": spec.target,
        "op": spec.op,
        "source": spec.source_key,
        "type": spec.type,
        "split": spec.split,
        "on_null": spec.on_null,
        "on_too_long": spec.on_too_long,
        "format": spec.format,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def hash_column(key: str) -> str:
    """The state column of a property key."""
    return f"h_{key}"


def partition_of(ids: pl.Expr, partitions: int) -> pl.Expr:
    """The partition of each id: xxh3 of its UTF-8 text, mod the partition count."""
    return (xxh3(ids) % partitions).cast(pl.Int32)


def partitions_for(rows: int) -> int:
    """A partition count holding about 100k profiles each (a power of two, 1 to 256)."""
    wanted, count = max(1, rows // _ROWS_PER_PARTITION), _MIN_PARTITIONS
    while count < wanted and count < _MAX_PARTITIONS:
        count *= 2
    return count


@dataclass(frozen=True)
class PropertyInfo:
    """What the state knows of a mapped property (for --missing unset and for messages)."""

    property: str
    op: str


@dataclass(frozen=True)
class Manifest:
    """What the current generation is, and for which target and shard it was written."""

    state_id: str  # changes with every generation: part of the chunk ids cut against it
    generation: int
    base_url: str
    workspace: str
    api_version: str
    shard: list[int] | None
    partitions: int
    properties: dict[str, PropertyInfo]
    profiles: int
    advanced_by: str | None  # the run whose accepted items this generation holds
    written_at: str
    format: int = FORMAT

    def to_json(self) -> bytes:
        """The manifest file's bytes."""
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """A manifest from its file; StateError when it is not one this tool can read."""
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise StateError(
                    f"the state {where} has format {raw.get('format')!r}; this fyno-import "
                    f"reads format {FORMAT}",
                    hint="upgrade fyno-import, or pass --full-resync to write a new state",
                )
            raw["properties"] = {k: PropertyInfo(**v) for k, v in raw["properties"].items()}
            return cls(**raw)
        except StateError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(
                f"the state {where} is damaged: its manifest cannot be read ({exc})",
                hint="pass --full-resync to send everything and write a new state",
            ) from None

    def target_text(self) -> str:
        """Where the state's values were delivered, for messages."""
        return f"{self.base_url} (workspace {self.workspace}, version {self.api_version})"


@dataclass
class SyncState:
    """An opened state: its files, and its current manifest (None for a new state)."""

    files: StateFiles
    manifest: Manifest | None = None
    _locked: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, files: StateFiles, *, rewrite: bool = False) -> SyncState:
        """Lock the state and read its manifest.

        With ``rewrite`` (--full-resync) a manifest this tool cannot read, damaged or of another
        format, is taken as no state: the run sends everything and writes a new one over it.
        """
        files.lock()
        state = cls(files, _locked=True)
        try:
            data = files.read(MANIFEST)
            state.manifest = None if data is None else Manifest.parse(data, files.where)
        except StateError:
            if not rewrite:
                state.close()
                raise
        except BaseException:
            state.close()
            raise
        return state

    def close(self) -> None:
        """Release the lock."""
        if self._locked:
            self.files.unlock()
            self._locked = False

    @property
    def where(self) -> str:
        """The state's path or URL."""
        return self.files.where

    @property
    def state_id(self) -> str:
        """The current generation's id ("new" before the first)."""
        return self.manifest.state_id if self.manifest else "new"

    def check(self, target: Target, shard: config.Shard | None) -> None:
        """A state written for another target or shard is never used (exit 2, naming both)."""
        m = self.manifest
        if m is None:
            return
        given = (target.base_url.rstrip("/"), target.workspace, target.api_version)
        if (m.base_url.rstrip("/"), m.workspace, m.api_version) != given:
            raise StateMismatchError(
                f"the state {self.where} holds what was delivered to {m.target_text()}, not to "
                f"{target.base_url} (workspace {target.workspace}, version {target.api_version})",
                hint="use the state of that target (--state), or another --state for this one",
            )
        if (m.shard or None) != (list(shard) if shard else None):
            raise StateMismatchError(
                f"the state {self.where} belongs to shard {m.shard}, not to {list(shard or [])}",
                hint="each shard keeps its own state (--state)",
            )

    def partition(self, index: int) -> pl.DataFrame | None:
        """One partition of the current generation, or None (a new state, or an empty part)."""
        if self.manifest is None:
            return None
        name = _part_name(self.manifest.generation, index)
        data = self.files.read(name)
        if data is None:
            return None
        try:
            return pl.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise StateError(
                f"the state {self.where} is damaged: {name} cannot be read ({exc})",
                hint="pass --full-resync to send everything and write a new state",
            ) from None

    def write(
        self,
        parts: Iterator[tuple[int, pl.DataFrame]],
        *,
        base: Manifest,
    ) -> Manifest:
        """Write a new generation from ``parts``, then make it current in one atomic step."""
        generation = self._next_generation()
        profiles = 0
        for index, frame in parts:
            if frame.height:
                buffer = io.BytesIO()
                frame.write_parquet(buffer, compression="zstd")
                self.files.write(_part_name(generation, index), buffer.getvalue())
                profiles += frame.height
        manifest = Manifest(
            **{
                **asdict(base),
                "properties": base.properties,
                "state_id": secrets.token_hex(8),
                "generation": generation,
                "profiles": profiles,
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        self.files.replace(MANIFEST, manifest.to_json())
        self.manifest = manifest
        self.remove_other_generations()
        return manifest

    def _next_generation(self) -> int:
        """One above the current generation and any other one on disk (a damaged state's, or a
        crashed write's), so that no part of another generation is read as one of the new."""
        found = [int(m.group(1)) for n in self.files.names() if (m := _GENERATION.match(n))]
        return max([self.manifest.generation if self.manifest else 0, *found]) + 1

    def remove_other_generations(self) -> None:
        """Delete generations other than the current one (old ones, or a crashed write's)."""
        current = self.manifest.generation if self.manifest else None
        for name in self.files.names():
            match = _GENERATION.match(name)
            if match and int(match.group(1)) != current:
                self.files.delete(name)


def _part_name(generation: int, index: int) -> str:
    return f"gen-{generation}/part-{index:04d}.parquet"


def new_manifest(
    *,
    target: Target,
    shard: config.Shard | None,
    partitions: int,
    mapping: Mapping,
    run_id: str | None,
) -> Manifest:
    """The manifest a run writes (its state id, generation and counts are filled in on write)."""
    return Manifest(
        state_id="",
        generation=0,
        base_url=target.base_url,
        workspace=target.workspace,
        api_version=target.api_version,
        shard=list(shard) if shard else None,
        partitions=partitions,
        properties={
            spec_key(s): PropertyInfo(property=s.target, op=s.op) for s in mapping.properties
        },
        profiles=0,
        advanced_by=run_id,
        written_at="",
    )


def schema_for(keys: Sequence[str]) -> dict[str, pl.DataType]:
    """A partition's columns for these property keys."""
    schema: dict[str, pl.DataType] = {ID: pl.String(), INTERACTED: pl.Boolean()}
    schema.update({hash_column(k): pl.UInt64() for k in keys})
    return schema


def conform(frame: pl.DataFrame | None, keys: Sequence[str]) -> pl.DataFrame:
    """A partition with exactly these property columns: new ones null, unmapped ones dropped
    (a property no longer mapped is forgotten)."""
    schema = schema_for(keys)
    if frame is None:
        return pl.DataFrame(schema=schema)
    have = set(frame.columns)
    return frame.select(
        pl.col(name) if name in have else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


def manifest_info(manifest: Manifest | None) -> dict[str, Any]:
    """A few facts of the state for the summary and the ledger."""
    if manifest is None:
        return {"generation": 0, "profiles": 0}
    return {"generation": manifest.generation, "profiles": manifest.profiles}
