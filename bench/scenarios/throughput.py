"""Throughput: the dry run (prep), the plain-Python baseline, end to end against the ideal client,
and the cost of computed values (expr)."""

from __future__ import annotations

import sys
from typing import Any

from bench import data, procs
from bench.procs import FYNO_IMPORT, run_measured
from bench.scenarios.common import (
    BODY_OVERHEAD,
    FORMATS,
    ImporterRun,
    Results,
    Row,
    format_name,
    human,
    ideal_client,
    importer,
    median,
    median_by,
    median_run,
    rate,
    verdict,
)

BASELINE_RATIO = 15.0  # run --dry-run / plain Python, process wall times, start-up included
E2E_RATIO = 1.25  # importer wall / ideal client wall, at most
E2E_RSS_MB = 256.0
E2E_CPU_US = 5.0


# --- a: prep --------------------------------------------------------------------------------


def prep(results: Results) -> None:
    """``run --dry-run`` on the base size, Parquet and CSV: wall, rows/s, CPU, peak RSS."""
    plan = results.plan
    startup = median([run_measured([FYNO_IMPORT, "--version"]).wall_s for _ in range(plan.repeats)])
    results.raw["startup_s"] = startup
    parts = []
    for fmt in FORMATS:
        source = data.ensure(plan.base_rows, fmt)
        runs = [importer(source, dry_run=True) for _ in range(plan.repeats)]
        mid = median_run(runs, "wall_rows_per_s")
        rss = max(r.measured.maxrss_mb for r in runs)
        results.raw[f"prep_{fmt}"] = {
            "rows_per_s": mid.rows_per_s,
            "wall_s": mid.wall_s,
            "rss_mb": rss,
            "cpu_s": mid.measured.cpu_s,
            "items": mid.items,
            "chunks": mid.summary["chunks_total"],
            "bytes": mid.summary["bytes_total"],
            "rows": mid.rows,
        }
        results.rows.append(
            Row(
                scenario="a. prep (`run --dry-run`)",
                setting=f"{format_name(fmt)}, {human(mid.rows)} rows",
                rows_per_s=mid.rows_per_s,
                items_per_s=mid.items / mid.elapsed_s,
                rss_mb=rss,
                figure=f"wall {mid.wall_s:.2f} s ({rate(mid.wall_rows_per_s)} rows/s)",
                note=f"the run's own clock {mid.elapsed_s:.2f} s ({rate(mid.rows_per_s)} rows/s, "
                f"start-up left out), CPU {mid.measured.cpu_s:.2f} s "
                f"({mid.cpu_us_per_row:.2f} µs/row); the target is the ratio in b.",
            )
        )
        parts.append(
            f"{fmt} wall {mid.wall_s:.2f} s (run {mid.elapsed_s:.2f} s, "
            f"{rate(mid.rows_per_s)} rows/s), CPU {mid.measured.cpu_s:.2f} s, peak RSS {rss:.0f} MB"
        )
    results.line(
        f"prep      {human(plan.base_rows)} rows, median of {plan.repeats}: "
        + "; ".join(parts)
        + f"; start-up {startup:.2f} s"
    )


# --- b: baseline ------------------------------------------------------------------------------


