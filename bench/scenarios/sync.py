"""h. incremental sync: ``run --changed-only --state DIR`` on a nightly export with 1 % changed.

Night 1 is a changed-only run with an empty state (it sends everything and seeds the state);
night 2 runs on a copy of the file with 1 % of rows edited (``bench.data.edited``), against a
copy of the seeded state restored before every repeat, so each repeat reads, compares and writes
the same state. All runs go to one sink emulator (the state belongs to its base URL). The mapping
is ``bench/bench_mapping_sync.yaml``: the bench mapping with lifetime_value ``set`` instead of
``add``, since an ``add`` is always sent under --changed-only.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.procs import Emulator
from bench.scenarios.common import (
    ImporterRun,
    Results,
    Row,
    human,
    importer,
    median_run,
    verdict,
)

WALL_RATIO = 2.0  # night 2 (changed-only) / --dry-run of the night-2 file, process wall
RSS_MB = 500.0  # night 2 at 10M profiles
BYTES_PER_PROFILE = 100.0  # "a few tens of bytes per profile"
SCENARIO = "h. incremental sync"


def _night(source: Path, emu: Emulator, state: Path, rows: int) -> ImporterRun:
    options = ("--changed-only", "--state", str(state))
    timeout = max(600.0, rows / 10_000)
    return importer(source, emu=emu, options=options, mapping=data.SYNC_MAPPING, timeout=timeout)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _seed(rows: int, emu: Emulator) -> tuple[Path, ImporterRun, int]:
    """Night 1 on ``rows`` rows with an empty state: (seeded state, the run, state bytes)."""
    state = data.CACHE / f"state-{rows}"
    shutil.rmtree(state, ignore_errors=True)
    first = _night(data.ensure(rows, "parquet"), emu, state, rows)
    return state, first, _size(state)


def _night_two(rows: int, emu: Emulator, state: Path, repeats: int) -> list[ImporterRun]:
    """Night 2 ``repeats`` times, each against a fresh copy of the seeded state."""
    source = data.edited(rows, "parquet")
    seeded = state.with_name(state.name + ".seeded")
    shutil.rmtree(seeded, ignore_errors=True)
    shutil.copytree(state, seeded)
    runs = []
    try:
        for _ in range(repeats):
            shutil.rmtree(state, ignore_errors=True)
            shutil.copytree(seeded, state)
            runs.append(_night(source, emu, state, rows))
    finally:
        shutil.rmtree(seeded, ignore_errors=True)
    return runs


def sync(results: Results) -> None:
    """State size at 1M and 10M; night 2 against the dry run at 1.5M; requests and RSS at 10M."""
    plan = results.plan
    small, large = plan.sync_sizes
    found: dict[str, Any] = {"state": {}}
    with procs.emulator("--sink") as emu:
        for rows in (small, large):
            state, first, size = _seed(rows, emu)
            found["state"][rows] = {"bytes": size, "per_profile": size / rows}
            if rows == large:
                second = _night_two(rows, emu, state, 1)[0]
                found["large"] = {"first": first.summary, "second": second.summary}
                found["large_rss_mb"] = second.measured.maxrss_mb
                found["large_wall_s"] = second.wall_s
            shutil.rmtree(state, ignore_errors=True)
        rows = plan.e2e_rows
        state, first, _ = _seed(rows, emu)
        nights = _night_two(rows, emu, state, plan.repeats)
        shutil.rmtree(state, ignore_errors=True)
    edited = data.edited(rows, "parquet")
    dries = [importer(edited, dry_run=True, mapping=data.SYNC_MAPPING) for _ in range(plan.repeats)]
    night, dry = median_run(nights, "wall_rows_per_s"), median_run(dries, "wall_rows_per_s")
    found["mid"] = {
        "rows": rows,
        "night2_wall_s": night.wall_s,
        "dry_wall_s": dry.wall_s,
        "ratio": night.wall_s / dry.wall_s,
        "night2_rss_mb": max(r.measured.maxrss_mb for r in nights),
        "profiles_changed": night.summary.get("profiles_changed"),
        "night1_wall_s": first.wall_s,
    }
    results.raw["sync"] = found
    _report(results, found)


def _report(results: Results, found: dict[str, Any]) -> None:
    plan = results.plan
    mid = found["mid"]
    rows = mid["rows"]
    results.rows.append(
        Row(
            scenario=SCENARIO,
            setting=f"Parquet {human(rows)} rows, 1 % edited: night-2 `run --changed-only` "
            "against `run --dry-run` of the same file",
            rows_per_s=rows / mid["night2_wall_s"],
            rss_mb=mid["night2_rss_mb"],
            figure=f"wall {mid['night2_wall_s']:.2f} s / {mid['dry_wall_s']:.2f} s = "
            f"{mid['ratio']:.2f}×",
            target=f"≤ {WALL_RATIO:g}×",
            verdict=verdict(mid["ratio"] <= WALL_RATIO),
            note=f"process wall times (start-up, state read, compare, send and state write "
            f"included), median of {plan.repeats}; profiles changed "
            f"{mid['profiles_changed']:,}; night 1 (seeding, sends everything) "
            f"{mid['night1_wall_s']:.2f} s; mapping bench/bench_mapping_sync.yaml",
        )
    )
    for rows, state in found["state"].items():
        results.rows.append(
            Row(
                scenario=SCENARIO,
                setting=f"state on disk after night 1, {human(rows)} profiles",
                figure=f"{state['bytes'] / 1e6:.1f} MB = {state['per_profile']:.1f} B/profile",
                target=f"a few tens of B/profile (≤ {BYTES_PER_PROFILE:g})",
                verdict=verdict(state["per_profile"] <= BYTES_PER_PROFILE),
                note="every file under --state DIR (six mapped properties per profile)",
            )
        )
    _report_large(results, found)


def _report_large(results: Results, found: dict[str, Any]) -> None:
    large = human(results.plan.sync_sizes[1])
    first, second = found["large"]["first"], found["large"]["second"]
    full, sent = int(first["chunks_total"]), int(second["chunks_total"])
    items = int(second["items_total"] or second["items_sent"])
    bound = math.ceil(items / results.plan.batch) * 1.02 + 2
    results.rows += [
        Row(
            scenario=SCENARIO,
            setting=f"night 2, Parquet {large} rows, 1 % edited: peak RSS of the importer",
            rss_mb=found["large_rss_mb"],
            figure=f"{found['large_rss_mb']:.0f} MB",
            target=f"< {RSS_MB:g} MB",
            verdict=verdict(found["large_rss_mb"] < RSS_MB),
            note=f"wall {found['large_wall_s']:.1f} s; profiles changed "
            f"{second.get('profiles_changed', 0):,}",
        ),
        Row(
            scenario=SCENARIO,
            setting=f"requests of night 2 ({large} rows, 1 % edited) against a full run",
            figure=f"{sent:,} of {full:,} ({sent / max(full, 1):.2%})",
            target=f"≤ ceil({items:,} / {results.plan.batch}) × 1.02 + 2 = {bound:,.0f}",
            verdict=verdict(sent <= bound),
            note="chunks_total of the JSON summaries; the full run is night 1 (empty state, "
            f"everything sent); night 2 sent {items:,} items",
        ),
    ]
    state = found["state"]
    results.line(
        f"sync      {human(found['mid']['rows'])} rows: night 2 {found['mid']['night2_wall_s']:.2f}"
        f" s vs dry run {found['mid']['dry_wall_s']:.2f} s ({found['mid']['ratio']:.2f}×); "
        + ", ".join(f"state {human(r)} {s['per_profile']:.1f} B/profile" for r, s in state.items())
        + f"; {large} night 2: {sent:,} of {full:,} requests, peak RSS "
        f"{found['large_rss_mb']:.0f} MB"
    )
