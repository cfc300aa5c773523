"""The network-shaped scenarios: injected latency (d) and the emulator's rate limit (e)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.procs import FYNO_IMPORT, Emulator, StatsPoller, run_measured
from bench.scenarios.common import (
    ImporterRun,
    Plan,
    Results,
    Row,
    human,
    ideal_client,
    importer,
    median,
    median_run,
    rate,
    verdict,
)

# --- d: latency -----------------------------------------------------------------------------


def latency(results: Results) -> None:
    """50 ms per request: achieved rows/s against min(c × batch / 0.05 s, ideal at c)."""
    plan = results.plan
    seconds = plan.latency_ms / 1000
    points = []
    parts = []
    with procs.emulator("--sink", "--latency-ms", str(plan.latency_ms)) as emu:
        for concurrency in plan.latency_concurrency:
            source = data.ensure(plan.latency_rows(concurrency), "parquet")
            runs: list[ImporterRun] = []
            ideals: list[float] = []
            for _ in range(plan.repeats):
                runs.append(importer(source, emu=emu, options=("--concurrency", str(concurrency))))
                ideals.append(ideal_client(source, emu, concurrency, plan.batch)["rows_per_s"])
            mid = median_run(runs)
            ideal_rate = median(ideals)
            theory = concurrency * plan.batch / seconds
            bound = min(theory, ideal_rate)
            send_rates = [r.send_rows_per_s for r in runs if r.send_rows_per_s]
            send_rate = median(send_rates) if send_rates else None
            fraction = mid.rows_per_s / bound
            send_fraction = send_rate / bound if send_rate else None
            point = {
                "concurrency": concurrency,
                "rows": mid.rows,
                "rows_per_s": mid.rows_per_s,
                "send_rows_per_s": send_rate,
                "ideal_rows_per_s": ideal_rate,
                "theory": theory,
                "bound": bound,
                "fraction": fraction,
                "send_fraction": send_fraction,
                "rss_mb": max(r.measured.maxrss_mb for r in runs),
                "elapsed_s": mid.elapsed_s,
                "max_in_flight": max((r.max_in_flight or 0) for r in runs),
            }
            points.append(point)
            judged = concurrency >= 16
            reached = point["max_in_flight"] >= concurrency
            send_note = (
                f"; most in flight at the emulator {point['max_in_flight']} of {concurrency} "
                f"({verdict(reached)}: configured concurrency reached)"
            )
            if send_fraction is not None:
                send_note += f"; send phase {rate(send_rate)} rows/s = {send_fraction:.0%}" + (
                    f" ({verdict(send_fraction >= 0.85)})" if judged else ""
                )
            results.rows.append(
                Row(
                    scenario=f"d. latency {plan.latency_ms} ms",
                    setting=f"Parquet {human(mid.rows)} rows, concurrency {concurrency}, "
                    f"batch {plan.batch}",
                    rows_per_s=mid.rows_per_s,
                    items_per_s=mid.items / mid.elapsed_s,
                    rss_mb=point["rss_mb"],
                    figure=f"{fraction:.0%} of {rate(bound)}",
                    target="≥ 85 %" if judged else "(no target)",
                    verdict=verdict(fraction >= 0.85) if judged else "",
                    note=f"bound = min({concurrency}×{plan.batch}/{seconds:g} s = {rate(theory)}, "
                    f"ideal client {rate(ideal_rate)}, pre-built bodies, sending only); "
                    f"run {mid.elapsed_s:.1f} s" + send_note,
                )
            )
            parts.append(
                f"c={concurrency}: {rate(mid.rows_per_s)} rows/s (send {rate(send_rate)}) of "
                f"bound {rate(bound)} = {fraction:.0%}, in flight {point['max_in_flight']}"
            )
    results.raw["latency"] = points
    results.line(f"latency   {plan.latency_ms} ms, median of {plan.repeats}: " + "; ".join(parts))


# --- e: rate limit --------------------------------------------------------------------------


def rate_limit(results: Results) -> None:
    """Emulator token bucket of R req/s: accepted req/s after warm-up, and the 429 share."""
    plan = results.plan
    source = data.ensure(plan.rate_rows, "parquet")
    found = []
    with procs.emulator("--sink", "--rate-limit", f"{plan.rate_limit:g}") as emu:
        for index in range(plan.repeats):
            if index:
                time.sleep(1.5)  # let the bucket refill, as for a fresh run
            run = _rate_run(source, emu, plan)
            found.append(run)
    found.sort(key=lambda f: f["accepted_per_s"])
    mid = found[(len(found) - 1) // 2]
    share = mid["share_429"]
    fraction = mid["accepted_per_s"] / plan.rate_limit
    results.raw["rate"] = {"runs": found, "median": mid}
    common = (
        f"Parquet {human(plan.rate_rows)} rows, emulator --rate-limit {plan.rate_limit:g}, "
        f"batch {plan.batch}, concurrency {plan.concurrency}"
    )
    note = (
        f"sending {mid['send_s']:.1f} s, warm-up {plan.warmup_s:g} s; over the whole send: "
        f"{mid['all_202']} accepted, {mid['all_429']} answered 429 "
        f"({mid['all_429'] / max(mid['all_requests'], 1):.1%}); importer retries "
        f"{mid['retries']}"
    )
    results.rows.append(
        Row(
            scenario="e. rate limit",
            setting=common,
            rows_per_s=mid["rows_per_s"],
            rss_mb=mid["rss_mb"],
            figure=f"{mid['accepted_per_s']:.1f} req/s = {fraction:.0%} of R",
            target="≥ 90 % of R",
            verdict=verdict(fraction >= 0.9),
            note=note,
        )
    )
    results.rows.append(
        Row(
            scenario="e. rate limit",
            setting="… share of requests answered 429 after warm-up",
            figure=f"{share:.1%}",
            target="≤ 2 %",
            verdict=verdict(share <= 0.02),
        )
    )
    results.line(
        f"rate      R={plan.rate_limit:g} req/s, {human(plan.rate_rows)} rows, median of "
        f"{plan.repeats}: {mid['accepted_per_s']:.1f} req/s accepted after {plan.warmup_s:g} s "
        f"({fraction:.0%} of R), 429 share {share:.1%}, send {mid['send_s']:.1f} s"
    )


def _rate_run(source: Path, emu: Emulator, plan: Plan) -> dict[str, Any]:
    emu.reset()
    poller = StatsPoller(emu, interval=0.1)
    scratch = Path(tempfile.mkdtemp(prefix="fyno-bench-", dir=data.CACHE))
    try:
        with poller:
            measured = run_measured(
                [
                    FYNO_IMPORT,
                    "run",
                    str(source),
                    "-m",
                    str(data.MAPPING),
                    "--no-progress",
                    "--json",
                    "--base-url",
                    emu.url,
                    "--workspace",
                    "bench",
                    "--ledger",
                    str(scratch / "bench.ledger.db"),
                    "--rejects",
                    str(scratch / "rejects.csv"),
                ],
                cwd=scratch,
                env={"FYNO_API_KEY": "bench"},
                timeout=600.0,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = measured.json()
    if measured.returncode != 0:
        raise RuntimeError(f"fyno-import run exited {measured.returncode}: {summary.get('error')}")
    samples = poller.samples
    first, last, _ = poller.send_phase()
    warm = next((s for s in samples if s[0] >= first + plan.warmup_s), samples[-1])
    end = samples[-1]
    end_time = next(s[0] for s in samples if s[1] >= end[1])
    accepted = end[2].get("202", 0) - warm[2].get("202", 0)
    refused = end[2].get("429", 0) - warm[2].get("429", 0)
    total = end[1] - warm[1]
    span = max(end_time - warm[0], 1e-9)
    return {
        "accepted_per_s": accepted / span,
        "share_429": refused / max(total, 1),
        "after_warmup_requests": total,
        "after_warmup_429": refused,
        "all_202": end[2].get("202", 0),
        "all_429": end[2].get("429", 0),
        "all_requests": end[1],
        "send_s": last - first,
        "measured_s": span,
        "retries": summary["retries"],
        "rows_per_s": summary["rows_read"] / summary["elapsed_s"],
        "rss_mb": measured.maxrss_mb,
        "chunks": summary["chunks_total"],
    }
