"""Issue 6's security checks, as tests a leak or a lax default would fail.

- The API key appears in no output, log line, ledger byte, rejects or export file, even when a
  server echoes the Authorization header back in an error body, an item status or a request id.
- A plain http:// base URL to a host that is not loopback is refused before any connection.
- The ledger (and its sidecars), the rejects file and the failures export are created 0600.
- Symlinked and FIFO mappings and sources are handled sanely.
- The emulator listens on loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from e2e_helpers import (
    PYTHON,
    WORKSPACE,
    cli,
    cli_env,
    emulator,
    files_under,
    make_rows,
    non_loopback_ipv4,
    one_json,
    run_cli,
    write_csv,
    write_mapping,
)

KEY = "sk-echo-SECRET-4f9a8b7c6d5e"


@pytest.fixture(autouse=True)
def _work_in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default files (rejects, ledger) land in the test's directory, never in the repository."""
    monkeypatch.chdir(tmp_path)


# --- a server that echoes the key back -----------------------------------------------------------


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers like a careless proxy or API: the Authorization header comes back in the answer.

    The workspace in the path picks the answer: e400 (JSON 400), e500 (JSON 500), e502 (an HTML
    page), e401 (JSON 401), e202 (a 202 whose request id and per-item statuses carry the key).
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    auth = headers.get("authorization", "")
    workspace = scope["path"].split("/")[2]
    content_type = b"application/json"
    if workspace == "e202":
        items = len(json.loads(body)["batch"])
        status = 202
        payload = {
            "request_id": auth,
            "batch": [{"$set": f"refused for {auth}"} for _ in range(items)],
        }
    elif workspace == "e502":
        status, content_type = 502, b"text/html"
        payload = None
        text = f"<html><body>Bad gateway. Your headers: {headers}</body></html>".encode()
    else:
        status = int(workspace[1:])
        payload = {"_message": f"refused {auth} ({headers})", "status": "error", "echo": headers}
    data = json.dumps(payload).encode() if payload is not None else text
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"x-echo", auth.encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """The echo app under uvicorn on 127.0.0.1 (a free port), in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_echo_app, log_level="critical", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the echo server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _leaks(texts: dict[str, str], *folders: Path) -> list[str]:
    """Where the key shows up: in the given outputs, or in any file under the folders."""
    found = [name for name, text in texts.items() if KEY in text]
    for path in files_under(*folders):
        if KEY.encode() in path.read_bytes():
            found.append(str(path))
    return found


def _ledger_texts(ledger: Path) -> dict[str, str]:
    """Every text the ledger holds, read through SQLite (WAL content included)."""
    out = {}
    with contextlib.closing(sqlite3.connect(ledger)) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            out[f"ledger table {table}"] = repr(rows)
    return out


@pytest.mark.parametrize("answer", ["e400", "e500", "e502", "e401", "e202"])
def test_key_never_leaks_even_when_the_server_echoes_it_back(tmp_path: Path, answer: str) -> None:
    """A server echoing the Authorization header: the key is in no output, ledger or file."""
    work = tmp_path / "work"
    work.mkdir()
    key_file = tmp_path / "key.txt"  # the only file allowed to hold the key
    key_file.write_text(KEY + "\n", encoding="utf-8")
    source = write_csv(work / "users.csv", make_rows(30, profiles=10, seed=21))
    mapping = write_mapping(work / "mapping.yaml")
    ledger = work / "l.db"
    texts: dict[str, str] = {}
    with echo_server() as url:
        common = ["--api-key-file", str(key_file), "--workspace", answer]
        run = cli(
            [
                "run",
                str(source),
                "-m",
                str(mapping),
                "--ledger",
                str(ledger),
                "--rejects",
                str(work / "rejects.csv"),
                "--base-url",
                url,
                "--max-retries",
                "1",
                "--json",
                *common,
            ],
            key=None,
        )
        texts["run stdout"], texts["run stderr"] = run.stdout, run.stderr
        summary = one_json(run.stdout)
        expected_code = {"e400": 1, "e500": 1, "e502": 1, "e401": 3, "e202": 1}[answer]
        assert run.exit_code == expected_code, run.stderr
        if answer == "e202":
            assert summary["item_errors"] > 0
        retry = cli(
            ["retry", "--ledger", str(ledger), "--json", "--max-retries", "0", *common[:2]],
            key=None,
        )
        texts["retry stdout"], texts["retry stderr"] = retry.stdout, retry.stderr
    for args in (["show"], ["show", "--json"]):
        shown = cli(["ledger", *args, "--ledger", str(ledger)])
        texts[f"ledger {' '.join(args)}"] = shown.stdout + shown.stderr
    export = cli(["ledger", "export", "--ledger", str(ledger), "--failures", str(work / "f.csv")])
    texts["export"] = export.stdout + export.stderr
    texts.update(_ledger_texts(ledger))
    assert _leaks(texts, work) == []
    # the echoed messages did reach the ledger, redacted: the test would notice a leak
    if answer in ("e400", "e500"):
        assert "***" in texts["ledger table chunks"]


def test_key_never_leaks_from_a_subprocess_run_its_logs_or_a_refusal(tmp_path: Path) -> None:
    """As a real process with JSON logs: the key is absent from stdout, stderr and every file."""
    work = tmp_path / "work"
    work.mkdir()
    source = write_csv(work / "users.csv", make_rows(40, profiles=10, seed=22))
    mapping = write_mapping(work / "mapping.yaml")
    outputs: dict[str, str] = {}
    with emulator(api_key=KEY) as (server, _):
        env = cli_env(server.url, key=KEY)
        base = ["run", str(source), "-m", str(mapping), "--ledger", str(work / "l.db"), "--json"]
        ok = run_cli([*base, "--log-format", "json"], cwd=work, env=env)
        outputs["ok"] = ok.stdout + ok.stderr
        assert ok.returncode == 0, ok.stderr
        assert one_json(ok.stdout)["exit_code"] == 0  # logs on stderr, one object on stdout
        assert all(json.loads(line) for line in ok.stderr.splitlines() if line.strip())
        refused = run_cli(
            [*base, "--force", "--log-format", "json"],
            cwd=work,
            env=cli_env(server.url, key="x" + KEY),
        )
        outputs["refused"] = refused.stdout + refused.stderr
        assert refused.returncode == 3
        assert "x" + KEY not in outputs["refused"]
    assert _leaks(outputs, work) == []


# --- plain http:// -------------------------------------------------------------------------------


@contextlib.contextmanager
def listener(host: str) -> Iterator[tuple[int, list[Any]]]:
    """A TCP listener on host (a free port) that records every connection it accepts."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(16)
    sock.settimeout(0.1)
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_plain_http_to_a_non_loopback_host_is_refused_before_any_connection(
    tmp_path: Path,
) -> None:
    """http:// to this machine's own non-loopback address: exit 2, and no connection at all."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    source = write_csv(tmp_path / "users.csv", make_rows(10, profiles=5, seed=23))
    mapping = write_mapping(tmp_path / "mapping.yaml")
    with listener(address) as (port, accepted):
        for url in (
            f"http://{address}:{port}",
            f"http://127.0.0.1@{address}:{port}",  # userinfo that looks like loopback
        ):
            result = cli(
                ["run", str(source), "-m", str(mapping), "--base-url", url, "--json"],
            )
            assert result.exit_code == 2
            assert "http://" in one_json(result.stdout)["error"]
        time.sleep(0.2)
        assert accepted == []
    assert not (tmp_path / "fyno-import.ledger.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://127.0.0.1.nip.io:8080",
        "http://localhost.example.com",
        "http://0x7f000001",
        "http://[::ffff:192.0.2.2]:80",
    ],
)
def test_plain_http_urls_that_only_look_local_are_refused(tmp_path: Path, url: str) -> None:
    """Hostnames that merely resemble loopback are refused like any other (exit 2)."""
    source = write_csv(tmp_path / "users.csv", make_rows(5, profiles=5, seed=24))
    mapping = write_mapping(tmp_path / "mapping.yaml")
    result = cli(["run", str(source), "-m", str(mapping), "--base-url", url, "--json"])
    assert result.exit_code == 2, result.stderr
    assert "plain http://" in one_json(result.stdout)["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_plain_http_to_loopback_is_allowed(tmp_path: Path, host: str) -> None:
    """http:// to loopback (the emulator, a local proxy) is fine."""
    source = write_csv(tmp_path / "users.csv", make_rows(5, profiles=5, seed=25))
    mapping = write_mapping(tmp_path / "mapping.yaml")
    with emulator() as (server, _):
        url = server.url.replace("127.0.0.1", host)
        result = cli(["run", str(source), "-m", str(mapping), "--base-url", url])
        assert result.exit_code == 0, result.stderr


