"""``python -m bench`` (``make bench``): run the scenarios and write docs/benchmarks.md.

    python -m bench                 every scenario at full size; rewrites docs/benchmarks.md
    python -m bench --quick         a smoke run on ~100k rows (a minute or two)
    python -m bench --only e2e      some scenarios (comma-separated, or repeat --only):
                                    prep, baseline, e2e, stages, latency, rate, memory, sync,
                                    requests, expr
    python -m bench --rows N        scale every size from N instead of 1M
    python -m bench --only profile  pyinstrument profiles of the dry run (not in the docs)

Only a full run (no --quick, --only or --rows) writes docs/; the others write their report to
bench/.cache/report/ unless --out says otherwise, so a smoke run never overwrites real figures.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from bench import procs, report
from bench.data import CACHE
from bench.scenarios import SCENARIOS, Plan, Results, Row

DOCS = procs.ROOT / "docs"


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when every scenario ran (targets may be missed), 1 when one failed."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on ~100k rows")
    parser.add_argument("--rows", type=int, default=None, help="base size (default 1M, quick 100k)")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        help=f"scenarios to run: {', '.join([*SCENARIOS, 'profile'])} (comma-separated)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--out", type=Path, default=None, help="where to write benchmarks.md")
    args = parser.parse_args(argv)

    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for part in args.only for n in part.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS and n != "profile"]
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    plan = Plan.quick_plan(args.rows) if args.quick else Plan.full(args.rows)
    if args.repeats:
        from dataclasses import replace

        plan = replace(plan, repeats=args.repeats)
    partial = bool(args.quick or args.only or args.rows or args.repeats)
    out = args.out or (CACHE / "report" if partial else DOCS)

    atexit.register(procs.kill_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if "profile" in names:
        from bench import profiling

        profiling.main(plan)
        names.remove("profile")
        if not names:
            return 0

    results = Results(plan=plan)
    results.raw["load_start"] = os.getloadavg()
    results.raw["code_start"] = (
        f"{report.code_state()}; importer/*.py digest {report.importer_digest()}"
    )
    started = time.monotonic()
    failed = False
    print(
        f"bench: {', '.join(names)}; base {plan.base_rows:,} rows, {plan.repeats} repeat(s); "
        f"report to {out}",
        flush=True,
    )
    try:
        for name in names:
            began = time.monotonic()
            try:
                SCENARIOS[name](results)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                results.line(f"{name:<9} ERROR: {message}")
                results.rows.append(
                    Row(scenario=name, setting="(did not finish)", verdict="ERROR", note=message)
                )
            print(f"          ({name} took {time.monotonic() - began:.0f} s)", flush=True)
    finally:
        procs.kill_all()
    target = report.write(results, out, argv, time.monotonic() - started)
    print(f"bench: wrote {target}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
