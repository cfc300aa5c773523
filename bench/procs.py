"""Subprocesses with their own peak RSS and CPU time, and the emulator in its own process.

Every child is started in a new session (its own process group) and stopped by killing that
group, so nothing outlives the benchmark, not even on an exception or Ctrl-C. Peak RSS and CPU
come from ``os.wait4`` on the child's pid: the figures of that process alone (and its children),
not a maximum over every child the benchmark ever waited for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FYNO_IMPORT = str(VENV_BIN / "fyno-import")
_LIVE: set[int] = set()  # process groups started and not yet reaped


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_all() -> None:
    """Kill every process group this module started and has not reaped (last resort)."""
    for pid in list(_LIVE):
        kill_group(pid)
        _LIVE.discard(pid)


@dataclass
class Measured:
    """One finished child: exit code, wall time, peak RSS, CPU seconds, its output."""

    returncode: int
    wall_s: float
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The last line of stdout parsed as JSON (the ``--json`` summary)."""
        lines = [line for line in self.stdout.splitlines() if line.strip().startswith("{")]
        if not lines:
            raise RuntimeError(
                f"no JSON on stdout (exit {self.returncode}); stderr: {self.stderr[-2000:]}"
            )
        return json.loads(lines[-1])  # type: ignore[no-any-return]


# Run by a small interpreter between the benchmark and the measured command: Linux carries the
# parent's peak RSS into a vforked child across exec, so a command started straight from this (big)
# process would report the benchmark's own peak. Forked from this small launcher instead, the
# child's ``ru_maxrss`` is its own. The launcher writes wall time and rusage as JSON to argv[1].
_LAUNCH = """
import json, os, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
child = subprocess.Popen(argv)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as handle:
    json.dump({"wall_s": wall, "maxrss_kb": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime}, handle)
sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128)
"""


def run_measured(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800.0,
) -> Measured:
    """Run a command to the end; its own wall time, peak RSS and CPU time (from ``wait4``)."""
    full_env = {**os.environ, **(env or {})}
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(suffix=".json") as usage_file,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, usage_file.name, *argv],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        _LIVE.add(proc.pid)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{' '.join(argv)[:300]} ran over {timeout:.0f} s and was killed"
            ) from None
        finally:
            kill_group(proc.pid)  # the command, if the launcher died first; anything left over
            proc.wait()
            _LIVE.discard(proc.pid)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            usage = json.loads(Path(usage_file.name).read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"no usage from the launcher; stderr: {stderr[-800:]}") from None
    return Measured(
        returncode=proc.returncode,
        wall_s=usage["wall_s"],
        maxrss_mb=usage["maxrss_kb"] / 1024,  # Linux: kilobytes
        cpu_s=usage["cpu_s"],
        stdout=stdout,
        stderr=stderr,
    )


# --- the emulator ---------------------------------------------------------------------------


@dataclass
class Emulator:
    """``fyno-import emulator --sink --port 0 [fault options]`` in its own process group."""

    options: list[str] = field(default_factory=list)
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    _client: httpx.Client | None = None

    def start(self, timeout: float = 30.0) -> Emulator:
        """Start it and wait for the line naming the URL it bound."""
        argv = [FYNO_IMPORT, "emulator", "--host", "127.0.0.1", "--port", "0", *self.options]
        env = {k: v for k, v in os.environ.items() if k != "FYNO_API_KEY"}
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _LIVE.add(self.proc.pid)
        found: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                if "listening on" in line:
                    found.append(line.rsplit(" ", 1)[-1].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"the emulator did not start within {timeout:.0f} s: {argv}")
        self.url = found[0]
        self._client = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)
        return self

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the emulator process has used so far."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``."""
        assert self._client is not None
        answer = self._client.get("/_emulator/stats")
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        """``POST /_emulator/reset``: clear profiles and counters."""
        assert self._client is not None
        self._client.post("/_emulator/reset").raise_for_status()

    def stop(self) -> None:
        """Stop it: SIGTERM to its group, SIGKILL if it lingers."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return
        kill_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.proc.wait(5)
        kill_group(self.proc.pid)  # anything it left in its group
        _LIVE.discard(self.proc.pid)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def emulator(*options: str) -> Iterator[Emulator]:
    """An emulator process for the duration of a ``with`` block."""
    emu = Emulator(list(options))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@dataclass
class StatsPoller:
    """Polls the emulator's counters in a thread, to time the send phase from the server side.

    ``samples`` holds (monotonic time, total requests, requests by status, items applied).
    """

    emu: Emulator
    interval: float = 0.05
    samples: list[tuple[float, int, dict[str, int], int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StatsPoller:
        client = httpx.Client(base_url=self.emu.url, timeout=10.0, trust_env=False)

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    self.sample(client)
                    self._stop.wait(self.interval)
                self.sample(client)
            finally:
                client.close()

        self._thread = threading.Thread(target=loop, name="bench-stats", daemon=True)
        self._thread.start()
        return self

    def sample(self, client: httpx.Client) -> None:
        """Take one sample (a failed read is skipped)."""
        with contextlib.suppress(httpx.HTTPError):
            now = time.monotonic()
            stats = client.get("/_emulator/stats").json()
            by_status = {str(k): int(v) for k, v in stats["requests_by_status"].items()}
            self.samples.append((now, sum(by_status.values()), by_status, stats["items_applied"]))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def send_phase(self) -> tuple[float, float, int]:
        """(first request seen, last change seen, items applied) from the samples.

        The first time is the midpoint between the last sample with no request and the first
        with one; the last is the first sample showing the final count (at most one interval
        late).
        """
        if not self.samples:
            return 0.0, 0.0, 0
        final_requests = self.samples[-1][1]
        items = self.samples[-1][3]
        first = last = self.samples[-1][0]
        previous = self.samples[0][0]
        for when, total, _, _ in self.samples:
            if total > 0:
                first = (previous + when) / 2
                break
            previous = when
        for when, total, _, _ in self.samples:
            if total >= final_requests:
                last = when
                break
        return first, last, items
