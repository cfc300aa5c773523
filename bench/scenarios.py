"""The measurements. Each scenario prints one line of figures and adds rows to the report.

Conventions (see /work/shared/benchmarks.md):

- The importer always runs as its own process (``fyno-import run ...``), so its peak RSS and CPU
  are its own (``os.wait4``). Its rows/s are rows over the summary's ``elapsed_s``: the
  importer's own clock from the command's start to its end (mapping, validation pass, building,
  sending), which leaves out only the interpreter start-up (reported once, as ``startup``).
- End-to-end runs also get a *send phase* figure, timed from the emulator side: from the first
  request the emulator counted to the last (its ``/_emulator/stats`` polled every 50 ms). The
  difference to the whole run is mostly the validation pass that the contract puts before the
  first request.
- Targets are judged on the whole-run figure; the send-phase verdict is given beside it.
- Figures are medians over ``repeats`` runs; peak RSS is the largest of them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import data, ideal, procs
from bench.procs import FYNO_IMPORT, Emulator, Measured, StatsPoller, run_measured

BATCH_PATH = "/v1/bench/live/profiles/properties/batch"
BODY_OVERHEAD = len('{"batch":[]}')


# --- what a run is asked to do ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one benchmark run."""

    base_rows: int  # "1M": prep, baseline, the smaller memory point
    repeats: int
    rate_rows: int  # at 20 req/s x 500 items: 10,000 rows/s, so 300k rows is a 30 s run
    quick: bool = False
    batch: int = 500
    latency_ms: int = 50
    rate_limit: float = 20.0
    warmup_s: float = 5.0
    concurrency: int = 8  # the default; the zero-latency and rate-limit runs use it
    latency_concurrency: tuple[int, ...] = (4, 16, 64)

    @property
    def e2e_rows(self) -> int:
        """The zero-latency end-to-end size: 1.5M at full size."""
        return self.base_rows * 3 // 2

    def latency_rows(self, concurrency: int) -> int:
        """Rows for one latency point: at least ~10 s at the bound (40k rows/s at 4)."""
        return self.base_rows // 2 if concurrency <= 4 else self.base_rows * 2

    @property
    def memory_rows(self) -> tuple[int, int]:
        """The two memory points: 1M and 10M at full size."""
        return self.base_rows, self.base_rows * 10

    @classmethod
    def full(cls, rows: int | None = None) -> Plan:
        """``make bench``: 1M rows, three repeats."""
        return cls(base_rows=rows or 1_000_000, repeats=3, rate_rows=300_000)

    @classmethod
    def quick_plan(cls, rows: int | None = None) -> Plan:
        """``--quick``: 100k rows, one repeat, a 10 s rate-limit run."""
        return cls(base_rows=rows or 100_000, repeats=1, rate_rows=100_000, quick=True)


# --- what a run found -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report's table."""

    scenario: str
    setting: str
    rows_per_s: float | None = None
    items_per_s: float | None = None
    rss_mb: float | None = None
    figure: str = ""  # the judged figure, as text
    target: str = ""
    verdict: str = ""  # PASS / MISS / ERROR / "" (no target)
    note: str = ""


@dataclass
class Results:
    """Everything measured in one run of the suite."""

    plan: Plan
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # for the plots and cross-scenario ratios
    lines: list[str] = field(default_factory=list)  # the one-line summaries, in order

    def line(self, text: str) -> None:
        """Print a scenario's line of figures (and keep it for the report)."""
        self.lines.append(text)
        print(text, flush=True)


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def format_name(fmt: str) -> str:
    """parquet -> Parquet, csv -> CSV."""
    return "CSV" if fmt == "csv" else fmt.capitalize()


def human(rows: int) -> str:
    """1000000 -> 1M, 1500000 -> 1.5M, 100000 -> 100k."""
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:g}M"
    if rows >= 1_000:
        return f"{rows / 1_000:g}k"
    return str(rows)


def rate(value: float | None) -> str:
    """A rate with thousands separators."""
    return "-" if value is None else f"{value:,.0f}"


# --- running the importer ---------------------------------------------------------------------


