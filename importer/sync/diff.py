"""Comparing an import with the state: what to send, per profile and property. All polars.

Pass 1 gives, per valid row, a hash of what each mapped property adds to the row's items (its
*contribution*; null when nothing). They are spilled to disk partitioned like the state, so each
partition of the import meets the same partition of the state, in bounded memory. Per profile
(several rows of one profile: their contributions in file order, hashed together) and property:

- ``set``: sent when its value differs from the one last accepted; a null cell under
  ``on_null: unset`` only when a value was delivered (and is not cleared already);
- ``once``: sent when the property was never delivered;
- ``append``, ``remove``, ``unset``: sent when the cell differs from the last one delivered
  (then all its pieces);
- ``add``: always sent (a delta).

**Properties that interact.** Sending part of what touches one Fyno property can leave it other
than a full import would (a changed ``set`` of a list after an ``append`` to it, an ``unset``
column naming a property another column sets). So a profile whose properties touch one name
twice (tonight, or at its last delivery: ``__i`` in the state) is compared whole: if anything of
it changed, every property of it is sent, exactly as a full import would. By idempotence of
those operators, a profile sent whole or not at all ends as a full import leaves it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import polars as pl

from importer.mapping import Mapping
from importer.sources import ROW
from importer.sync.state import ID, INTERACTED, hash_column, partition_of, spec_key
from importer.transform import ITEM_SCHEMA
from importer.transform.values import xxh3

ORDER = "__order"  # a row's place in the import: source index, then row
_PART = "__part"
_NOW = "__now"  # the profile's properties interact tonight


@dataclass(frozen=True)
class Rule:
    """One mapped property, as the comparison needs it."""

    index: int  # position in the mapping: the transform's c<i>, n<i>, s<i>
    key: str  # identity in the state
    target: str  # the Fyno property name
    op: str
    unset_hash: int | None  # its contribution for a null cell under on_null: unset
    names_are_data: bool  # an unset column with split: the names it clears come from the cell

    @property
    def column(self) -> str:
        """Its state column."""
        return hash_column(self.key)


def rules_for(mapping: Mapping, unset_hashes: dict[int, int]) -> list[Rule]:
    """The comparison's view of each mapped property."""
    return [
        Rule(
            index=i,
            key=spec_key(spec),
            target=spec.target,
            op=spec.op,
            unset_hash=unset_hashes.get(i),
            names_are_data=spec.op == "unset" and spec.split is not None,
        )
        for i, spec in enumerate(mapping.properties)
    ]


def can_interact(rules: Sequence[Rule]) -> bool:
    """Whether two properties of the mapping can ever touch one Fyno property name."""
    targets = [r.target for r in rules if not r.names_are_data]
    return any(r.names_are_data for r in rules) or len(set(targets)) < len(targets)


class Spill:
    """Pass 1's contributions, partitioned by profile, in Arrow IPC files of a private folder."""

    def __init__(self, folder: Path, partitions: int) -> None:
        self.folder = folder
        self.partitions = partitions
        self._files: dict[int, IO[bytes]] = {}
        self._sizes: dict[int, list[int]] = {}  # per partition, the bytes of each stream in it
        self.rows = 0

    def _path(self, part: int) -> Path:
        return self.folder / f"rows-{part:04d}.arrows"

    def add(self, contributions: pl.DataFrame, source_index: int) -> None:
        """One batch's contributions (from source ``source_index``); each partition's part
        appended to its file as one Arrow IPC stream."""
        if not contributions.height:
            return
        frame = contributions.with_columns(
            (pl.lit(source_index, pl.Int64) * (1 << 32) + pl.col(ROW)).alias(ORDER),
            partition_of(pl.col(ID), self.partitions).alias(_PART),
        )
        self.rows += frame.height
        for (key,), group in frame.partition_by(_PART, as_dict=True).items():
            part = int(key)
            sink = self._files.get(part)
            if sink is None:
                sink = self._files[part] = self._path(part).open("wb")
            start = sink.tell()
            group.drop(_PART).write_ipc_stream(sink)
            self._sizes.setdefault(part, []).append(sink.tell() - start)

    def close(self) -> None:
        """Finish every file."""
        for sink in self._files.values():
            sink.close()
        self._files.clear()

    def read(self, part: int) -> pl.DataFrame | None:
        """The rows of one partition, or None."""
        sizes = self._sizes.get(part)
        if not sizes:
            return None
        with self._path(part).open("rb") as stored:
            frames = [pl.read_ipc_stream(io.BytesIO(stored.read(size))) for size in sizes]
        return pl.concat(frames, rechunk=False)


