"""A plain-Python importer of the benchmark shape: the yardstick for ``prep``.

What a careful person writes without polars: read rows (the csv module, or pyarrow's
``to_pylist`` for Parquet), check and convert each cell by the mapping's type, build the item as a
dict, ``json.dumps`` it, and cut items into bodies of at most ``batch_size`` items and
``max_batch_bytes`` bytes. It builds the same item JSON as the importer (checked by the bench
through the total item bytes) but sends nothing, like ``run --dry-run``.

    python -m bench.baseline FILE [--batch-size 500] [--max-batch-bytes 1000000]

Prints one JSON object: rows, items, chunks, item_bytes, body_bytes, elapsed_s (after imports).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_SET = ("email", "plan", "country")
MAX_STRING = 255


class Invalid(ValueError):
    """A cell that does not convert."""


def _string(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_STRING:
        raise Invalid("too long")
    return text


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise Invalid("not a boolean")


def _number(value: Any) -> float | int:
    if isinstance(value, (int, float, Decimal)):
        number = float(value)
    else:
        text = str(value).strip()
        if not _NUMBER.match(text):
            raise Invalid("not a number")
        number = float(text)
    if not math.isfinite(number):
        raise Invalid("not finite")
    return number


def _datetime(value: Any) -> str:
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    millis = stamp.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def item_json(row: dict[str, Any]) -> str | None:
    """The item of one row as compact JSON, or None when the row is invalid."""
    raw_id = row.get("user_id")
    distinct_id = str(raw_id).strip() if raw_id is not None else ""
    if not distinct_id:
        return None
    action: dict[str, dict[str, Any]] = {}
    try:
        to_set: dict[str, Any] = {}
        for name in _SET:
            if row.get(name) not in (None, ""):
                to_set[name] = _string(row[name])
        if row.get("marketing_opt_in") not in (None, ""):
            to_set["marketing_opt_in"] = _boolean(row["marketing_opt_in"])
        if to_set:
            action["$set"] = to_set
        if row.get("signup_at") not in (None, ""):
            action["$once"] = {"signup_at": _datetime(row["signup_at"])}
        if row.get("lifetime_value") not in (None, ""):
            action["$add"] = {"lifetime_value": _number(row["lifetime_value"])}
    except (Invalid, ValueError):
        return None
    if not action:
        return None
    return json.dumps(
        {"distinct_id": distinct_id, "action": action}, ensure_ascii=False, separators=(",", ":")
    )


def rows_of(path: str) -> Iterator[dict[str, Any]]:
    """The rows of a CSV or Parquet file as dicts."""
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            yield from batch.to_pylist()
    else:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle)


def run(path: str, batch_size: int, max_batch_bytes: int) -> dict[str, Any]:
    """Read, check, build and cut; count what would be sent."""
    started = time.perf_counter()
    rows = items = chunks = item_bytes = body_bytes = rejected = 0
    pending: list[str] = []
    pending_bytes = len('{"batch":[]}') - 1

    def flush() -> None:
        nonlocal chunks, body_bytes, pending_bytes
        body = ('{"batch":[' + ",".join(pending) + "]}").encode()
        chunks += 1
        body_bytes += len(body)
        pending.clear()
        pending_bytes = len('{"batch":[]}') - 1

    for row in rows_of(path):
        rows += 1
        item = item_json(row)
        if item is None:
            rejected += 1
            continue
        size = len(item.encode())
        items += 1
        item_bytes += size
        if pending and (len(pending) >= batch_size or pending_bytes + size + 1 > max_batch_bytes):
            flush()
        pending.append(item)
        pending_bytes += size + 1
    if pending:
        flush()
    return {
        "rows": rows,
        "rows_rejected": rejected,
        "items": items,
        "chunks": chunks,
        "item_bytes": item_bytes,
        "body_bytes": body_bytes,
        "elapsed_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("path")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-batch-bytes", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    json.dump(run(args.path, args.batch_size, args.max_batch_bytes), sys.stdout)
    print()


if __name__ == "__main__":
    main()
