"""What every scenario shares: the plan, the results, and running the importer and the ideal client.

Conventions (see /work/shared/benchmarks.md):

- The importer always runs as its own process (``fyno-import run ...``), so its peak RSS and CPU
  are its own (``os.wait4``). Two clocks are kept: the process wall time (start-up included,
  which the ratio targets of this round use) and the summary's ``elapsed_s`` (the importer's own
  clock, start-up left out), from which rows/s are given.
- End-to-end runs also get a *send phase* figure, timed from the emulator side: from the first
  request the emulator counted to the last (its ``/_emulator/stats`` polled every 50 ms), and the
  most write requests the emulator saw in flight at once (its ``max_in_flight``).
- Figures are medians over ``repeats`` runs; peak RSS is the largest of them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.procs import FYNO_IMPORT, Emulator, Measured, StatsPoller, run_measured

BATCH_PATH = "/v1/bench/live/profiles/properties/batch"
BODY_OVERHEAD = len('{"batch":[]}')
FORMATS = ("parquet", "csv")


# --- what a run is asked to do ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one benchmark run."""

    base_rows: int  # "1M": prep, baseline, the smaller 10x memory point
    repeats: int
    rate_rows: int  # at 20 req/s x 500 items: 10,000 rows/s, so 300k rows is a 30 s run
    quick: bool = False
    batch: int = 500
    latency_ms: int = 50
    rate_limit: float = 20.0
    warmup_s: float = 5.0
    concurrency: int = 8  # the importer's default; the zero-latency and rate-limit runs use it
    latency_concurrency: tuple[int, ...] = (4, 16, 64)
    parts: tuple[int, ...] = (1, 100, 1000)  # the full-requests scenario's file counts

    @property
    def e2e_rows(self) -> int:
        """The end-to-end size of this round: 1.5M at full size."""
        return self.base_rows * 3 // 2

    @property
    def parts_rows(self) -> int:
        """The full-requests scenario's rows: 150k at full size."""
        return self.base_rows * 3 // 20

    def latency_rows(self, concurrency: int) -> int:
        """Rows for one latency point: at least ~10 s at the bound (40k rows/s at 4)."""
        return self.base_rows // 2 if concurrency <= 4 else self.base_rows * 2

    @property
    def memory_pairs(self) -> tuple[tuple[int, int], ...]:
        """The (small, large) pairs whose peak-RSS ratio is judged: 150k/1.5M and 1M/10M."""
        return (self.e2e_rows // 10, self.e2e_rows), (self.base_rows, self.base_rows * 10)

    @property
    def sync_sizes(self) -> tuple[int, int]:
        """The state-size points (1M and 10M profiles); the larger also gets night 2."""
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


def median(values: list[float]) -> float:
    """The median (the lower middle for an even count, so it is a measured value)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


# --- running the importer ---------------------------------------------------------------------


@dataclass
class ImporterRun:
    """One ``fyno-import run`` process and what it reported."""

    measured: Measured
    summary: dict[str, Any]
    send_s: float | None = None  # the send phase, seen from the emulator
    items_at_emulator: int | None = None
    emulator_cpu_s: float | None = None  # CPU the emulator used during the run
    max_in_flight: int | None = None  # the emulator's max_in_flight over the run

    @property
    def rows(self) -> int:
        """Rows read."""
        return int(self.summary["rows_read"])

    @property
    def elapsed_s(self) -> float:
        """The importer's own clock."""
        return float(self.summary["elapsed_s"])

    @property
    def wall_s(self) -> float:
        """The process wall time, start-up included."""
        return self.measured.wall_s

    @property
    def rows_per_s(self) -> float:
        """Rows over the importer's own clock."""
        return self.rows / max(self.elapsed_s, 1e-9)

    @property
    def wall_rows_per_s(self) -> float:
        """Rows over the process wall time."""
        return self.rows / max(self.wall_s, 1e-9)

    @property
    def cpu_us_per_row(self) -> float:
        """CPU microseconds (user + system, every thread) of the process per row read."""
        return self.measured.cpu_s * 1e6 / max(self.rows, 1)

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
    check_items: bool = True,
) -> ImporterRun:
    """Run ``fyno-import run SOURCE`` in a scratch directory (fresh ledger and rejects file)."""
    scratch = Path(tempfile.mkdtemp(prefix="fyno-bench-", dir=data.CACHE))
    try:
        argv = [FYNO_IMPORT, "run", str(source), "-m", str(mapping), "--no-progress", "--json"]
        argv += ["--rejects", str(scratch / "rejects.csv"), *options]
        env: dict[str, str] = {}
        if dry_run:
            argv.append("--dry-run")
        else:
            assert emu is not None
            argv += ["--base-url", emu.url, "--workspace", "bench"]
            argv += ["--ledger", str(scratch / "bench.ledger.db")]
            env["FYNO_API_KEY"] = "bench"
        if emu is None:
            measured = run_measured(argv, cwd=scratch, env=env, timeout=timeout)
            return ImporterRun(measured=measured, summary=_summary(measured))
        emu.reset()
        poller = StatsPoller(emu)
        emu_cpu = emu.cpu_s()
        with poller:
            measured = run_measured(argv, cwd=scratch, env=env, timeout=timeout)
        result = ImporterRun(measured=measured, summary=_summary(measured))
        result.emulator_cpu_s = emu.cpu_s() - emu_cpu
        result.max_in_flight = int(emu.stats().get("max_in_flight", 0)) or None
        first, last, items = poller.send_phase()
        result.send_s = last - first if last > first else None
        result.items_at_emulator = items
        if check_items and items != result.items:
            raise RuntimeError(
                f"the emulator applied {items:,} items, the importer reports {result.items:,}"
            )
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summary(measured: Measured) -> dict[str, Any]:
    summary = measured.json()
    if measured.returncode != 0 or summary.get("error"):
        raise RuntimeError(
            f"fyno-import run exited {measured.returncode}: {summary.get('error')}; "
            f"stderr: {measured.stderr[-800:]}"
        )
    return summary


