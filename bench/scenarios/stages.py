"""j. CPU per row by stage: ``run`` into the sink emulator, sampled in-process (bench/stagecpu.py).

The importer runs as ``python -m bench.stagecpu OUT -- run ...`` (its own process, as always);
each thread's CPU is attributed to the stage its stack is in (read, validate, build, chunk,
record, send, ...), the polars/pyarrow pools' CPU to the stage waiting on them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.procs import Emulator, run_measured
from bench.scenarios.common import FORMATS, Results, Row, format_name, human


def _sampled(source: Path, emu: Emulator) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fyno-bench-", dir=data.CACHE) as name:
        scratch = Path(name)
        out = scratch / "stages.json"
        argv = [sys.executable, "-m", "bench.stagecpu", str(out), "--", "run", str(source)]
        argv += ["-m", str(data.MAPPING), "--no-progress", "--json", "--base-url", emu.url]
        argv += ["--workspace", "bench", "--ledger", str(scratch / "bench.ledger.db")]
        argv += ["--rejects", str(scratch / "rejects.csv")]
        emu.reset()
        measured = run_measured(argv, cwd=procs.ROOT, env={"FYNO_API_KEY": "bench"}, timeout=1800.0)
        summary = measured.json()
        if measured.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench.stagecpu failed: {measured.stderr[-800:]}")
        found: dict[str, Any] = json.loads(out.read_text())
    found["rows"] = int(summary["rows_read"])
    found["wall_s"] = measured.wall_s
    found["measured_cpu_s"] = measured.cpu_s
    found["rss_mb"] = measured.maxrss_mb
    return found


def stages(results: Results) -> None:
    """One sampled end-to-end run per format at the end-to-end size."""
    plan = results.plan
    found: dict[str, dict[str, Any]] = {}
    with procs.emulator("--sink") as emu:
        for fmt in FORMATS:
            found[fmt] = _sampled(data.ensure(plan.e2e_rows, fmt), emu)
    results.raw["stages"] = found
    parts = []
    for fmt, run in found.items():
        us = 1e6 / run["rows"]
        by_stage = {k: v * us for k, v in run["stages"].items() if v * us >= 0.005}
        attributed = sum(run["stages"].values()) * us
        listing = ", ".join(f"{k} {v:.2f}" for k, v in by_stage.items())
        results.rows.append(
            Row(
                scenario="j. CPU per row by stage",
                setting=f"`run`, {format_name(fmt)} {human(run['rows'])} rows → sink emulator, "
                "sampled in-process",
                rss_mb=run["rss_mb"],
                figure=f"{attributed:.2f} µs/row attributed",
                note=f"µs/row: {listing}; process CPU {run['measured_cpu_s']:.2f} s "
                f"= {run['measured_cpu_s'] * us:.2f} µs/row (the sampler's own "
                f"{run['sampler_cpu_s'] * us:.2f} µs/row included there, not in the stages); "
                f"{run['samples']:,} samples; see the stage table below",
            )
        )
        parts.append(f"{fmt} {attributed:.2f} µs/row ({listing})")
    results.line("stages    CPU µs/row by stage: " + "; ".join(parts))
