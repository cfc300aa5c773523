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
from typing import Any

from bench.procs import ROOT
from bench.scenarios import Results, Row, human, rate
from bench.scenarios.common import FORMATS, format_name


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


def _concurrency_plot(results: Results, plt: Any, out: Path) -> str | None:
    points = results.raw.get("latency") or []
    e2e = (results.raw.get("e2e") or {}).get("parquet")
    if not points and not e2e:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        xs = [p["concurrency"] for p in points]
        ax.plot(xs, [p["theory"] for p in points], "k:", label="c × batch / 50 ms")
        ax.plot(xs, [p["ideal_rows_per_s"] for p in points], "s--", label="ideal client, 50 ms")
        ax.plot(xs, [p["rows_per_s"] for p in points], "o-", label="fyno-import (run), 50 ms")
        sends = [p["send_rows_per_s"] for p in points]
        if all(sends):
            ax.plot(xs, sends, "o:", label="fyno-import (send phase), 50 ms")
    tops = [p["ideal_rows_per_s"] for p in points] + [p["rows_per_s"] for p in points]
    if e2e:
        c = e2e["concurrency"]
        ax.plot([c], [e2e["ideal_rows_per_s"]], "D", label="ideal client (wall), 0 ms, Parquet")
        ax.plot([c], [e2e["wall_rows_per_s"]], "*", markersize=12, label="fyno-import (wall), 0 ms")
        tops += [e2e["ideal_rows_per_s"], e2e["wall_rows_per_s"]]
    ax.set_xscale("log", base=2)
    ticks = sorted({p["concurrency"] for p in points} | ({e2e["concurrency"]} if e2e else set()))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("rows/s (one item per row)")
    ax.set_ylim(0, max(tops) * 1.3)
    ax.set_title("Rows/s against concurrency (batch 500, sink emulator, same cores)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bench-concurrency.png", dpi=110)
    plt.close(fig)
    return "bench-concurrency.png"