@dataclass
class ImporterRun:
    """One ``fyno-import run`` process and what it reported."""

    measured: Measured
    summary: dict[str, Any]
    send_s: float | None = None  # the send phase, seen from the emulator
    items_at_emulator: int | None = None
    emulator_cpu_s: float | None = None  # CPU the emulator used during the run

    @property
    def rows(self) -> int:
        """Rows read."""
        return int(self.summary["rows_read"])

    @property
    def elapsed_s(self) -> float:
        """The importer's own clock."""
        return float(self.summary["elapsed_s"])

    @property
    def rows_per_s(self) -> float:
        """Rows over the importer's own clock."""
        return self.rows / max(self.elapsed_s, 1e-9)

    @property
    def items(self) -> int:
        """Items sent (or, for a dry run, that would be)."""
        return int(self.summary["items_sent"] or self.summary["items_total"])

    @property
    def send_rows_per_s(self) -> float | None:
        """Rows over the send phase (end-to-end runs only)."""
        if not self.send_s:
            return None
        return self.rows / self.send_s


def importer(
    source: Path,
    *,
    dry_run: bool = False,
    emu: Emulator | None = None,
    options: tuple[str, ...] = (),
    timeout: float = 1800.0,
    mapping: Path = data.MAPPING,
) -> ImporterRun:
    """Run ``fyno-import run SOURCE`` in a scratch directory (fresh ledger and rejects file)."""
    scratch = Path(tempfile.mkdtemp(prefix="fyno-bench-", dir=data.CACHE))
    try:
        argv = [
            FYNO_IMPORT,
            "run",
            str(source),
            "-m",
            str(mapping),
            "--no-progress",
            "--json",
            "--rejects",
            str(scratch / "rejects.csv"),
            *options,
        ]
        env: dict[str, str] = {}
        if dry_run:
            argv.append("--dry-run")
        else:
            assert emu is not None
            argv += ["--base-url", emu.url, "--workspace", "bench"]
            argv += ["--ledger", str(scratch / "bench.ledger.db")]
            env["FYNO_API_KEY"] = "bench"
        poller = None
        emu_cpu = 0.0
        if emu is not None:
            emu.reset()
            poller = StatsPoller(emu)
            emu_cpu = emu.cpu_s()
            with poller:
                measured = run_measured(argv, cwd=scratch, env=env, timeout=timeout)
            emu_cpu = emu.cpu_s() - emu_cpu
        else:
            measured = run_measured(argv, cwd=scratch, env=env, timeout=timeout)
        summary = measured.json()
        if measured.returncode != 0 or summary.get("error"):
            raise RuntimeError(
                f"fyno-import run exited {measured.returncode}: {summary.get('error')}; "
                f"stderr: {measured.stderr[-800:]}"
            )
        result = ImporterRun(measured=measured, summary=summary)
        if poller is not None:
            result.emulator_cpu_s = emu_cpu
            first, last, items = poller.send_phase()
            result.send_s = last - first if last > first else None
            result.items_at_emulator = items
            if items != result.items:
                raise RuntimeError(
                    f"the emulator applied {items:,} items, the importer reports {result.items:,}"
                )
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ideal_client(source: Path, emu: Emulator, concurrency: int, batch: int) -> dict[str, Any]:
    """Run the ideal client on ``source``'s pre-built bodies; its JSON result."""
    bodies = ideal.ensure_bodies(source, data.MAPPING, batch)
    emu.reset()
    emu_cpu = emu.cpu_s()
    measured = run_measured(
        [
            sys.executable,
            "-m",
            "bench.ideal",
            str(bodies),
            "--url",
            emu.url + BATCH_PATH,
            "--concurrency",
            str(concurrency),
        ],
        cwd=procs.ROOT,
        timeout=1800.0,
    )
    result = measured.json()
    result["emulator_cpu_s"] = emu.cpu_s() - emu_cpu
    result.setdefault("cpu_s", measured.cpu_s)
    if set(result["statuses"]) != {"202"}:
        raise RuntimeError(f"the ideal client got answers other than 202: {result['statuses']}")
    result["rows_per_s"] = result["items"] / max(result["elapsed_s"], 1e-9)
    return result