def ideal_client(source: Path, emu: Emulator, concurrency: int, batch: int) -> dict[str, Any]:
    """Run the ideal client (``bench/ideal.py``) on ``source``: polars builds, httpx sends.

    Its JSON result, with ``wall_s`` / ``process_cpu_s`` / ``rss_mb`` of the whole process
    (start-up, reading, building and sending) and the emulator's CPU and ``max_in_flight``.
    """
    emu.reset()
    emu_cpu = emu.cpu_s()
    argv = [sys.executable, "-m", "bench.ideal", str(source), "--url", emu.url + BATCH_PATH]
    argv += ["--concurrency", str(concurrency), "--batch-size", str(batch)]
    measured = run_measured(argv, cwd=procs.ROOT, timeout=1800.0)
    if measured.returncode != 0:
        raise RuntimeError(f"bench.ideal failed: {measured.stderr[-800:]}")
    result = measured.json()
    result["emulator_cpu_s"] = emu.cpu_s() - emu_cpu
    result["max_in_flight"] = int(emu.stats().get("max_in_flight", 0)) or None
    result["wall_s"] = measured.wall_s
    result["process_cpu_s"] = measured.cpu_s
    result["rss_mb"] = measured.maxrss_mb
    if set(result["statuses"]) != {"202"}:
        raise RuntimeError(f"the ideal client got answers other than 202: {result['statuses']}")
    result["rows_per_s"] = result["items"] / max(result["elapsed_s"], 1e-9)  # sending only
    result["wall_rows_per_s"] = result["items"] / max(measured.wall_s, 1e-9)
    return result


def median_run(runs: list[ImporterRun], key: str = "rows_per_s") -> ImporterRun:
    """The run with the median ``key`` (the lower middle for an even count)."""
    ordered = sorted(runs, key=lambda r: float(getattr(r, key)))
    return ordered[(len(ordered) - 1) // 2]


def median_by(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The dict with the median ``key`` (the lower middle for an even count)."""
    ordered = sorted(runs, key=lambda r: float(r[key]))
    return ordered[(len(ordered) - 1) // 2]