def baseline(results: Results) -> None:
    """The plain-Python importer on the same files; process wall of baseline / of the dry run."""
    plan = results.plan
    if "prep_parquet" not in results.raw:
        prep(results)
    parts = []
    for fmt in FORMATS:
        source = data.ensure(plan.base_rows, fmt)
        runs = []
        for _ in range(plan.repeats):
            argv = [sys.executable, "-m", "bench.baseline", str(source), "--batch-size", "500"]
            measured = run_measured(argv, cwd=procs.ROOT)
            if measured.returncode != 0:
                raise RuntimeError(f"bench.baseline failed: {measured.stderr[-800:]}")
            runs.append((measured.json(), measured))
        runs.sort(key=lambda r: r[1].wall_s)
        found, measured = runs[(len(runs) - 1) // 2]
        prep_raw = results.raw[f"prep_{fmt}"]
        ratio = measured.wall_s / prep_raw["wall_s"]
        inner = prep_raw["rows_per_s"] / (found["rows"] / found["elapsed_s"])
        # the importer's item bytes: body bytes less each chunk's wrapper and commas
        prep_item_bytes = prep_raw["bytes"] - prep_raw["chunks"] * (BODY_OVERHEAD - 1)
        prep_item_bytes -= prep_raw["items"]
        same = found["item_bytes"] == prep_item_bytes and found["items"] == prep_raw["items"]
        results.raw[f"baseline_{fmt}"] = {"wall_s": measured.wall_s, "ratio": ratio, "same": same}
        results.rows.append(
            Row(
                scenario="b. baseline (plain Python)",
                setting=f"{format_name(fmt)}, {human(found['rows'])} rows",
                rows_per_s=found["rows"] / found["elapsed_s"],
                rss_mb=max(m.maxrss_mb for _, m in runs),
                figure=f"wall {measured.wall_s:.2f} s / {prep_raw['wall_s']:.2f} s = {ratio:.1f}×",
                target=f"≥ {BASELINE_RATIO:g}× (process wall, start-up included)",
                verdict=verdict(ratio >= BASELINE_RATIO),
                note=f"without start-up (each one's own clock): {inner:.1f}×; "
                + (
                    "same item JSON as the importer (item bytes equal)"
                    if same
                    else "ITEM BYTES DIFFER from the importer's: "
                    f"{found['item_bytes']:,} vs {prep_item_bytes:,}"
                ),
            )
        )
        parts.append(
            f"{fmt} wall {measured.wall_s:.2f} s, baseline/dry-run {ratio:.1f}× (start-up "
            f"included), {inner:.1f}× without" + ("" if same else " (item bytes differ!)")
        )
    results.line(
        f"baseline  {human(plan.base_rows)} rows, median of {plan.repeats}: " + "; ".join(parts)
    )


# --- c: end-to-end, zero latency ------------------------------------------------------------


def end_to_end(results: Results) -> None:
    """``run`` (default settings) into the sink emulator beside the ideal client, both formats."""
    plan = results.plan
    found: dict[str, Any] = {}
    with procs.emulator("--sink") as emu:
        for fmt in FORMATS:
            source = data.ensure(plan.e2e_rows, fmt)
            runs: list[ImporterRun] = []
            ideals: list[dict[str, Any]] = []
            for _ in range(plan.repeats):  # interleaved, so both see the same machine
                runs.append(importer(source, emu=emu))
                ideals.append(ideal_client(source, emu, plan.concurrency, plan.batch))
            found[fmt] = _e2e_rows(results, fmt, runs, ideals)
    results.raw["e2e"] = found


def _e2e_rows(
    results: Results, fmt: str, runs: list[ImporterRun], ideals: list[dict[str, Any]]
) -> dict[str, Any]:
    plan = results.plan
    mid = median_run(runs, "wall_rows_per_s")
    best = median_by(ideals, "wall_rows_per_s")
    ratio = mid.wall_s / best["wall_s"]
    rss = max(r.measured.maxrss_mb for r in runs)
    in_flight = max((r.max_in_flight or 0) for r in runs)
    ideal_in_flight = max((i["max_in_flight"] or 0) for i in ideals)
    sends = [r.send_rows_per_s for r in runs if r.send_rows_per_s]
    send_rate = median(sends) if sends else None
    us = 1e6 / mid.rows
    raw = {
        "rows": mid.rows,
        "wall_s": mid.wall_s,
        "rows_per_s": mid.rows_per_s,
        "wall_rows_per_s": mid.wall_rows_per_s,
        "send_rows_per_s": send_rate,
        "cpu_s": mid.measured.cpu_s,
        "cpu_us": mid.cpu_us_per_row,
        "emulator_cpu_us": (mid.emulator_cpu_s or 0) * us,
        "rss_mb": rss,
        "max_in_flight": in_flight,
        "ideal_wall_s": best["wall_s"],
        "ideal_rows_per_s": best["wall_rows_per_s"],
        "ideal_send_rows_per_s": best["rows_per_s"],
        "ideal_build_s": best["build_s"],
        "ideal_cpu_us": best["process_cpu_s"] * us,
        "ideal_max_in_flight": ideal_in_flight,
        "ideal_same_bytes": best["bytes"] == mid.summary["bytes_sent"],
        "ratio": ratio,
        "concurrency": plan.concurrency,
    }
    _e2e_report(results, fmt, raw)
    return raw


def _e2e_report(results: Results, fmt: str, raw: dict[str, Any]) -> None:
    plan = results.plan
    scenario = "c. end-to-end, zero latency"
    where = f"{format_name(fmt)} {human(raw['rows'])} rows"
    same = "same bytes" if raw["ideal_same_bytes"] else "BYTES DIFFER from the importer's"
    results.rows += [
        Row(
            scenario=scenario,
            setting=f"{where} → sink emulator (own process, same cores), default settings "
            f"(concurrency {plan.concurrency}, batch {plan.batch}), against the ideal client",
            rows_per_s=raw["wall_rows_per_s"],
            rss_mb=raw["rss_mb"],
            figure=f"wall {raw['wall_s']:.2f} s = {raw['ratio']:.2f}× the ideal's "
            f"{raw['ideal_wall_s']:.2f} s ({1 / raw['ratio']:.0%} of the ceiling)",
            target=f"≤ {E2E_RATIO:g}× (≥ 80 %)",
            verdict=verdict(raw["ratio"] <= E2E_RATIO),
            note=f"rows/s on process wall (start-up included); the run's own clock "
            f"{rate(raw['rows_per_s'])} rows/s, send phase {rate(raw['send_rows_per_s'])} rows/s. "
            f"Ideal client: polars read + build {raw['ideal_build_s']:.2f} s (in its wall), "
            f"send {rate(raw['ideal_send_rows_per_s'])} rows/s by plain httpx, {same}. The "
            "importer sends through its own HTTP/1.1 transport under httpx, so it can beat "
            "the ideal (over 100 %).",
        ),
        Row(
            scenario=scenario,
            setting=f"{where}: CPU of the importer process / rows",
            figure=f"{raw['cpu_us']:.2f} µs/row",
            target=f"≤ {E2E_CPU_US:g} µs/row",
            verdict=verdict(raw["cpu_us"] <= E2E_CPU_US),
            note=f"CPU {raw['cpu_s']:.2f} s (user + system, all threads) over wall "
            f"{raw['wall_s']:.2f} s; emulator {raw['emulator_cpu_us']:.2f} µs/row; ideal "
            f"client {raw['ideal_cpu_us']:.2f} µs/row (whole process)",
        ),
        Row(
            scenario=scenario,
            setting=f"{where}: peak RSS of the importer",
            rss_mb=raw["rss_mb"],
            figure=f"{raw['rss_mb']:.0f} MB",
            target=f"≤ {E2E_RSS_MB:g} MB",
            verdict=verdict(raw["rss_mb"] <= E2E_RSS_MB),
            note=f"the largest over {plan.repeats} run(s)",
        ),
        Row(
            scenario=scenario,
            setting=f"{where}: most requests in flight (emulator's `max_in_flight`)",
            figure=f"{raw['max_in_flight']} of {plan.concurrency}",
            target=f"= {plan.concurrency} (configured concurrency reached)",
            verdict=verdict(raw["max_in_flight"] >= plan.concurrency),
            note="counted by the emulator from a request's arrival to its answer; the ideal "
            f"client reached {raw['ideal_max_in_flight']}. With 0 ms latency a request is in "
            "flight only while the server reads and checks it; d. latency shows it at 50 ms.",
        ),
    ]
    results.line(
        f"e2e       {fmt} {human(raw['rows'])} rows, concurrency {plan.concurrency}, median of "
        f"{plan.repeats}: importer wall {raw['wall_s']:.2f} s ({rate(raw['rows_per_s'])} rows/s "
        f"own clock), ideal wall {raw['ideal_wall_s']:.2f} s (build {raw['ideal_build_s']:.2f} "
        f"s), ratio {raw['ratio']:.2f}×; CPU {raw['cpu_s']:.2f} s = {raw['cpu_us']:.2f} µs/row; "
        f"peak RSS {raw['rss_mb']:.0f} MB; max in flight {raw['max_in_flight']} (ideal "
        f"{raw['ideal_max_in_flight']})"
    )


# --- g: computed values ---------------------------------------------------------------------


def expressions(results: Results) -> None:
    """``run --dry-run`` on the base Parquet with the bench mapping, and with three of its
    properties computed by expressions plus a filter: the cost of computed values."""
    plan = results.plan
    source = data.ensure(plan.base_rows, "parquet")
    variants = {"columns": data.MAPPING, "expressions": data.EXPR_MAPPING}
    runs: dict[str, list[ImporterRun]] = {name: [] for name in variants}
    for _ in range(plan.repeats):  # interleaved, so both see the same machine
        for name, mapping in variants.items():
            runs[name].append(importer(source, dry_run=True, mapping=mapping))
    mids = {name: median_run(found) for name, found in runs.items()}
    plain, computed = mids["columns"], mids["expressions"]
    if computed.items != plain.items or computed.summary["rows_filtered"] != 0:
        raise RuntimeError("the expression mapping must make the same items and filter no row")
    ratio = computed.rows_per_s / plain.rows_per_s
    results.raw["expressions"] = {
        name: {"rows_per_s": mid.rows_per_s, "elapsed_s": [r.elapsed_s for r in runs[name]]}
        for name, mid in mids.items()
    }
    for name, mid in mids.items():
        results.rows.append(
            Row(
                scenario="g. computed values (`run --dry-run`)",
                setting=f"Parquet {human(mid.rows)} rows, "
                + (
                    "bench mapping (six columns)"
                    if name == "columns"
                    else "three of the six properties as expressions, and a filter"
                ),
                rows_per_s=mid.rows_per_s,
                items_per_s=mid.items / mid.elapsed_s,
                rss_mb=max(r.measured.maxrss_mb for r in runs[name]),
                figure=f"{rate(mid.rows_per_s)} rows/s"
                + ("" if name == "columns" else f" = {ratio:.0%} of the columns' rate"),
                note=f"run {mid.elapsed_s:.2f} s, CPU {mid.measured.cpu_s:.2f} s",
            )
        )
    results.line(
        f"expr      {human(plan.base_rows)} rows, median of {plan.repeats}: columns "
        f"{rate(plain.rows_per_s)} rows/s, three expressions and a filter "
        f"{rate(computed.rows_per_s)} rows/s ({ratio:.0%})"
    )