def _rows_plot(results: Results, plt: Any, out: Path) -> str | None:
    memory = results.raw.get("memory")
    if not memory:
        return None
    fig, (speed, rss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for kind, by_fmt in memory.items():
        for fmt, by_rows in by_fmt.items():
            xs = sorted(by_rows)
            style = ("o-" if fmt == "parquet" else "s--") if kind == "dry run" else "^-."
            label = f"{kind}, {format_name(fmt)}"
            speed.plot(xs, [by_rows[x]["rows_per_s"] for x in xs], style, label=label)
            rss.plot(xs, [by_rows[x]["rss_mb"] for x in xs], style, label=label)
    rss.axhline(256, color="grey", linestyle=":", label="256 MB (end to end, 1.5M)")
    for ax, label in ((speed, "rows/s (the run's own clock)"), (rss, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_title("Rows/s against rows")
    rss.set_title("Peak RSS of the importer against rows")
    fig.tight_layout()
    fig.savefig(out / "bench-rows.png", dpi=110)
    plt.close(fig)
    return "bench-rows.png"


def plots(results: Results, out: Path) -> list[str]:
    """Write the PNGs; their file names (relative to ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [_concurrency_plot(results, plt, out), _rows_plot(results, plt, out)]
    return [name for name in made if name]


def _stage_table(results: Results) -> list[str]:
    found = results.raw.get("stages")
    if not found:
        return []
    fmts = [f for f in FORMATS if f in found]
    first = next(iter(found.values()))["stages"]
    names = [n for n in first if any(found[f]["stages"][n] for f in fmts)]
    lines = [
        "## CPU per row by stage (j.)",
        "",
        "`run` into the sink emulator at the end-to-end size, run as `python -m bench.stagecpu` "
        "(bench/stagecpu.py): every ~4 ms each Python thread's CPU since the last sample goes to "
        "the stage its stack is in (the innermost `importer/` frame: sources → read, "
        "transform → validate in pass 1 and build in pass 2, chunker → chunk, ledger → record, "
        "send → send, sync → sync state); the polars/pyarrow pools' CPU goes to the stages "
        "waiting on them at that moment. A statistical attribution; the sampler's own CPU is "
        "left out.",
        "",
        "| stage | " + " | ".join(f"{format_name(f)} µs/row" for f in fmts) + " |",
        "|---|" + "--:|" * len(fmts),
    ]
    for name in names:
        cells = [f"{found[f]['stages'][name] * 1e6 / found[f]['rows']:.2f}" for f in fmts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{sum(found[f]['stages'].values()) * 1e6 / found[f]['rows']:.2f}" for f in fmts]
    process = [f"{found[f]['measured_cpu_s'] * 1e6 / found[f]['rows']:.2f}" for f in fmts]
    lines += [
        "| **attributed** | " + " | ".join(totals) + " |",
        "| process CPU (wait4, sampler included) | " + " | ".join(process) + " |",
        "",
    ]
    return lines


def _machine_lines(results: Results) -> list[str]:
    raw = results.raw
    lines = [
        "## Machine",
        "",
        *(f"- **{key}:** {value}" for key, value in machine().items()),
        "- The importer, the emulator (its own process) and the ideal client **share these "
        "cores**: every end-to-end figure is a client and a server competing for the same CPU.",
    ]
    code_end = f"{code_state()}; importer/*.py digest {importer_digest()}"
    if "code_start" in raw:
        lines.append(f"- **code at the start:** {raw['code_start']}")
    lines.append(f"- **code at the end:** {code_end}")
    digest_end = code_end.rsplit(" ", 1)[-1]
    if "code_start" in raw and not raw["code_start"].endswith(digest_end):
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
            f"- Interpreter start-up of `fyno-import` (`--version`): {raw['startup_s']:.2f} s; "
            "it is inside every process wall time below, and outside the run's own clock "
            "(`elapsed_s`)."
        )
    return lines


def _method_lines(results: Results) -> list[str]:
    plan = results.plan
    small, large = plan.sync_sizes
    return [
        "## How each scenario is measured",
        "",
        "- **a. prep**: `fyno-import run FILE -m bench/bench_mapping.yaml --dry-run --json` as "
        f"a subprocess on {human(plan.base_rows)} rows; process wall (start-up included) and "
        "the run's own `elapsed_s`.",
        "- **b. baseline**: `python -m bench.baseline FILE` (`bench/baseline.py`): the csv module "
        "or pyarrow `iter_batches().to_pylist()`, per-row checks, `json.dumps` per item, bodies "
        "cut at 500 items / 1 MB. The ratio is baseline process wall / dry-run process wall, "
        "both with their start-up. Its total item bytes are compared with the importer's.",
        "- **c. end-to-end**: `fyno-import emulator --sink --port 0` in its own process; "
        f"`fyno-import run` with default settings on {human(plan.e2e_rows)} rows of Parquet and "
        "of CSV, a fresh ledger each time, interleaved with the ideal client (`bench/ideal.py`): "
        "polars reads the file and builds every body in memory (the same bytes as the "
        "importer's, checked), then one `httpx.AsyncClient` sends them at the same concurrency. "
        "Both are timed as whole processes (start-up, build and send included). The importer "
        "sends through its own lean HTTP/1.1 transport (importer/send/transport.py) under "
        "httpx, while the ideal client uses plain httpx, so the importer can reach more than "
        "100 % of the ideal. CPU per row is the importer process's user + system CPU (`wait4`, "
        "all threads) over rows read. *Most in flight* is the emulator's `max_in_flight` "
        "(`/_emulator/stats`, reset before each run).",
        f"- **d. latency**: the emulator with `--latency-ms {plan.latency_ms} --sink`; "
        "concurrency "
        + ", ".join(f"{c} ({human(plan.latency_rows(c))} rows)" for c in plan.latency_concurrency)
        + "; the bound is min(c × 500 / 0.05 s, the ideal client's sending rate at c with the "
        "same latency).",
        f"- **e. rate limit**: the emulator with `--rate-limit {plan.rate_limit:g} --sink`; "
        f"`run` on {human(plan.rate_rows)} rows (500-item batches, default concurrency), "
        f"counters polled every 100 ms; the first {plan.warmup_s:g} s after the first request "
        "are warm-up; accepted req/s and the 429 share are over the rest of the send.",
        "- **f. memory**: peak RSS of the importer process for a dry run and an end-to-end run, "
        "Parquet and CSV, at "
        + ", ".join(human(r) for r in sorted({r for p in plan.memory_pairs for r in p}))
        + " rows, one run per point.",
        "- **h. incremental sync**: one sink emulator for all nights (the state belongs to its "
        "base URL); mapping `bench/bench_mapping_sync.yaml` (lifetime_value `set`, since an "
        "`add` is always sent). Night 1: `run --changed-only --state DIR` with an empty state; "
        "night 2: the same on a copy of the file with 1 % of rows' `plan` edited, the seeded "
        "state restored before each repeat; against `run --dry-run` of the night-2 file. State "
        f"size: every file under DIR after night 1 at {human(small)} and {human(large)} rows.",
        f"- **i. full requests**: `run --dry-run --json` on {human(plan.parts_rows)} rows as "
        + ", ".join("one file" if c == 1 else f"{c:,} part files" for c in plan.parts)
        + " (bench/.cache/data/*-parts/), `chunks_total` against ceil(items / 500) × 1.02 + 2.",
        "- **j. CPU per row by stage**: see its table.",
        "",
    ]


def write(results: Results, out: Path, argv: list[str], elapsed_s: float) -> Path:
    """Write ``benchmarks.md`` (and the plots) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    command = "make bench" if not argv else "python -m bench " + shlex.join(argv)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"(the suite took {elapsed_s / 60:.1f} min). Every figure below comes from this one run; "
        "compare figures only within one run (the machine is shared). How each figure is read: "
        "`/work/shared/benchmarks.md`; how to reproduce: `make bench` "
        "(`.venv/bin/python -m bench`; `--quick` for a smoke run, `--only NAME`, `--rows N`).",
        "",
        *_machine_lines(results),
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
        f"Median of {results.plan.repeats} run(s) per figure (memory and the 10M sync night: one "
        "run per point); peak RSS is the importer process's own (`wait4`), the largest over the "
        "repeats. Ratios are of figures measured in this same run.",
        "",
        *_table(results.rows),
        "",
        *_stage_table(results),
    ]
    for image in images:
        lines += [f"![{image}]({image})", ""]
    lines += ["## The one-line figures, as printed", "", "```", *results.lines, "```", ""]
    lines += _method_lines(results)
    target = out / "benchmarks.md"
    target.write_text("\n".join(lines))
    return target
