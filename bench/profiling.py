"""Profiles of the importer's hot paths (for the developers, not for the docs).

    python -m bench --only profile [--rows N]

1. pyinstrument on ``fyno-import run FILE --dry-run`` (Parquet and CSV, base size). pyinstrument
   samples the main thread only: work the importer hands to threads shows as a wait there.
2. The same stages run one after the other in this process, each timed and profiled on the main
   thread: read batches, ``Transformer.apply``, ``Chunker.add`` counting only (pass 1) and
   building bodies (pass 2). polars work shows as the one Python call that started it.
3. pyinstrument on ``fyno-import run`` into the sink emulator (the event loop and sender; the
   reader thread that builds chunks is not sampled).

Reports go to ``bench/.cache/profile-*.txt``; the top of each is printed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import data, procs
from bench.scenarios import Plan, human

_TOP = 70


def _show(title: str, text: str, out: Path) -> None:
    out.write_text(text)
    print(f"profile   {title} -> {out}")
    print("\n".join(text.splitlines()[:_TOP]), flush=True)


def _pyinstrument(argv: list[str], out: Path, env: dict[str, str] | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="fyno-bench-", dir=data.CACHE) as scratch:
        measured = procs.run_measured(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                "text",
                "--no-color",
                "-o",
                str(out),
                "-m",
                "importer",
                *argv,
                "--rejects",
                str(Path(scratch) / "rejects.csv"),
            ],
            cwd=Path(scratch),
            env=env,
        )
    if not out.exists():
        raise RuntimeError(f"pyinstrument wrote no report: {measured.stderr[-800:]}")
    return out.read_text()


def stages(source: Path) -> tuple[dict[str, float], str]:
    """Time each stage of the dry run in this process, sequentially; and a pyinstrument text."""
    from pyinstrument import Profiler

    from importer.chunker import Chunker, ChunkSettings
    from importer.mapping import load_mapping
    from importer.pipeline.reading import READ_BATCH_ROWS
    from importer.sources import resolve_sources
    from importer.transform import Transformer

    mapping = load_mapping(data.MAPPING)
    (src,), _ = resolve_sources([str(source)], options=mapping.source)
    columns = src.columns()
    schema = src.scan().collect_schema()
    transformer = Transformer(mapping, {c: schema[c] for c in columns}, max_batch_bytes=1_000_000)
    timings: dict[str, float] = {"read": 0.0, "transform": 0.0, "chunk (count)": 0.0}
    timings["chunk (bodies)"] = 0.0

    def chunker(build: bool) -> Any:
        return Chunker(
            import_key="bench", settings=ChunkSettings(), sources=[str(source)], build_bodies=build
        )

    counting, building = chunker(False), chunker(True)
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        batches = iter(src.batches(columns, READ_BATCH_ROWS))
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            timings["read"] += time.perf_counter() - began
            if batch is None:
                break
            began = time.perf_counter()
            result = transformer.apply(batch)
            timings["transform"] += time.perf_counter() - began
            began = time.perf_counter()
            for _ in counting.add(result.items, 0):
                pass
            timings["chunk (count)"] += time.perf_counter() - began
            began = time.perf_counter()
            for _ in building.add(result.items, 0):
                pass
            timings["chunk (bodies)"] += time.perf_counter() - began
        began = time.perf_counter()
        for _ in counting.finish():
            pass
        timings["chunk (count)"] += time.perf_counter() - began
        began = time.perf_counter()
        for _ in building.finish():
            pass
        timings["chunk (bodies)"] += time.perf_counter() - began
    finally:
        profiler.stop()
        src.close()
    return timings, profiler.output_text(unicode=True, color=False)


def main(plan: Plan) -> None:
    """All three profiles; print the top of each."""
    rows = plan.base_rows
    for fmt in ("parquet", "csv"):
        source = data.ensure(rows, fmt)
        out = data.CACHE / f"profile-dryrun-{fmt}.txt"
        text = _pyinstrument(
            ["run", str(source), "-m", str(data.MAPPING), "--dry-run", "--json", "--no-progress"],
            out,
        )
        _show(f"`run --dry-run`, {fmt}, {human(rows)} rows", text, out)
    for fmt in ("parquet", "csv"):
        source = data.ensure(rows, fmt)
        try:
            timings, text = stages(source)
        except Exception as exc:  # the library's insides move; say so and go on
            print(f"profile   stages, {fmt}: could not run ({type(exc).__name__}: {exc})")
            continue
        total = sum(timings.values())
        print(
            f"profile   stages, {fmt}, {human(rows)} rows, sequential in one thread: "
            + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in timings.items())
        )
        _show(f"stages, {fmt}", text, data.CACHE / f"profile-stages-{fmt}.txt")
    source = data.ensure(plan.e2e_rows, "parquet")
    with procs.emulator("--sink") as emu, tempfile.TemporaryDirectory(dir=data.CACHE) as scratch:
        out = data.CACHE / "profile-e2e-parquet.txt"
        text = _pyinstrument(
            [
                "run",
                str(source),
                "-m",
                str(data.MAPPING),
                "--json",
                "--no-progress",
                "--base-url",
                emu.url,
                "--workspace",
                "bench",
                "--ledger",
                str(Path(scratch) / "bench.ledger.db"),
            ],
            out,
            env={"FYNO_API_KEY": "bench"},
        )
        _show(f"`run` into the sink emulator, parquet, {human(plan.e2e_rows)} rows", text, out)
