"""Run ``fyno-import`` in this process and attribute its CPU time to the pipeline's stages.

    python -m bench.stagecpu OUT.json -- run FILE -m MAPPING ...

A sampler thread wakes every few milliseconds, reads each Python thread's own CPU clock
(``pthread_getcpuclockid``) and the process's, and gives each thread's CPU since the last sample to
the stage its stack is in now: the innermost frame in ``importer/`` decides (sources → read,
transform → validate in pass 1 / build in pass 2, chunker → chunk, ledger → record, send →
send, ...). CPU of threads Python does not know (the polars and pyarrow pools) is the process's
less the Python threads'; it goes to the stages of the threads waiting in a polars or pyarrow call
at that moment, split evenly. The sampler's own CPU is left out. A statistical attribution: CPU
used between two samples goes to the stack seen at the second.

Writes {"stages": {name: cpu_s}, "process_cpu_s", "sampler_cpu_s", "wall_s", "samples"} to
OUT.json; the importer's own output (its ``--json`` summary) goes to stdout as usual.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import FrameType

INTERVAL_S = 0.004
_PACKAGE = os.sep + "importer" + os.sep
_NATIVE = (os.sep + "polars" + os.sep, os.sep + "pyarrow" + os.sep)
_LOOP = "asyncio" + os.sep + "base_events.py"
_VALIDATING = os.path.join("pipeline", "validating.py")

# (path under importer/, stage); the first prefix that matches wins
_RULES = (
    ("sources/", "read"),
    ("pipeline/reading.py", "read"),
    ("pipeline/validating.py", "validate"),
    ("pipeline/spill.py", "spill (pass-1 item file)"),
    ("pipeline/building.py", "build"),
    ("chunker.py", "chunk"),
    ("ledger/", "record"),
    ("send/", "send"),
    ("pipeline/sending.py", "send"),
    ("sync/", "sync state (read, compare, write)"),
    ("pipeline/syncing.py", "sync state (read, compare, write)"),
)
STAGES = (
    "read",
    "validate",
    "build",
    "spill (pass-1 item file)",
    "chunk",
    "record",
    "send",
    "sync state (read, compare, write)",
    "other (start-up, cli, mapping, glue)",
)
OTHER = STAGES[-1]


def in_pass_one(frame: FrameType | None) -> bool:
    """Whether this stack is inside pass 1 (``validate_all`` in pipeline/validating.py)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "validate_all" and code.co_filename.endswith(_VALIDATING):
            return True
        frame = frame.f_back
    return False


def classify(frame: FrameType | None, pass_one: bool) -> tuple[str, bool]:
    """(stage, waiting in a polars/pyarrow call) of a thread's current stack.

    ``pass_one``: some thread is in pass 1 now, so transform work (done on the transform pool's
    threads, whose stacks do not show the pass) is validation; otherwise it is pass 2's build.
    """
    native = frame is not None and any(p in frame.f_code.co_filename for p in _NATIVE)
    inner: str | None = None
    in_loop = False
    while frame is not None:
        name = frame.f_code.co_filename
        at = name.rfind(_PACKAGE)
        if "importlib._bootstrap" in name:
            return OTHER, native  # importing modules: start-up
        if at >= 0:
            if inner is None:
                inner = name[at + len(_PACKAGE) :].replace(os.sep, "/")
        elif _LOOP in name:
            in_loop = True
        frame = frame.f_back
    if inner is None:
        return ("send" if in_loop else OTHER), native
    if inner.startswith("transform/"):
        return ("validate" if pass_one else "build"), native
    for prefix, stage in _RULES:
        if inner.startswith(prefix):
            return stage, native
    return ("send" if in_loop else OTHER), native


class Sampler(threading.Thread):
    """The sampling thread; ``totals`` holds CPU seconds by stage."""

    def __init__(self) -> None:
        super().__init__(name="bench-stagecpu", daemon=True)
        self.totals = dict.fromkeys([*STAGES, "native (unattributed)"], 0.0)
        self.samples = 0
        self.own_cpu_s = 0.0
        self._halt = threading.Event()
        self._clocks: dict[int, int] = {}
        self._last: dict[int, float] = {}

    def _thread_cpu(self, ident: int) -> float | None:
        try:
            clock = self._clocks.get(ident)
            if clock is None:
                clock = self._clocks[ident] = time.pthread_getcpuclockid(ident)
            return time.clock_gettime(clock)
        except (OSError, OverflowError):
            return None

    def sample(self, process_before: float) -> float:
        """Attribute the CPU since the last sample; the process CPU now."""
        me = threading.get_ident()
        python_delta = 0.0
        waiting: list[str] = []
        frames = sys._current_frames()
        pass_one = any(in_pass_one(f) for i, f in frames.items() if i != me)
        for ident, frame in frames.items():
            if ident == me:
                continue
            now = self._thread_cpu(ident)
            if now is None:
                continue
            delta = now - self._last.get(ident, 0.0)
            self._last[ident] = now
            stage, native = classify(frame, pass_one)
            self.totals[stage] += delta
            python_delta += delta
            if native:
                waiting.append(stage)
        own = time.thread_time()
        process_now = time.process_time()
        sampler = own - self.own_cpu_s
        native_delta = max(0.0, process_now - process_before - python_delta - sampler)
        self.own_cpu_s = own
        for stage in waiting:
            self.totals[stage] += native_delta / len(waiting)
        if not waiting:
            self.totals["native (unattributed)"] += native_delta
        self.samples += 1
        return process_now

    def run(self) -> None:
        process = time.process_time()
        while not self._halt.wait(INTERVAL_S):
            process = self.sample(process)
        self.sample(process)

    def stop(self) -> None:
        """Stop sampling after one last sample."""
        self._halt.set()
        self.join(10)


def main() -> None:
    """``OUT.json -- ARGS...``: run ``fyno-import ARGS`` here, sampled; write the totals."""
    out, args = sys.argv[1], sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:]
    started = time.perf_counter()
    sampler = Sampler()
    sampler.start()
    code: int | str | None = 0
    try:
        sys.argv = ["fyno-import", *args]
        from importer.cli import main as cli

        cli()
    except SystemExit as exc:
        code = exc.code
    finally:
        sampler.stop()
        found = {
            "stages": sampler.totals,
            "process_cpu_s": time.process_time(),
            "sampler_cpu_s": sampler.own_cpu_s,
            "wall_s": time.perf_counter() - started,
            "samples": sampler.samples,
        }
        with open(out, "w") as handle:
            json.dump(found, handle)
    sys.exit(code)


if __name__ == "__main__":
    main()
