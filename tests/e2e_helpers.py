"""Shared helpers for the end-to-end and reliability tests (run, faults, bad inputs, security).

Kept out of conftest.py on purpose: import what a test needs with ``from e2e_helpers import …``.

The pieces:

- **Data and its meaning.** ``make_rows`` writes seeded rows for ``MAPPING_YAML`` (every operator,
  split columns, on_null unset); ``expected_items`` turns those rows into the items the mapping
  implies, written out by hand from contract.md (not by calling the importer), and
  ``reference_profiles`` applies items with a straightforward model of Fyno's operators. A test
  compares the emulator's profiles with that.
- **The real CLI.** ``cli`` runs ``fyno-import`` in-process through click's ``CliRunner`` (fast);
  ``start_cli`` / ``run_cli`` run ``python -m importer`` as a subprocess in its own process group
  (for kills, signals, resource limits and memory), and ``stop_process`` kills that group.
- **The emulator.** ``emulator`` starts an in-process ``EmulatorServer`` on 127.0.0.1, optionally
  behind ``ArrivalLog``, an ASGI wrapper that timestamps every write request as it arrives (the
  emulator's own stats count requests only when they are answered).
- **The ledger.** ``ledger_chunks`` reads the chunks table read-only, for checks that the CLI's
  ``ledger show`` does not expose per chunk.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from helpers import CONTRACT_SUMMARY_KEYS

from importer.cli import main
from importer.emulator import EmulatorConfig, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WORKSPACE = "ws-e2e"
# A key long and distinctive enough that finding it anywhere is never a coincidence.
API_KEY = "sk-live-7Hq2ZxW9pL4mN8rT3vY6bC1d"
OPERATOR_ORDER = ("$set", "$once", "$add", "$append", "$remove", "$unset")  # as Fyno applies them
CONTRACT_SOURCE_KEYS = frozenset({"source", "rows_read", "rows_rejected", "skipped"})
EXPORT_COLUMNS = [
    "run_id",
    "chunk_id",
    "source",
    "row",
    "distinct_id",
    "status",
    "http_status",
    "error",
]

# --- the mapping every end-to-end test uses, and rows for it -------------------------------------

MAPPING_YAML = """\
distinct_id: user_id
properties:
  - column: name
    op: set
  - column: plan
    op: set
    on_null: unset
  - column: first_source
    op: once
  - column: logins
    op: add
    type: integer
  - column: credits
    op: add
    type: number
  - column: tags
    op: append
    split: ";"
  - column: removed_tags
    property: tags
    op: remove
    split: ";"
  - column: churned
    op: unset
    split: ","
