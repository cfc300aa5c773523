"""The benchmark data: N rows of the benchmark shape as Parquet and CSV, written once, cached.

Generated with polars expressions from the row index alone (no random state), so a file of N rows
is the same on every machine and every run. Files live in ``bench/.cache/data/`` (gitignored) and
are written to a temporary name first, so an interrupted generation never leaves a bad cache.

Columns: ``user_id`` (``u-00000001``), ``email``, ``plan``, ``country``, ``marketing_opt_in``
(bool), ``signup_at`` (UTC datetime), ``lifetime_value`` (Decimal(12,2); the mapping ``add``s it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DATA = CACHE / "data"
MAPPING = HERE / "bench_mapping.yaml"
EXPR_MAPPING = HERE / "bench_mapping_expr.yaml"  # three properties computed, a filter
SYNC_MAPPING = HERE / "bench_mapping_sync.yaml"  # lifetime_value set, not add (--changed-only)

PLANS = ["free", "starter", "pro", "business", "enterprise"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "SG", "AU", "CA", "NL", "ES", "MX", "ZA"]
_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z
_SPAN = 5 * 365 * 86_400  # signups spread over five years
_GEN_BLOCK = 2_000_000  # rows generated per step (bounds the generator's memory)


def _mix(i: pl.Expr, salt: int, mod: int) -> pl.Expr:
    """A deterministic scramble of the row index into [0, mod) (32-bit multiply-xorshift)."""
    a = ((i + salt * 1_000_003) * 2_654_435_761) % 4_294_967_296
    a = a.xor(a // 65_536)
    a = (a * 73_244_475) % 4_294_967_296
    a = a.xor(a // 65_536)
    return a % mod


def frame(start: int, stop: int) -> pl.DataFrame:
    """Rows ``start`` to ``stop - 1`` of the benchmark shape."""
    i = pl.int_range(start, stop, dtype=pl.Int64, eager=False)
    plans = pl.Series(PLANS)
    countries = pl.Series(COUNTRIES)
    return (
        pl.select(i.alias("i"))
        .with_columns(
            user_id=pl.lit("u-") + (pl.col("i") + 1).cast(pl.String).str.zfill(8),
            email=pl.lit("user")
            + (pl.col("i") + 1).cast(pl.String)
            + pl.lit("@")
            + pl.lit(pl.Series(["example.com", "mail.example.org", "corp.example.net"])).gather(
                _mix(pl.col("i"), 1, 3)
            ),
            plan=pl.lit(plans).gather(_mix(pl.col("i"), 2, len(PLANS))),
            country=pl.lit(countries).gather(_mix(pl.col("i"), 3, len(COUNTRIES))),
            marketing_opt_in=_mix(pl.col("i"), 4, 3) != 0,
            signup_at=pl.from_epoch(
                _EPOCH + _mix(pl.col("i"), 5, _SPAN), time_unit="s"
            ).dt.replace_time_zone("UTC"),
            cents=_mix(pl.col("i"), 6, 5_000_000),
        )
        .with_columns(
            lifetime_value=(
                (pl.col("cents") // 100).cast(pl.String)
                + pl.lit(".")
                + (pl.col("cents") % 100).cast(pl.String).str.zfill(2)
            ).cast(pl.Decimal(12, 2))
        )
        .drop("i", "cents")
    )


def path(rows: int, fmt: str) -> Path:
    """Where the file of ``rows`` rows in ``fmt`` (``parquet`` or ``csv``) is cached."""
    return DATA / f"bench-{rows}.{fmt}"


def ensure(rows: int, fmt: str) -> Path:
    """The cached file of ``rows`` rows, generated first when missing."""
    target = path(rows, fmt)
    if target.exists():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            writer: pq.ParquetWriter | None = None
            try:
                for start in range(0, rows, _GEN_BLOCK):
                    table = frame(start, min(rows, start + _GEN_BLOCK)).to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(scratch, table.schema, compression="zstd")
                    writer.write_table(table, row_group_size=256 * 1024)
            finally:
                if writer is not None:
                    writer.close()
        elif fmt == "csv":
            with open(scratch, "wb") as handle:
                for start in range(0, rows, _GEN_BLOCK):
                    frame(start, min(rows, start + _GEN_BLOCK)).write_csv(
                        handle,
                        include_header=start == 0,
                        datetime_format="%Y-%m-%dT%H:%M:%SZ",
                    )
        else:
            raise ValueError(f"unknown format {fmt!r}")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def edited_path(rows: int, fmt: str) -> Path:
    """Where the night-2 copy of the ``rows``-row file (1 % of rows edited) is cached."""
    return DATA / f"bench-{rows}.edited.{fmt}"


def edited(rows: int, fmt: str) -> Path:
    """The ``rows``-row file with 1 % of its rows edited (their ``plan`` moved to the next one).

    Which rows is a deterministic scramble of the row index (one in a hundred), so the edited
    rows are spread over the whole file; every other cell is the same as in ``ensure(rows)``.
    """
    target = edited_path(rows, fmt)
    if target.exists():
        return target
    source = ensure(rows, fmt)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    chosen = _mix(pl.col("i"), 7, 100) == 0
    moved = pl.col("plan").replace(PLANS, [*PLANS[1:], PLANS[0]])
    try:
        if fmt == "parquet":
            frame = pl.scan_parquet(source)
        else:
            frame = pl.scan_csv(source, infer_schema_length=0)
        frame = (
            frame.with_row_index("i")
            .with_columns(plan=pl.when(chosen).then(moved).otherwise(pl.col("plan")))
            .drop("i")
        )
        if fmt == "parquet":
            frame.sink_parquet(scratch, compression="zstd", row_group_size=256 * 1024)
        else:
            frame.sink_csv(scratch)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def parts(rows: int, fmt: str, count: int) -> Path:
    """The ``rows``-row file split into ``count`` part files in one directory (cached)."""
    if count == 1:
        return ensure(rows, fmt)
    target = DATA / f"bench-{rows}.{fmt}.{count}-parts"
    if target.exists():
        return target
    whole = pl.read_parquet(ensure(rows, "parquet"))
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    scratch.mkdir(parents=True)
    try:
        step = -(-rows // count)
        for index in range(count):
            part = whole.slice(index * step, step)
            name = scratch / f"part-{index:05d}.{fmt}"
            if fmt == "parquet":
                part.write_parquet(name, compression="zstd")
            else:
                part.write_csv(name, datetime_format="%Y-%m-%dT%H:%M:%SZ")
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
