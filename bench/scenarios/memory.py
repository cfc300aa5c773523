"""f. memory: peak RSS of the importer, dry run and end to end, both formats, at 150k, 1M, 1.5M
and 10M rows (full size); the ratios 1.5M / 150k and 10M / 1M are judged, the 1.5M end-to-end
point against 256 MB, and the points feed the plot of rows/s and RSS against rows."""

from __future__ import annotations

from typing import Any

from bench import data, procs
from bench.scenarios.common import (
    FORMATS,
    Results,
    Row,
    format_name,
    human,
    importer,
    rate,
    verdict,
)

RATIO = 1.3
E2E_RSS_MB = 256.0
KINDS = ("dry run", "end-to-end")


def memory(results: Results) -> None:
    """One run per point; the largest point's timeout scales with its rows."""
    plan = results.plan
    sizes = sorted({rows for pair in plan.memory_pairs for rows in pair})
    points: dict[str, dict[str, dict[int, dict[str, float]]]] = {
        kind: {fmt: {} for fmt in FORMATS} for kind in KINDS
    }
    with procs.emulator("--sink") as emu:
        for fmt in FORMATS:
            for rows in sizes:
                source = data.ensure(rows, fmt)
                timeout = max(600.0, rows / 10_000)
                dry = importer(source, dry_run=True, timeout=timeout)
                run = importer(source, emu=emu, timeout=timeout)
                points["dry run"][fmt][rows] = _point(dry)
                points["end-to-end"][fmt][rows] = _point(run)
    results.raw["memory"] = points
    parts = []
    for kind in KINDS:
        for fmt in FORMATS:
            by_rows = points[kind][fmt]
            for small, large in plan.memory_pairs:
                parts.append(_pair_row(results, kind, fmt, by_rows, small, large))
    for fmt in FORMATS:
        point = points["end-to-end"][fmt][plan.e2e_rows]
        results.rows.append(
            Row(
                scenario="f. memory",
                setting=f"end-to-end, {format_name(fmt)} {human(plan.e2e_rows)} rows",
                rows_per_s=point["rows_per_s"],
                rss_mb=point["rss_mb"],
                figure=f"{point['rss_mb']:.0f} MB",
                target=f"≤ {E2E_RSS_MB:g} MB",
                verdict=verdict(point["rss_mb"] <= E2E_RSS_MB),
                note="one run (c. gives the largest over its repeats)",
            )
        )
    results.line("memory    peak RSS of the importer: " + "; ".join(parts))


def _point(run: Any) -> dict[str, float]:
    return {
        "rss_mb": run.measured.maxrss_mb,
        "rows_per_s": run.rows_per_s,
        "wall_rows_per_s": run.wall_rows_per_s,
        "cpu_us": run.cpu_us_per_row,
    }


def _pair_row(
    results: Results,
    kind: str,
    fmt: str,
    by_rows: dict[int, dict[str, float]],
    small: int,
    large: int,
) -> str:
    low, high = by_rows[small], by_rows[large]
    ratio = high["rss_mb"] / low["rss_mb"]
    results.rows.append(
        Row(
            scenario="f. memory",
            setting=f"{kind}, {format_name(fmt)}: peak RSS {human(large)} / {human(small)} rows",
            rows_per_s=high["rows_per_s"],
            rss_mb=high["rss_mb"],
            figure=f"{high['rss_mb']:.0f} / {low['rss_mb']:.0f} MB = {ratio:.2f}×",
            target=f"≤ {RATIO:g}×",
            verdict=verdict(ratio <= RATIO),
            note=f"rows/s (own clock) {rate(low['rows_per_s'])} at {human(small)}, "
            f"{rate(high['rows_per_s'])} at {human(large)}; CPU {low['cpu_us']:.2f} and "
            f"{high['cpu_us']:.2f} µs/row",
        )
    )
    return (
        f"{kind} {fmt} {low['rss_mb']:.0f} MB at {human(small)}, {high['rss_mb']:.0f} MB at "
        f"{human(large)} ({ratio:.2f}×)"
    )