"""
COLUMNS = [
    "user_id",
    "name",
    "plan",
    "first_source",
    "logins",
    "credits",
    "tags",
    "removed_tags",
    "churned",
]
_TAGS = ["beta", "vip", "trial", "mobile", "é-tag", "news"]
_NAMES = ["Ada", "Grace", 'Quote "Q"', "Comma, Carl", "Zoë", "Line\nBreak", "  padded  "]


def write_mapping(path: Path, text: str = MAPPING_YAML) -> Path:
    """Write a mapping file (dedented) and return its path."""
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_rows(
    count: int,
    *,
    profiles: int,
    seed: int,
    id_prefix: str = "u-",
    every_add: bool = True,
    single_item: bool = False,
) -> list[dict[str, str]]:
    """Seeded rows for MAPPING_YAML: ids drawn from ``profiles`` ids, all operators exercised.

    With ``every_add`` every row carries a ``logins`` value, so every chunk carries ``$add``;
    otherwise half the rows carry none. With ``single_item`` split cells hold at most one piece,
    so each row is exactly one item (and a chunk's rows name its items).
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        k = rng.randrange(profiles)
        tags = ";".join(rng.sample(_TAGS, rng.randrange(0, 2 if single_item else 3)))
        removed = rng.choice(
            ["", "", "", "trial", " mobile ; "] + ([] if single_item else ["beta;vip"])
        )
        rows.append(
            {
                "user_id": f"{id_prefix}{k}",
                "name": rng.choice(_NAMES) + str(rng.randrange(1000)),
                "plan": rng.choice(["pro", "free", "team", ""]),
                "first_source": rng.choice(["", "ads", "seo", "referral"]),
                "logins": str(rng.randrange(0, 6)) if every_add or rng.random() < 0.5 else "",
                "credits": rng.choice(["", "1.5", "-0.25", "2", "0.75"]),
                "tags": tags,
                "removed_tags": removed,
                "churned": rng.choice(["", "", "", "", "", "", "first_source", "plan,tags"]),
            }
        )
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> Path:
    """Write rows as a CSV with a header (quoted as needed) and return its path."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- the reference model -------------------------------------------------------------------------


Item = tuple[str, dict[str, Any]]  # (distinct_id, action)


def _pieces(cell: str, sep: str) -> list[str]:
    return [p.strip() for p in cell.split(sep) if p.strip()]


def row_items(row: dict[str, str]) -> list[Item]:
    """The items MAPPING_YAML implies for one row, per contract.md, written out by hand."""
    distinct_id = row["user_id"].strip()
    first: dict[str, Any] = {}
    sets: dict[str, Any] = {}
    unset: list[str] = []
    if row["name"]:  # an empty cell is null: on_null skip leaves the property out
        sets["name"] = row["name"]
    if row["plan"]:
        sets["plan"] = row["plan"]
    else:
        unset.append("plan")  # on_null: unset
    if sets:
        first["$set"] = sets
    if row["first_source"]:
        first["$once"] = {"first_source": row["first_source"]}
    adds: dict[str, Any] = {}
    if row["logins"].strip():
        adds["logins"] = int(float(row["logins"]))  # "12.0" and "1e3" are integers too
    if row["credits"].strip():
        adds["credits"] = float(row["credits"])
    if adds:
        first["$add"] = adds
    unset += _pieces(row["churned"], ",")
    if unset:
        first["$unset"] = unset
    tags, removed = _pieces(row["tags"], ";"), _pieces(row["removed_tags"], ";")
    actions = [first] + [{} for _ in range(max(len(tags), len(removed), 1) - 1)]
    for k, tag in enumerate(tags):
        actions[k]["$append"] = {"tags": tag}
    for k, tag in enumerate(removed):
        actions[k]["$remove"] = {"tags": tag}
    return [(distinct_id, a) for a in actions if a]


def expected_items(rows: Sequence[dict[str, str]]) -> list[Item]:
    """Every item of the rows, in file order."""
    return [item for row in rows for item in row_items(row)]


def apply_action(props: dict[str, Any], action: dict[str, Any]) -> None:
    """Fyno's operators as fyno-api.md states them, in the emulator's documented order."""
    for op in OPERATOR_ORDER:
        values = action.get(op)
        if values is None:
            continue
        if op == "$set":
            props.update(values)
        elif op == "$once":
            for name, value in values.items():
                props.setdefault(name, value)
        elif op == "$add":
            for name, value in values.items():
                props[name] = props.get(name, 0) + value
        elif op == "$append":
            for name, value in values.items():
                current = props.setdefault(name, [])
                if value not in current:
                    current.append(value)
        elif op == "$remove":
            for name, value in values.items():
                if value in props.get(name, []):
                    props[name].remove(value)
        else:
            for name in values:
                props.pop(name, None)


def reference_profiles(items: Sequence[Item]) -> dict[str, dict[str, Any]]:
    """Profiles after applying the items in order (a profile exists once it held a value)."""
    profiles: dict[str, dict[str, Any]] = {}
    for distinct_id, action in items:
        props = profiles.get(distinct_id, {})
        apply_action(props, action)
        if props or distinct_id in profiles:
            profiles[distinct_id] = props
    return profiles


def add_totals(items: Sequence[Item]) -> dict[tuple[str, str], float]:
    """(profile, property) → sum of every $add the items carry (ignoring $unset resets)."""
    totals: dict[tuple[str, str], float] = {}
    for distinct_id, action in items:
        for name, value in action.get("$add", {}).items():
            totals[(distinct_id, name)] = totals.get((distinct_id, name), 0) + value
    return totals


def emulator_profiles(
    server: EmulatorServer, ids: Sequence[str], workspace: str = WORKSPACE
) -> dict[str, dict[str, Any]]:
    """The emulator's profile of each id that exists."""
    out = {}
    for distinct_id in ids:
        found = server.profile(distinct_id, workspace=workspace)
        if found is not None:
            out[distinct_id] = found
    return out


def profile_diff(
    actual: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]], limit: int = 5
) -> list[str]:
    """A few readable differences between two sets of profiles (empty when equal)."""
    out = []
    for distinct_id in sorted(set(actual) | set(expected)):
        a, e = actual.get(distinct_id), expected.get(distinct_id)
        if a != e:
            out.append(f"{distinct_id}: emulator {a!r} != reference {e!r}")
            if len(out) >= limit:
                break
    return out