@dataclass(frozen=True)
class PartDiff:
    """One partition compared."""

    keep: pl.DataFrame  # ID and s<i>: the profiles with something to send, and what
    pending: pl.DataFrame  # the state rows those profiles get once their chunks are accepted
    missing_items: pl.DataFrame  # ITEM_SCHEMA: $unset items for profiles no longer imported
    missing: pl.DataFrame  # ID of every state profile this import lacks
    state_profiles: int


def _combined(column: str) -> pl.Expr:
    """A profile's contribution over its rows: the one, or a hash of all of them in order."""
    values = pl.col(column).drop_nulls()
    several = xxh3(values.cast(pl.String).str.join(","))
    return pl.when(pl.col(column).count() > 1).then(several).otherwise(values.first()).alias(column)


def _profiles(rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Each profile's contribution per column, in the order profiles first appear.

    A profile with one row (most of every export) is its row; only profiles with several rows
    are grouped (``_combined`` hashes their values per group: measured 18 times slower than
    leaving the single rows out of the grouping)."""
    ordered = rows.sort(ORDER)
    repeated = ordered.group_by(ID).len().filter(pl.col("len") > 1).select(ID)
    if not repeated.height:
        return ordered.select(ID, *columns)
    single = ordered.join(repeated, on=ID, how="anti").select(ID, ORDER, *columns)
    several = (
        ordered.join(repeated, on=ID, how="semi")
        .group_by(ID, maintain_order=True)
        .agg(pl.col(ORDER).first(), *map(_combined, columns))
    )
    return pl.concat([single, several]).sort(ORDER).drop(ORDER)


def _interacting(rows: pl.DataFrame, rules: Sequence[Rule]) -> pl.DataFrame:
    """The profiles (ID, __now) whose properties touch one Fyno property name twice tonight."""
    touched = []
    for r in rules:
        spec = pl.lit(r.index, pl.Int32).alias("spec")
        if r.names_are_data:
            names = rows.select(ID, spec, pl.col(f"n{r.index}").alias("name")).explode("name")
            touched.append(names.drop_nulls("name"))
        else:
            present = rows.filter(pl.col(f"c{r.index}").is_not_null())
            touched.append(present.select(ID, spec, pl.lit(r.target).alias("name")))
    both = pl.concat(touched).unique()
    twice = both.group_by(ID, "name").agg(pl.col("spec").n_unique()).filter(pl.col("spec") > 1)
    return twice.select(ID).unique().with_columns(pl.lit(True).alias(_NOW))


def _normal(r: Rule) -> pl.Expr:
    """Whether a property of a profile whose properties do not interact is sent."""
    c, h = pl.col(f"c{r.index}"), pl.col(r.column)
    differs = c.is_not_null() & c.ne_missing(h)
    if r.op == "add":
        return c.is_not_null()
    if r.op == "once":
        return c.is_not_null() & h.is_null()
    if r.unset_hash is not None:  # a null cell under on_null: unset clears only a delivered value
        cleared = pl.lit(r.unset_hash, pl.UInt64)
        delivered = h.is_not_null() & (h != cleared)
        return pl.when(c == cleared).then(delivered).otherwise(differs)
    return differs


def _decisions(joined: pl.DataFrame, rules: Sequence[Rule], *, resync: bool) -> pl.DataFrame:
    """The joined profiles with s<i> (send property i) and their new state columns."""
    contributes = [pl.col(f"c{r.index}").is_not_null() for r in rules]
    if resync:
        sends = contributes
        news = [pl.col(f"c{r.index}") for r in rules]
    else:
        whole = pl.col(_NOW) | pl.col(INTERACTED).fill_null(False)
        changed = pl.any_horizontal(
            [pl.col(f"c{r.index}").ne_missing(pl.col(r.column)) for r in rules]
            + [c for r, c in zip(rules, contributes, strict=True) if r.op == "add"]
        )
        sends = [
            pl.when(whole).then(changed & c).otherwise(_normal(r))
            for r, c in zip(rules, contributes, strict=True)
        ]
        news = [
            pl.when(whole | s).then(pl.col(f"c{r.index}")).otherwise(pl.col(r.column))
            for r, s in zip(rules, sends, strict=True)
        ]
    return joined.with_columns(
        *(s.fill_null(False).alias(f"s{r.index}") for r, s in zip(rules, sends, strict=True)),
        *(
            (pl.lit(None, pl.UInt64) if r.op == "add" else n).alias(f"new{r.index}")
            for r, n in zip(rules, news, strict=True)
        ),
    )


def diff_partition(
    rows: pl.DataFrame | None,
    state: pl.DataFrame | None,
    rules: Sequence[Rule],
    *,
    resync: bool,
    missing_unset: bool,
) -> PartDiff:
    """Compare one partition of the import with the same partition of the state."""
    columns = [f"c{r.index}" for r in rules]
    if rows is None:
        rows = pl.DataFrame(
            schema={ID: pl.String, ORDER: pl.Int64, **dict.fromkeys(columns, pl.UInt64)}
        )
    profiles = _profiles(rows, columns)
    if can_interact(rules) and rows.height:
        profiles = profiles.join(_interacting(rows, rules), on=ID, how="left")
    profiles = profiles.with_columns(
        pl.col(_NOW).fill_null(False) if _NOW in profiles.columns else pl.lit(False).alias(_NOW)
    )
    base = state if (state is not None and not resync) else None
    joined = profiles if base is None else profiles.join(base, on=ID, how="left")
    joined = _with_state_columns(joined, rules)
    decided = _decisions(joined, rules, resync=resync)
    any_send = pl.any_horizontal([pl.col(f"s{r.index}") for r in rules])
    sent = decided.filter(any_send)
    keep = sent.select(ID, *(f"s{r.index}" for r in rules))
    pending = sent.select(
        ID,
        pl.col(_NOW).alias(INTERACTED),
        *(pl.col(f"new{r.index}").alias(r.column) for r in rules),
    )
    missing = (
        _missing(state, profiles) if state is not None else pl.DataFrame(schema={ID: pl.String})
    )
    items = (
        _missing_items(state, missing, rules)
        if missing_unset and state is not None
        else _no_items()
    )
    return PartDiff(keep, pending, items, missing, 0 if state is None else state.height)


def _with_state_columns(joined: pl.DataFrame, rules: Sequence[Rule]) -> pl.DataFrame:
    """Add the state columns a new state (or a new property) lacks, as never delivered."""
    absent = [r.column for r in rules if r.column not in joined.columns]
    extra = [pl.lit(None, pl.UInt64).alias(c) for c in absent]
    if INTERACTED not in joined.columns:
        extra.append(pl.lit(None, pl.Boolean).alias(INTERACTED))
    return joined.with_columns(extra) if extra else joined


def _missing(state: pl.DataFrame, profiles: pl.DataFrame) -> pl.DataFrame:
    """The state's profiles that this import does not have."""
    return state.select(ID).join(profiles.select(ID), on=ID, how="anti")


def _missing_items(
    state: pl.DataFrame, missing: pl.DataFrame, rules: Sequence[Rule]
) -> pl.DataFrame:
    """$unset items clearing, for each missing profile, the set and once properties this tool
    delivered to it (never append, remove or add ones, never one it did not send)."""
    clearable = [r for r in rules if r.op in ("set", "once") and r.column in state.columns]
    if not clearable or not missing.height:
        return _no_items()
    rows = state.join(missing, on=ID, how="semi")
    names = [
        pl.when(_delivered(r)).then(pl.lit(json.dumps(r.target, ensure_ascii=False)))
        for r in clearable
    ]
    listed = pl.concat_str(names, separator=",", ignore_nulls=True)
    id_json = pl.struct(pl.col(ID).alias("v")).struct.json_encode().str.slice(5).str.head(-1)
    item = pl.concat_str(
        [pl.lit('{"distinct_id":'), id_json, pl.lit(',"action":{"$unset":['), listed, pl.lit("]}}")]
    )
    frame = rows.with_columns(listed.alias("__names"), id_json.alias("id_json"), item.alias("item"))
    frame = frame.filter(pl.col("__names") != "")
    return frame.select(
        pl.lit(0, pl.Int64).alias(ROW),
        pl.col(ID),
        "item",
        pl.col("item").str.len_bytes().cast(pl.Int64).alias("nbytes"),
        pl.lit(False).alias("has_add"),
        "id_json",
    )


def _delivered(r: Rule) -> pl.Expr:
    """A value of this property was delivered (not only a clearing of it)."""
    h = pl.col(r.column)
    if r.unset_hash is None:
        return h.is_not_null()
    return h.is_not_null() & (h != pl.lit(r.unset_hash, pl.UInt64))


def _no_items() -> pl.DataFrame:
    return pl.DataFrame(schema=ITEM_SCHEMA)
