"""The "ideal client": request bodies built in memory with polars, then sent by plain httpx.

It reads the benchmark file with polars, builds every item of the benchmark shape as JSON with
polars expressions (the same JSON as the importer's; the bench compares the bytes), joins them
into bodies of ``--batch-size`` items in memory, and sends them ``--concurrency`` at a time over
one pooled ``httpx.AsyncClient``. Nothing is cached: the build is part of every run, and the bench
times the whole process (start-up, reading, building, sending) against the importer's process.

    python -m bench.ideal SOURCE --url BATCH_URL [--concurrency 8] [--batch-size 500]

Prints one JSON object: requests, items, bytes, build_s, elapsed_s (the sending alone), cpu_s (of
the sending), statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl

_ITEM = b'{"distinct_id":'
_CSV_TYPES = {"marketing_opt_in": pl.Boolean, "lifetime_value": pl.Float64, "signup_at": pl.String}


def read(source: Path) -> pl.DataFrame:
    """The file's rows, typed like the Parquet file (CSV cells parsed)."""
    if source.suffix == ".csv":
        frame = pl.read_csv(source, schema_overrides=_CSV_TYPES, infer_schema_length=0)
        stamp = pl.col("signup_at").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
        return frame.with_columns(signup_at=stamp)
    return pl.read_parquet(source)


def build(frame: pl.DataFrame, batch_size: int) -> list[bytes]:
    """Every request body of the benchmark shape, ``batch_size`` items each."""
    action = pl.struct(
        pl.struct("email", "plan", "country", "marketing_opt_in").alias("$set"),
        pl.struct(pl.col("signup_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).alias("$once"),
        pl.struct(pl.col("lifetime_value").cast(pl.Float64)).alias("$add"),
    )
    item = pl.struct(pl.col("user_id").alias("distinct_id"), action.alias("action"))
    bodies = (
        frame.lazy()
        .select(item.struct.json_encode().alias("item"))
        .with_row_index("n")
        .group_by(pl.col("n") // batch_size, maintain_order=True)
        .agg(pl.col("item").str.join(","))
        .select(pl.lit('{"batch":[') + pl.col("item") + pl.lit("]}"))
        .collect()
        .to_series()
    )
    return [body.encode() for body in bodies]


async def send(bodies: list[bytes], url: str, concurrency: int) -> dict[str, Any]:
    """Send every body, ``concurrency`` at a time, over one pooled client; time it."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    sent_bytes = 0
    pending = iter(bodies)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent_bytes
        for body in pending:
            answer = await client.post(url, content=body)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            sent_bytes += len(body)

    async with httpx.AsyncClient(
        headers=headers, limits=limits, timeout=60.0, trust_env=False
    ) as client:
        started, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker(client))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "requests": len(bodies),
        "items": sum(body.count(_ITEM) for body in bodies),
        "bytes": sent_bytes,
        "elapsed_s": elapsed,
        "cpu_s": cpu,  # of the timed sending only
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.ideal")
    parser.add_argument("source", type=Path)
    parser.add_argument("--url", required=True, help="the batch endpoint")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    bodies = build(read(args.source), args.batch_size)
    build_s = time.perf_counter() - started
    result = asyncio.run(send(bodies, args.url, args.concurrency))
    result["build_s"] = build_s
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