def shard_of(distinct_id: str, shards: int) -> int:
    """The contract's rule, 1-based: first 8 bytes of SHA-256 of the trimmed id, mod N, plus 1."""
    digest = hashlib.sha256(distinct_id.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


# --- the emulator --------------------------------------------------------------------------------


@dataclass
class ArrivalLog:
    """ASGI wrapper: timestamps (time.monotonic) and bodies of write requests as they arrive."""

    app: Any
    keep_bodies: bool = False
    arrivals: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass the request through, noting when a write arrives and when it is answered."""
        if scope["type"] != "http" or scope["method"] != "POST" or "/v1/" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        with self.lock:
            self.arrivals.append(time.monotonic())
        chunks: list[bytes] = []

        async def receive_logged() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    with self.lock:
                        self.bodies.append(b"".join(chunks))
            return message

        try:
            # the emulator drops a connection through uvicorn's own receive (drop_rate), so it
            # is passed on untouched unless the bodies are wanted
            await self.app(scope, receive_logged if self.keep_bodies else receive, send)
        finally:
            with self.lock:
                self.answered += 1

    def arrived_after(self, moment: float) -> int:
        """Write requests that arrived after ``moment`` (time.monotonic)."""
        with self.lock:
            return sum(1 for t in self.arrivals if t > moment)

    @property
    def in_flight(self) -> int:
        """Write requests arrived and not yet answered."""
        with self.lock:
            return len(self.arrivals) - self.answered


@contextlib.contextmanager
def emulator(
    *, log: bool = False, keep_bodies: bool = False, **options: Any
) -> Iterator[tuple[EmulatorServer, ArrivalLog | None]]:
    """An in-process emulator on 127.0.0.1 (port 0 unless given); stopped on exit."""
    options.setdefault("port", 0)
    server = EmulatorServer(EmulatorConfig(**options))
    arrivals = None
    if log:
        arrivals = ArrivalLog(server.app, keep_bodies=keep_bodies)
        server.app = arrivals  # served instead of the bare app; lifespan passes through
    server.start()
    try:
        yield server, arrivals
    finally:
        server.stop()


def port_of(url: str) -> int:
    """The port of an http://host:port URL."""
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def requests_total(stats: dict[str, Any]) -> int:
    """Write requests the emulator answered (or dropped), whatever their status."""
    return sum(stats["requests_by_status"].values())


# --- the CLI -------------------------------------------------------------------------------------


def cli_env(
    base_url: str | None = None, *, key: str | None = API_KEY, **extra: str
) -> dict[str, str]:
    """Environment for the CLI: key and workspace, optionally a base URL; nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FYNO_")}
    if key is not None:
        env["FYNO_API_KEY"] = key
    env["FYNO_WORKSPACE_ID"] = WORKSPACE
    if base_url is not None:
        env["FYNO_BASE_URL"] = base_url
    env.update(extra)
    return env


def cli(args: Sequence[str], *, base_url: str | None = None, key: str | None = API_KEY) -> Result:
    """Run ``fyno-import ARGS`` in-process with CliRunner; stdout and stderr kept apart."""
    overrides: dict[str, str | None] = {
        "FYNO_API_KEY": key,
        "FYNO_WORKSPACE_ID": WORKSPACE,
        "FYNO_BASE_URL": base_url,
        "FYNO_VERSION": None,
    }
    result = CliRunner().invoke(main, list(args), env=overrides)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"fyno-import {' '.join(args)} raised instead of exiting: {result.exception!r}\n"
            f"stderr: {result.stderr}"
        ) from result.exception
    return result


def one_json(stdout: str) -> dict[str, Any]:
    """The single JSON object a ``--json`` command printed on stdout (and nothing else)."""
    text = stdout.strip()
    assert text, "nothing on stdout"
    decoder = json.JSONDecoder()
    value, end = decoder.raw_decode(text)
    assert text[end:].strip() == "", f"more than one JSON document on stdout: {text!r}"
    assert isinstance(value, dict), value
    return value


def check_summary(summary: dict[str, Any]) -> None:
    """The JSON summary has every key the contract lists, with sensible types."""
    missing = CONTRACT_SUMMARY_KEYS - set(summary)
    assert not missing, f"summary lacks {sorted(missing)}"
    for source in summary["sources"]:
        assert set(source) >= CONTRACT_SOURCE_KEYS, source
    for key in CONTRACT_SUMMARY_KEYS - {"run_id", "error", "ledger", "rejects", "sources"}:
        assert isinstance(summary[key], (int, float)) and not isinstance(summary[key], bool), key


def start_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m importer ARGS`` in its own process group; stop it with stop_process."""
    return subprocess.Popen(
        [PYTHON, "-m", "importer", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill a process started by start_cli and its group, and reap it (no-op if it ended)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


def run_cli(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m importer ARGS`` to its end as a subprocess (killed on timeout)."""
    proc = start_cli(args, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- the ledger ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerChunk:
    """One row of the ledger's chunks table, decoded."""

    run_id: str
    chunk_id: str
    status: str
    has_add: bool
    items: int
    attempts: int
    error: str | None
    distinct_ids: list[str]
    rows: list[int] | None
    sources: list[int] | None = None  # each item's source index, while its rows are kept

    def global_rows(self, offsets: Sequence[int]) -> set[int]:
        """Its items' 1-based row numbers in the rows of every source put end to end
        (``offsets[i]``: the rows before source i)."""
        if self.rows is None:
            return set()
        sources = self.sources or [0] * len(self.rows)
        return {offsets[src] + row for src, row in zip(sources, self.rows, strict=True)}


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def ledger_chunks(path: Path, run_id: str | None = None) -> list[LedgerChunk]:
    """Every chunk in the ledger (of one run, if given), read without locking anything."""
    if not path.exists():
        return []
    query = (
        "SELECT run_id, chunk_id, status, has_add, items, attempts, error, ids_z, rows_z,"
        " source_idx, sources_z"
        " FROM chunks" + (" WHERE run_id = ?" if run_id else "")
    )
    try:
        with contextlib.closing(_ro(path)) as conn:
            rows = conn.execute(query, (run_id,) if run_id else ()).fetchall()
    except sqlite3.Error:
        return []  # not created yet, or mid-creation
    return [
        LedgerChunk(
            run_id=r[0],
            chunk_id=r[1],
            status=r[2],
            has_add=bool(r[3]),
            items=r[4],
            attempts=r[5],
            error=r[6],
            distinct_ids=json.loads(zlib.decompress(r[7])) if r[7] is not None else [],
            rows=json.loads(zlib.decompress(r[8])) if r[8] is not None else None,
            sources=_item_sources(r[9], r[10], r[4]),
        )
        for r in rows
    ]


def _item_sources(first: int, runs_z: bytes | None, items: int) -> list[int]:
    """Each item's source index, from a chunk's runs of [source, count] (or its first source)."""
    runs = json.loads(zlib.decompress(runs_z)) if runs_z is not None else [[first, items]]
    return [index for index, count in runs for _ in range(count)]


def count_status(chunks: Sequence[LedgerChunk], status: str) -> int:
    """How many chunks have this status."""
    return sum(1 for c in chunks if c.status == status)


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, or None."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def files_under(*paths: Path) -> Iterator[Path]:
    """Every regular file at or below these paths."""
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in path.rglob("*") if p.is_file())


# --- explaining the emulator's state -------------------------------------------------------------

KILLED_IN_FLIGHT = "was in flight when an earlier try stopped"  # the ledger's note on such chunks


def _groups(chunks: Sequence[LedgerChunk]) -> list[list[LedgerChunk]]:
    """Chunks joined into groups that share no profile with each other (union-find over ids)."""
    parent = list(range(len(chunks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, chunk in enumerate(chunks):
        for distinct_id in chunk.distinct_ids:
            if distinct_id in owner:
                parent[root(index)] = root(owner[distinct_id])
            else:
                owner[distinct_id] = index
    groups: dict[int, list[LedgerChunk]] = {}
    for index, chunk in enumerate(chunks):
        groups.setdefault(root(index), []).append(chunk)
    return list(groups.values())


def explain_state(
    rows: Sequence[dict[str, str]],
    chunks: Sequence[LedgerChunk],
    actual: dict[str, dict[str, Any]],
    unknown: set[str],
    offsets: Sequence[int] = (0,),
) -> dict[str, bool]:
    """Prove the emulator's state is the rows applied once each, bar whole unknown chunks.

    ``rows`` must be one item each (``make_rows(single_item=True)``) and ``unknown`` the ids of
    chunks whose fate nobody can know (a $add chunk in flight when the importer was killed: it
    reached the API, or not). Chunks sharing no profile are independent, so each group of
    chunks linked by shared profiles is solved on its own: some choice of its unknown chunks as
    applied or not must give exactly the emulator's profiles. Returns chunk id → applied; raises
    AssertionError naming a group that fits no choice (an update lost, or one applied twice).
    With several sources, ``rows`` are theirs end to end and ``offsets[i]`` the rows before
    source i.
    """
    decided: dict[str, bool] = {}
    numbered = list(enumerate(rows, start=1))
    for number, group in enumerate(_groups(chunks)):
        ids = {d for c in group for d in c.distinct_ids}
        group_rows = [(n, r) for n, r in numbered if r["user_id"].strip() in ids]
        group_actual = {d: p for d, p in actual.items() if d in ids}
        open_chunks = sorted(c.chunk_id for c in group if c.chunk_id in unknown)
        rows_of = {c.chunk_id: c.global_rows(offsets) for c in group}
        for size in range(len(open_chunks) + 1):
            fits = None
            for skipped in itertools.combinations(open_chunks, size):
                gone = set().union(*(rows_of[c] for c in skipped)) if skipped else set()
                kept = [r for n, r in group_rows if n not in gone]
                if reference_profiles(expected_items(kept)) == group_actual:
                    fits = skipped
                    break
            if fits is not None:
                decided.update({c: c not in fits for c in open_chunks})
                break
        else:
            expected = reference_profiles(expected_items([r for _, r in group_rows]))
            raise AssertionError(
                f"group {number} of chunks: the emulator's profiles fit no choice of its "
                f"{len(open_chunks)} chunk(s) of unknown fate applied once or not at all:\n"
                + "\n".join(profile_diff(group_actual, expected))
            )
    return decided
