"""docs/benchmarks.md and its plots, from one run's ``Results``."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
from pathlib import Path

from bench.procs import ROOT
from bench.scenarios import Results, Row, human, rate


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model, OS, Python and library versions."""
    info: dict[str, str] = {}
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    info["cores"] = f"{usable} usable ({cores} online)"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if "MemTotal" in line))
        info["RAM"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        info["RAM"] = "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["CPU"] = next(
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["CPU"] = platform.processor() or "unknown"
    info["OS"] = f"{platform.system()} {platform.release()}"
    with contextlib.suppress(OSError):
        info["load average (1, 5, 15 min) at the end"] = ", ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
    info["Python"] = platform.python_version()
    from importlib.metadata import PackageNotFoundError, version

    libs = []
    for name in ("polars", "httpx", "uvicorn", "starlette", "orjson", "pyarrow", "fyno-import"):
        try:
            libs.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    info["libraries"] = ", ".join(libs)
    return info


def code_state() -> str:
    """The commit measured, and whether importer/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "importer"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"commit {head}" + (" with uncommitted changes in importer/" if dirty else "")


def importer_digest() -> str:
    """A hash of importer/*.py as they are on disk now (catches uncommitted edits too)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "importer").rglob("*.py")):
        name = str(path.relative_to(ROOT / "importer"))
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _cell(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{rate(value)}{unit}"


def _table(rows: list[Row]) -> list[str]:
    lines = [
        "| scenario | setting | rows/s | items/s | peak RSS | figure | target | result | notes |",
        "|---|---|--:|--:|--:|--:|---|:-:|---|",
    ]
    for row in rows:
        items = ""
        if row.items_per_s is not None:
            same = row.rows_per_s and abs(row.items_per_s - row.rows_per_s) < 0.5
            items = "= rows/s" if same else _cell(row.items_per_s)
        verdict = f"**{row.verdict}**" if row.verdict else ""
        rss = "" if row.rss_mb is None else f"{row.rss_mb:.0f} MB"
        note = row.note.replace("|", "\\|")
        lines.append(
            f"| {row.scenario} | {row.setting} | {_cell(row.rows_per_s)} | {items} | {rss} "
            f"| {row.figure} | {row.target} | {verdict} | {note} |"
        )
    return lines


def plots(results: Results, out: Path) -> list[str]:
    """Write the PNGs; their file names (relative to ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    points = results.raw.get("latency")
    e2e = results.raw.get("e2e")
    if points or e2e:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if points:
            xs = [p["concurrency"] for p in points]
            ax.plot(xs, [p["theory"] for p in points], "k:", label="c × batch / 50 ms")
            ax.plot(xs, [p["ideal_rows_per_s"] for p in points], "s--", label="ideal client, 50 ms")
            ax.plot(xs, [p["rows_per_s"] for p in points], "o-", label="fyno-import (run), 50 ms")
            sends = [p["send_rows_per_s"] for p in points]
            if all(sends):
                ax.plot(xs, sends, "o:", label="fyno-import (send phase), 50 ms")
        if e2e:
            c = e2e["concurrency"]
            ax.plot([c], [e2e["ideal_rows_per_s"]], "D", label="ideal client, 0 ms")
            ax.plot([c], [e2e["rows_per_s"]], "*", markersize=12, label="fyno-import (run), 0 ms")
        ax.set_xscale("log", base=2)
        ticks = sorted(
            {p["concurrency"] for p in points or []} | ({e2e["concurrency"]} if e2e else set())
        )
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("rows/s (one item per row)")
        top = max(
            [p["ideal_rows_per_s"] for p in points or []]
            + [p["rows_per_s"] for p in points or []]
            + ([e2e["ideal_rows_per_s"], e2e["rows_per_s"]] if e2e else [])
        )
        ax.set_ylim(0, top * 1.3)
        ax.set_title("Rows/s against concurrency (batch 500, sink emulator, same 2 cores)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-concurrency.png", dpi=110)
        plt.close(fig)
        written.append("bench-concurrency.png")
    memory = results.raw.get("memory")
    if memory:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for kind, by_rows in memory.items():
            xs = sorted(by_rows)
            ax.plot(xs, [by_rows[x]["rss_mb"] for x in xs], "o-", label=kind)
        ax.axhline(400, color="grey", linestyle=":", label="400 MB target at 1M")
        ax.set_xscale("log")
        ax.set_xlabel("rows (Parquet)")
        ax.set_ylabel("peak RSS of the importer (MB)")
        ax.set_ylim(bottom=0)
        ax.set_title("Peak memory against rows")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-memory.png", dpi=110)
        plt.close(fig)
        written.append("bench-memory.png")
    return written


def write(results: Results, out: Path, argv: list[str], elapsed_s: float) -> Path:
    """Write ``benchmarks.md`` (and the plots) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    plan = results.plan
    info = machine()
    command = "make bench" if not argv else "python -m bench " + shlex.join(argv)
    raw = results.raw
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"(the suite took {elapsed_s / 60:.1f} min). Every figure below comes from this one run; "
        "compare figures only within one run (the machine is shared). How each figure is read: "
        "`/work/shared/benchmarks.md`; how to reproduce: `make bench` "
        "(`.venv/bin/python -m bench`; `--quick` for a smoke run, "
        "`--only NAME`, `--rows N`).",
        "",
        "## Machine",
        "",
        *(f"- **{key}:** {value}" for key, value in info.items()),
        "- The importer, the emulator (its own process) and the ideal client **share these "
        "cores**: every end-to-end figure is a client and a server competing for the same CPU.",
    ]
    code_end = f"{code_state()}; importer/*.py digest {importer_digest()}"
    if "code_start" in raw:
        lines.append(f"- **code at the start:** {raw['code_start']}")
    lines.append(f"- **code at the end:** {code_end}")
    if "code_start" in raw and raw["code_start"] != code_end:
        lines.append(
            "- **The importer changed while the suite ran** (the digests differ): "
            "figures of different scenarios may come from different code."
        )
    if "load_start" in raw:
        lines.append(
            "- Load average at the start: "
            + ", ".join(f"{x:.2f}" for x in raw["load_start"])
            + " (other work on the machine shows here; figures under load are lower)."
        )
    if "startup_s" in raw:
        lines.append(
            f"- Interpreter start-up of `fyno-import` (`--version`): {raw['startup_s']:.2f} s, "
            "left out of the importer's rows/s (they use the run's own `elapsed_s`)."
        )
    lines += [
        "",
        "## Data",
        "",
        "The benchmark shape: one item per row (so items/s = rows/s), an id and six properties "
        "over three operators: `$set` email, plan, country, marketing_opt_in (boolean); `$once` "
        "signup_at (UTC datetime); `$add` lifetime_value (Decimal(12,2) in Parquet, text in CSV); "
        "no `split` columns. Mapping: `bench/bench_mapping.yaml`; generator: `bench/data.py` "
        "(deterministic polars expressions, cached in `bench/.cache/data/`). About 220 bytes of "
        "JSON per item, so a 500-item request is about 110 KB.",
        "",
        "## Results",
        "",
        f"Median of {plan.repeats} run(s) per figure (memory: one run per point); peak RSS is "
        "the importer process's own (`wait4`), the largest over the repeats. End-to-end rows/s "
        "are judged on the whole run (the importer's `elapsed_s`: validation pass, then building "
        "and sending); the *send phase* alone, timed from the emulator's counters, is in the "
        "notes with its own verdict.",
        "",
        *_table(results.rows),
        "",
    ]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    lines += [
        "## The one-line figures, as printed",
        "",
        "```",
        *results.lines,
        "```",
        "",
        "## How each scenario is measured",
        "",
        f"- **a. prep**: `fyno-import run FILE -m bench/bench_mapping.yaml --dry-run --json` as "
        f"a subprocess on {human(plan.base_rows)} rows; rows/s = rows / the summary's "
        "`elapsed_s`. The process wall time (with start-up) is in the notes.",
        "- **b. baseline**: `python -m bench.baseline FILE` (`bench/baseline.py`): the csv module "
        "or pyarrow `iter_batches().to_pylist()`, per-row checks, `json.dumps` per item, bodies "
        "cut at 500 items / 1 MB; timed after its imports. Its total item bytes are compared "
        "with the importer's, so both build the same JSON.",
        f"- **c. end-to-end**: `fyno-import emulator --sink --port 0` in its own process; "
        f"`fyno-import run` on {human(plan.e2e_rows)} Parquet rows with a fresh ledger each "
        "time; interleaved with the ideal client (`bench/ideal.py`): the importer's own bodies "
        "(built once with `importer.pipeline.preview`, cached), read into memory, sent by one "
        "`httpx.AsyncClient` with the same pool size and concurrency, timed from the first "
        "request to the last answer.",
        f"- **d. latency**: the emulator with `--latency-ms {plan.latency_ms} --sink`; "
        "concurrency "
        + ", ".join(f"{c} ({human(plan.latency_rows(c))} rows)" for c in plan.latency_concurrency)
        + "; the bound is min(c × 500 / 0.05 s, the ideal client at c with the same latency).",
        f"- **e. rate limit**: the emulator with `--rate-limit {plan.rate_limit:g} --sink`; "
        f"`run` on {human(plan.rate_rows)} rows (500-item batches, default concurrency, no "
        "client-side rate limit), counters polled every 100 ms; the first "
        f"{plan.warmup_s:g} s after the first request are warm-up; accepted req/s and the 429 "
        "share are over the rest of the send.",
        f"- **f. memory**: peak RSS of the importer process for a dry run and an end-to-end run "
        f"at {human(plan.memory_rows[0])} and {human(plan.memory_rows[1])} Parquet rows.",
        "",
    ]
    target = out / "benchmarks.md"
    target.write_text("\n".join(lines))
    return target
