"""The "ideal client": the importer's own request bodies, pre-built in memory, sent by plain httpx.

The bodies are built once per (file, batch size, importer version) with the importer's library
(``preview``, which runs the same transform and chunker as ``run``) and cached in
``bench/.cache/bodies/`` one per line (compact JSON has no raw newline). Timing starts when the
first request is started and stops when the last answer is in; reading the cache is not timed.

    python -m bench.ideal BODIES_FILE --url BATCH_URL --concurrency N

Prints one JSON object: requests, items, bytes, elapsed_s, cpu_s (of the sending), statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.data import CACHE

BODIES = CACHE / "bodies"
_ITEM = b'{"distinct_id":'


def bodies_path(source: Path, batch_size: int) -> Path:
    """Where the bodies of ``source`` cut at ``batch_size`` are cached."""
    return BODIES / f"{source.name}.b{batch_size}.jsonl"


def _builder_digest(mapping: Path) -> str:
    """What the cached bodies depend on: the mapping and the importer's transform and chunker."""
    import importer

    digest = hashlib.sha256(mapping.read_bytes())
    package = Path(importer.__file__).parent
    for part in ("transform", "chunker.py", "sources"):
        path = package / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def ensure_bodies(source: Path, mapping: Path, batch_size: int) -> Path:
    """Build (once per importer version) every body ``run`` would send for ``source``."""
    target = bodies_path(source, batch_size)
    stamp = target.with_name(target.name + ".digest")
    digest = _builder_digest(mapping)
    if target.exists() and stamp.exists() and stamp.read_text() == digest:
        return target
    from importer.mapping import load_mapping
    from importer.pipeline import ImportOptions, preview

    loaded = load_mapping(mapping)
    settings = loaded.settings.model_copy(update={"batch_size": batch_size})
    options = ImportOptions(
        sources=[str(source)], mapping=loaded, settings=settings, rejects=Path(os.devnull)
    )
    BODIES.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        bodies = preview(options, count=2**62)
        with open(scratch, "wb") as handle:
            for body in bodies:
                handle.write(body)
                handle.write(b"\n")
        os.replace(scratch, target)
        stamp.write_text(digest)
    finally:
        scratch.unlink(missing_ok=True)
    return target


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
        "cpu_s": cpu,  # of the timed sending only (not start-up or loading the bodies)
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.ideal")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--url", required=True, help="the batch endpoint")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    bodies = args.bodies.read_bytes().splitlines()
    result = asyncio.run(send(bodies, args.url, args.concurrency))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