def test_retry_refuses_a_ledger_that_points_at_plain_http_elsewhere(tmp_path: Path) -> None:
    """A ledger whose run went to (or was edited to) http:// on another host: retry exits 2."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    source = write_csv(tmp_path / "users.csv", make_rows(20, profiles=5, seed=26))
    mapping = write_mapping(tmp_path / "mapping.yaml")
    ledger = tmp_path / "l.db"
    with emulator(fail_rate=1.0) as (server, _):
        cli(
            ["run", str(source), "-m", str(mapping), "--ledger", str(ledger), "--max-retries", "0"],
            base_url=server.url,
        )
    with listener(address) as (port, accepted):
        with contextlib.closing(sqlite3.connect(ledger)) as conn:
            conn.execute("UPDATE runs SET base_url = ?", (f"http://{address}:{port}",))
            conn.commit()
        result = cli(["retry", "--ledger", str(ledger), "--json"])
        assert result.exit_code == 2
        assert "plain http://" in one_json(result.stdout)["error"]
        time.sleep(0.2)
        assert accepted == []


# --- file modes ----------------------------------------------------------------------------------


def test_ledger_sidecars_rejects_and_export_are_created_owner_only(tmp_path: Path) -> None:
    """Even under umask 000, the ledger, its sidecars, rejects and export files are 0600."""
    rows = make_rows(30, profiles=10, seed=27)
    rows[3]["logins"] = "many"  # one reject, so the rejects file has a row
    source = write_csv(tmp_path / "users.csv", rows)
    mapping = write_mapping(tmp_path / "mapping.yaml")
    with emulator(drop_rate=1.0) as (server, _):
        env = cli_env(server.url)
        args = ["run", str(source), "-m", str(mapping), "--ledger", "l.db", "--rejects", "r.csv"]
        proc = subprocess.run(
            [PYTHON, "-m", "importer", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.umask(0),
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        export = subprocess.run(
            [
                PYTHON,
                "-m",
                "importer",
                "ledger",
                "export",
                "--ledger",
                "l.db",
                "--failures",
                "f.csv",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.umask(0),
            timeout=60,
        )
        assert export.returncode == 0, export.stderr
    created = [tmp_path / n for n in ("l.db", "l.db.lock", "r.csv", "f.csv")]
    created += [p for p in tmp_path.iterdir() if p.name.startswith("l.db-")]
    for path in created:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))


# --- symlinks and FIFOs --------------------------------------------------------------------------


def test_symlinked_mapping_and_source_are_followed_and_fingerprinted_by_content(
    tmp_path: Path,
) -> None:
    """Symlinks to a mapping and a source work; the source is recognised as the same file."""
    real = tmp_path / "real"
    real.mkdir()
    source = write_csv(real / "users.csv", make_rows(20, profiles=5, seed=28))
    mapping = write_mapping(real / "mapping.yaml")
    (tmp_path / "link.csv").symlink_to(source)
    (tmp_path / "link.yaml").symlink_to(mapping)
    with emulator() as (server, _):
        args = ["--ledger", str(tmp_path / "l.db"), "--json"]
        first = cli(
            ["run", str(tmp_path / "link.csv"), "-m", str(tmp_path / "link.yaml"), *args],
            base_url=server.url,
        )
        assert first.exit_code == 0, first.stderr
        again = cli(["run", str(source), "-m", str(mapping), *args], base_url=server.url)
        assert again.exit_code == 2  # the same content: already imported
        assert one_json(first.stdout)["run_id"] in one_json(again.stdout)["error"]


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_symlinks_are_exit_2_naming_the_path(tmp_path: Path, kind: str) -> None:
    """A dangling or looping symlink as source or mapping is exit 2 naming it."""
    mapping = write_mapping(tmp_path / "mapping.yaml")
    source = write_csv(tmp_path / "users.csv", make_rows(5, profiles=5, seed=29))
    bad = tmp_path / f"{kind}.csv"
    bad_mapping = tmp_path / f"{kind}.yaml"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "nowhere.csv")
        bad_mapping.symlink_to(tmp_path / "nowhere.yaml")
    else:
        bad.symlink_to(bad)
        bad_mapping.symlink_to(bad_mapping)
    for args, name in (
        (["validate", str(bad), "-m", str(mapping)], bad.name),
        (["validate", str(source), "-m", str(bad_mapping)], bad_mapping.name),
    ):
        result = cli([*args, "--json"])
        assert result.exit_code == 2
        assert name in one_json(result.stdout)["error"]


def test_fifo_source_is_refused_at_once_with_a_reason(tmp_path: Path) -> None:
    """A FIFO source (read twice: validate, then send) is exit 2 saying so, without blocking."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    mapping = write_mapping(tmp_path / "mapping.yaml")
    started = time.monotonic()
    result = cli(["validate", str(fifo), "-m", str(mapping), "--json"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 2
    assert "pipe" in one_json(result.stdout)["error"]


def test_fifo_mapping_is_read_once_like_process_substitution(tmp_path: Path) -> None:
    """`-m <(generate-mapping)`: a mapping that is a pipe is read once and used."""
    fifo = tmp_path / "mapping.fifo.yaml"
    os.mkfifo(fifo)
    source = write_csv(tmp_path / "users.csv", make_rows(10, profiles=5, seed=30))
    text = write_mapping(tmp_path / "m.yaml").read_text(encoding="utf-8")

    def writer() -> None:
        with fifo.open("w", encoding="utf-8") as handle:
            handle.write(text)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        proc = subprocess.run(
            [PYTHON, "-m", "importer", "validate", str(source), "-m", str(fifo), "--json"],
            cwd=tmp_path,
            env=cli_env(None, key=None),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        if thread.is_alive():  # unblock the writer if the importer never opened the pipe
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(5)
    assert proc.returncode == 0, proc.stderr
    assert one_json(proc.stdout)["rows_valid"] == 10


# --- the emulator's address ----------------------------------------------------------------------


def test_emulator_listens_on_loopback_by_default(tmp_path: Path) -> None:
    """`fyno-import emulator --port 0` binds 127.0.0.1 only: other addresses find no port."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "importer", "emulator", "--port", "0"],
        cwd=tmp_path,
        env=cli_env(None, key=None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on http://([^:/]+):(\d+)", line)
        assert match, line
        host, port = match.group(1), int(match.group(2))
        assert host == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        address = non_loopback_ipv4()
        if address is not None:
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.communicate(timeout=10)


def test_workspace_of_the_e2e_helpers_is_not_the_key() -> None:
    """(Guard) the helpers' workspace id and key differ, so a leak test cannot pass by accident."""
    assert KEY not in WORKSPACE