def median_run(runs: list[ImporterRun]) -> ImporterRun:
    """The run with the median rows/s (the lower middle for an even count)."""
    ordered = sorted(runs, key=lambda r: r.rows_per_s)
    return ordered[(len(ordered) - 1) // 2]


def median(values: list[float]) -> float:
    """The median (the lower middle for an even count, so it is a measured value)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


# --- a: prep ------------------------------------------------------------------------------------


def prep(results: Results) -> None:
    """``run --dry-run`` on the base size, Parquet and CSV: rows/s and peak RSS, median of N."""
    plan = results.plan
    startup = median([run_measured([FYNO_IMPORT, "--version"]).wall_s for _ in range(plan.repeats)])
    results.raw["startup_s"] = startup
    parts = []
    for fmt, target in (("parquet", 1_000_000), ("csv", 500_000)):
        source = data.ensure(plan.base_rows, fmt)
        runs = [importer(source, dry_run=True) for _ in range(plan.repeats)]
        mid = median_run(runs)
        rss = max(r.measured.maxrss_mb for r in runs)
        wall_rate = mid.rows / mid.measured.wall_s
        results.raw[f"prep_{fmt}"] = {
            "rows_per_s": mid.rows_per_s,
            "rss_mb": rss,
            "elapsed_s": [r.elapsed_s for r in runs],
            "wall_s": [r.measured.wall_s for r in runs],
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
                figure=f"{rate(mid.rows_per_s)} rows/s",
                target=f"≥ {target:,} rows/s",
                verdict=verdict(mid.rows_per_s >= target),
                note=f"run {mid.elapsed_s:.2f} s, process wall {mid.measured.wall_s:.2f} s "
                f"({rate(wall_rate)} rows/s with start-up), CPU {mid.measured.cpu_s:.2f} s"
                + (
                    f"; peak RSS against ≤ 400 MB at 1M: {verdict(rss <= 400)}"
                    if mid.rows == 1_000_000
                    else ""
                ),
            )
        )
        parts.append(
            f"{fmt} {rate(mid.rows_per_s)} rows/s (run {mid.elapsed_s:.2f} s, wall "
            f"{mid.measured.wall_s:.2f} s, CPU {mid.measured.cpu_s:.2f} s), "
            f"peak RSS {rss:.0f} MB"
        )
    results.line(
        f"prep      {human(plan.base_rows)} rows, median of {plan.repeats}: "
        + "; ".join(parts)
        + f"; start-up {startup:.2f} s"
    )


# --- b: baseline ------------------------------------------------------------------------------


def baseline(results: Results) -> None:
    """The plain-Python importer on the same files; the ratio prep / baseline."""
    plan = results.plan
    if "prep_parquet" not in results.raw:
        prep(results)
    parts = []
    for fmt in ("parquet", "csv"):
        source = data.ensure(plan.base_rows, fmt)
        runs = []
        for _ in range(plan.repeats):
            measured = run_measured(
                [sys.executable, "-m", "bench.baseline", str(source), "--batch-size", "500"],
                cwd=procs.ROOT,
            )
            if measured.returncode != 0:
                raise RuntimeError(f"bench.baseline failed: {measured.stderr[-800:]}")
            runs.append((measured.json(), measured))
        runs.sort(key=lambda r: r[0]["elapsed_s"])
        found, measured = runs[(len(runs) - 1) // 2]
        base_rate = found["rows"] / found["elapsed_s"]
        prep_raw = results.raw[f"prep_{fmt}"]
        ratio = prep_raw["rows_per_s"] / base_rate
        # the importer's item bytes: body bytes less each chunk's wrapper and commas
        prep_item_bytes = prep_raw["bytes"] - prep_raw["chunks"] * (BODY_OVERHEAD - 1)
        prep_item_bytes -= prep_raw["items"]
        same = found["item_bytes"] == prep_item_bytes and found["items"] == prep_raw["items"]
        results.raw[f"baseline_{fmt}"] = {"rows_per_s": base_rate, "ratio": ratio, "same": same}
        results.rows.append(
            Row(
                scenario="b. baseline (plain Python)",
                setting=f"{format_name(fmt)}, {human(found['rows'])} rows",
                rows_per_s=base_rate,
                items_per_s=found["items"] / found["elapsed_s"],
                rss_mb=max(m.maxrss_mb for _, m in runs),
                figure=f"prep / baseline = {ratio:.1f}×",
                target="≥ 20×",
                verdict=verdict(ratio >= 20),
                note=(
                    "same item JSON as the importer (item bytes equal)"
                    if same
                    else "ITEM BYTES DIFFER from the importer's: "
                    f"{found['item_bytes']:,} vs {prep_item_bytes:,}"
                ),
            )
        )
        parts.append(
            f"{fmt} {rate(base_rate)} rows/s, prep/baseline {ratio:.1f}×"
            + ("" if same else " (item bytes differ!)")
        )
    results.line(
        f"baseline  {human(plan.base_rows)} rows, median of {plan.repeats}: " + "; ".join(parts)
    )


# --- c: end-to-end, zero latency ------------------------------------------------------------


def end_to_end(results: Results) -> None:
    """``run`` into the sink emulator (own process) beside the ideal client, same run."""
    plan = results.plan
    source = data.ensure(plan.e2e_rows, "parquet")
    ideal.ensure_bodies(source, data.MAPPING, plan.batch)
    runs: list[ImporterRun] = []
    ideal_runs: list[dict[str, Any]] = []
    with procs.emulator("--sink") as emu:
        for _ in range(plan.repeats):  # interleaved, so both see the same machine
            runs.append(importer(source, emu=emu))
            ideal_runs.append(ideal_client(source, emu, plan.concurrency, plan.batch))
    mid = median_run(runs)
    ideals = [r["rows_per_s"] for r in ideal_runs]
    ideal_rate = median(ideals)
    ideal_mid = sorted(ideal_runs, key=lambda r: r["rows_per_s"])[(len(ideal_runs) - 1) // 2]
    us = 1e6 / mid.rows  # seconds per run -> microseconds per row
    cores = len(os.sched_getaffinity(0))
    importer_us = (mid.measured.cpu_s + (mid.emulator_cpu_s or 0)) * us
    ideal_us = (ideal_mid["cpu_s"] + ideal_mid["emulator_cpu_s"]) * us
    cpu_note = (
        f"CPU per row: importer {mid.measured.cpu_s * us:.1f} µs (whole process) + emulator "
        f"{(mid.emulator_cpu_s or 0) * us:.1f} µs, ideal client {ideal_mid['cpu_s'] * us:.1f} "
        f"µs (sending only) + emulator {ideal_mid['emulator_cpu_s'] * us:.1f} µs; on {cores} "
        "cores that CPU "
        f"alone caps the importer at {rate(cores * 1e6 / importer_us)} rows/s and the ideal "
        f"client at {rate(cores * 1e6 / ideal_us)}"
    )
    send_rates = [r.send_rows_per_s for r in runs if r.send_rows_per_s]
    send_rate = median(send_rates) if send_rates else None
    ratio = mid.rows_per_s / ideal_rate
    rss = max(r.measured.maxrss_mb for r in runs)
    results.raw["e2e"] = {
        "rows_per_s": mid.rows_per_s,
        "send_rows_per_s": send_rate,
        "ideal_rows_per_s": ideal_rate,
        "ideal_all": ideals,
        "runs": [r.rows_per_s for r in runs],
        "rss_mb": rss,
        "concurrency": plan.concurrency,
        "rows": mid.rows,
        "cpu_s": mid.measured.cpu_s,
        "emulator_cpu_s": mid.emulator_cpu_s,
        "ideal_cpu_s": ideal_mid["cpu_s"],
        "ideal_emulator_cpu_s": ideal_mid["emulator_cpu_s"],
        "elapsed_s": mid.elapsed_s,
    }
    send_note = ""
    if send_rate:
        send_note = (
            f"; send phase alone {rate(send_rate)} rows/s = {send_rate / ideal_rate:.0%} of ideal "
            f"({verdict(send_rate >= 200_000 and send_rate >= 0.8 * ideal_rate)})"
        )
    results.rows.append(
        Row(
            scenario="c. end-to-end, zero latency",
            setting=f"Parquet {human(mid.rows)} rows → sink emulator (own process, same "
            f"cores), concurrency {plan.concurrency}, batch {plan.batch}",
            rows_per_s=mid.rows_per_s,
            items_per_s=mid.items / mid.elapsed_s,
            rss_mb=rss,
            figure=f"{rate(mid.rows_per_s)} rows/s",
            target="≥ 200,000 rows/s",
            verdict=verdict(mid.rows_per_s >= 200_000),
            note=f"run {mid.elapsed_s:.2f} s, CPU {mid.measured.cpu_s:.2f} s" + send_note,
        )
    )
    results.rows.append(
        Row(
            scenario="c. end-to-end, zero latency",
            setting=f"… against the ideal client (pre-built bodies, plain httpx, concurrency "
            f"{plan.concurrency})",
            rows_per_s=ideal_rate,
            figure=f"{ratio:.0%} of ideal",
            target="≥ 80 %",
            verdict=verdict(ratio >= 0.8),
            note="ideal client measured in the same run, interleaved with the importer; "
            + cpu_note,
        )
    )
    results.line(
        f"e2e       {human(mid.rows)} rows, concurrency {plan.concurrency}, median of "
        f"{plan.repeats}: importer {rate(mid.rows_per_s)} rows/s (send phase "
        f"{rate(send_rate)}), ideal client {rate(ideal_rate)} rows/s, ratio {ratio:.0%}, "
        f"peak RSS {rss:.0f} MB; {cpu_note}"
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
            ideal.ensure_bodies(source, data.MAPPING, plan.batch)
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
            }
            points.append(point)
            judged = concurrency >= 16
            send_note = ""
            if send_fraction is not None:
                send_note = f"; send phase {rate(send_rate)} rows/s = {send_fraction:.0%}" + (
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
                    f"ideal client {rate(ideal_rate)}); run {mid.elapsed_s:.1f} s" + send_note,
                )
            )
            parts.append(
                f"c={concurrency}: {rate(mid.rows_per_s)} rows/s (send {rate(send_rate)}) of "
                f"bound {rate(bound)} = {fraction:.0%}"
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


# --- f: memory ------------------------------------------------------------------------------


def memory(results: Results) -> None:
    """Peak RSS of the importer process, dry run and end-to-end, at 1M and 10M rows."""
    plan = results.plan
    small, large = plan.memory_rows
    points: dict[str, dict[int, dict[str, float]]] = {"dry run": {}, "end-to-end": {}}
    for rows in (small, large):
        source = data.ensure(rows, "parquet")
        timeout = max(600.0, rows / 20_000)
        dry = importer(source, dry_run=True, timeout=timeout)
        points["dry run"][rows] = {"rss_mb": dry.measured.maxrss_mb, "rows_per_s": dry.rows_per_s}
        with procs.emulator("--sink") as emu:
            run = importer(source, emu=emu, timeout=timeout)
        points["end-to-end"][rows] = {
            "rss_mb": run.measured.maxrss_mb,
            "rows_per_s": run.rows_per_s,
            "send_rows_per_s": run.send_rows_per_s or 0.0,
        }
    results.raw["memory"] = points
    parts = []
    for kind, by_rows in points.items():
        low, high = by_rows[small]["rss_mb"], by_rows[large]["rss_mb"]
        ratio = high / low
        for rows in (small, large):
            results.rows.append(
                Row(
                    scenario="f. memory",
                    setting=f"{kind}, Parquet {human(rows)} rows",
                    rows_per_s=by_rows[rows]["rows_per_s"],
                    rss_mb=by_rows[rows]["rss_mb"],
                    figure=f"{by_rows[rows]['rss_mb']:.0f} MB",
                    target="≤ 400 MB" if rows == small else "",
                    verdict=verdict(by_rows[rows]["rss_mb"] <= 400) if rows == small else "",
                )
            )
        results.rows.append(
            Row(
                scenario="f. memory",
                setting=f"{kind}: peak RSS {human(large)} / {human(small)}",
                figure=f"{ratio:.2f}×",
                target="≤ 1.3×",
                verdict=verdict(ratio <= 1.3),
            )
        )
        parts.append(
            f"{kind} {low:.0f} MB at {human(small)}, {high:.0f} MB at {human(large)} ({ratio:.2f}×)"
        )
    results.line("memory    peak RSS of the importer: " + "; ".join(parts))


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


SCENARIOS: dict[str, Callable[[Results], None]] = {
    "prep": prep,
    "baseline": baseline,
    "e2e": end_to_end,
    "latency": latency,
    "rate": rate_limit,
    "memory": memory,
    "expr": expressions,
}
