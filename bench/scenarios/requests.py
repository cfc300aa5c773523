"""i. full requests: one 150k-row file against the same rows as 100 and as 1,000 part files.

``run --dry-run --json`` on each; its ``chunks_total`` is what a run would send, judged against
the contract's bound ceil(items / batch size) × 1.02 + 2 (the byte bound does not bind here: a
500-item body of the benchmark shape is about 110 KB).
"""

from __future__ import annotations

import math

from bench import data
from bench.scenarios.common import (
    FORMATS,
    Results,
    Row,
    format_name,
    human,
    importer,
    verdict,
)


def full_requests(results: Results) -> None:
    """chunks_total for 1, 100 and 1,000 files of the same rows, both formats."""
    plan = results.plan
    rows = plan.parts_rows
    found: dict[str, dict[int, dict[str, float]]] = {}
    parts = []
    for fmt in FORMATS:
        found[fmt] = {}
        for count in plan.parts:
            source = data.parts(rows, fmt, count)
            run = importer(source, dry_run=True)
            chunks = int(run.summary["chunks_total"])
            bound = math.ceil(run.items / plan.batch) * 1.02 + 2
            found[fmt][count] = {"chunks": chunks, "bound": bound, "items": run.items}
            results.rows.append(
                Row(
                    scenario="i. full requests (`run --dry-run`)",
                    setting=f"{format_name(fmt)} {human(rows)} rows as "
                    + ("one file" if count == 1 else f"{count:,} part files"),
                    rows_per_s=run.rows_per_s,
                    rss_mb=run.measured.maxrss_mb,
                    figure=f"{chunks:,} requests",
                    target=f"≤ ceil({run.items:,} / {plan.batch}) × 1.02 + 2 = {bound:,.0f}",
                    verdict=verdict(chunks <= bound),
                    note=f"wall {run.wall_s:.2f} s; {run.summary['bytes_total']:,} bytes",
                )
            )
            parts.append(f"{fmt} ×{count}: {chunks:,} (bound {bound:,.0f})")
    results.raw["parts"] = found
    results.line(f"requests  {human(rows)} rows, chunks_total: " + "; ".join(parts))
