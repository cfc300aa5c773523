"""Remote sources against real servers on loopback: moto's S3 (a subprocess) and a plain HTTP
server with range requests (a thread). polars and obstore are used for real, never mocked."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import MAPPINGS, SAMPLE_DATA, write
from moto_helpers import KEY, Bucket, bucket, free_port, moto_url  # noqa: F401  (fixtures)

from importer.cli import main
from importer.emulator import EmulatorConfig, EmulatorServer
from importer.errors import SourceError
from importer.sources import resolve_sources

MAPPING = MAPPINGS / "nightly_export.yaml"
# summary fields that name where things are, not what was imported
_WHERE = {"run_id", "elapsed_s", "ledger", "rejects", "sources"}


def invoke(*args: str | Path) -> tuple[int, dict[str, Any], str]:
    """Run the CLI in-process with --json; return exit code, JSON summary and stderr."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    summary = json.loads(result.stdout) if result.stdout.strip() else {}
    assert KEY not in result.stdout + result.stderr
    return result.exit_code, summary, result.stderr


def import_into(
    server: EmulatorServer, sources: list[str], tmp_path: Path, name: str
) -> tuple[int, dict[str, Any], str]:
    """`fyno-import run SOURCES` into a running emulator, with its own ledger and rejects file."""
    return invoke(
        "run",
        *sources,
        "-m",
        MAPPING,
        "--base-url",
        server.url,
        "--ledger",
        tmp_path / f"{name}.ledger.db",
        "--rejects",
        tmp_path / f"{name}.rejects.csv",
        "--json",
        "--no-progress",
    )


def all_profiles(server: EmulatorServer) -> dict[str, Any]:
    """Every profile of the sample data, as the emulator holds it."""
    ids = pl.read_csv(SAMPLE_DATA / "users.csv", infer_schema=False)["user_id"]
    wanted = {i.strip() for i in ids.drop_nulls().to_list() if i.strip()}
    return {i: server.profile(i, workspace="ws") for i in sorted(wanted)}


def rejects_without_source(path: Path) -> list[tuple[Any, ...]]:
    """The rejects file's rows without the source column (local paths and URLs differ)."""
    frame = pl.read_csv(path, infer_schema=False)
    return sorted(frame.drop("source").rows())


def test_s3_parquet_and_csv_import_like_local_files(bucket: Bucket, tmp_path: Path) -> None:
    """Objects on S3 import with the same summary, rejects and profiles as the local files,
    and a second run is refused as already imported (exit 2)."""
    local = [str(SAMPLE_DATA / "users.parquet"), str(SAMPLE_DATA / "users.csv")]
    remote = [
        bucket.put("nightly/users.parquet", SAMPLE_DATA / "users.parquet"),
        bucket.put("nightly/users.csv", SAMPLE_DATA / "users.csv"),
    ]
    with EmulatorServer(EmulatorConfig(port=0)) as server:
        code_local, local_summary, _ = import_into(server, local, tmp_path, "local")
        local_profiles = all_profiles(server)
    with EmulatorServer(EmulatorConfig(port=0)) as server:
        code, summary, err = import_into(server, remote, tmp_path, "remote")
        remote_profiles = all_profiles(server)
        assert code == code_local == 1, err  # the sample data holds deliberately bad rows
        assert [s["source"] for s in summary["sources"]] == remote
        assert {k: v for k, v in summary.items() if k not in _WHERE} == {
            k: v for k, v in local_summary.items() if k not in _WHERE
        }
        assert summary["rows_read"] == 6000 and summary["chunks_accepted"] > 0
        assert remote_profiles == local_profiles
        assert any(p is not None for p in remote_profiles.values())
        assert rejects_without_source(tmp_path / "remote.rejects.csv") == rejects_without_source(
            tmp_path / "local.rejects.csv"
        )

        again, second, err = import_into(server, remote, tmp_path, "remote")
        assert again == 2
        assert second["sources_skipped"] == 2 and second["items_sent"] == 0
        assert "already imported" in second["error"] and summary["run_id"] in second["error"]


def test_a_reuploaded_object_is_still_recognised(bucket: Bucket, tmp_path: Path) -> None:
    """The fingerprint follows ETag and size, not the key: the same bytes under another key are
    already imported; changed bytes are a new source."""
    first = bucket.put("day1/users.csv", SAMPLE_DATA / "users.csv")
    copy = bucket.put("day2/users.csv", SAMPLE_DATA / "users.csv")
    changed = bucket.put("day3/users.csv", (SAMPLE_DATA / "users.csv").read_bytes() + b"u-9,A\n")
    fingerprints = [resolve_sources([u])[0][0].fingerprint() for u in (first, copy)]
    assert fingerprints[0] == fingerprints[1]
    assert resolve_sources([changed])[0][0].fingerprint() != fingerprints[0]
    options = ("-m", MAPPING, "--emulator", "--ledger", tmp_path / "l.db", "--json")
    code, _, err = invoke("run", first, *options)
    assert code == 1, err
    code, summary, _ = invoke("run", copy, *options)
    assert code == 2 and summary["sources_skipped"] == 1


def test_an_s3_glob_and_a_prefix_read_like_a_local_directory(
    bucket: Bucket, tmp_path: Path
) -> None:
    """`s3://b/p/*.csv` and `s3://b/p/` take the matching objects of that level in name order;
    markers and other suffixes are ignored with a notice, sub-prefixes are not searched."""
    header = b"user_id,email,first_name,plan,country,marketing_opt_in,signup_at,"
    header += b"lifetime_value,phone\n"
    for key, ids in (("p/b.csv", ["u-2", "u-3"]), ("p/a.csv", ["u-1"]), ("p/sub/c.csv", ["u-9"])):
        bucket.put(key, header + b"".join(f"{i},{i}@x.io,,,,,,,\n".encode() for i in ids))
    bucket.put("p/_SUCCESS", b"")
    bucket.put("p/readme.txt", b"hello")
    bucket.put("p/users.parquet", SAMPLE_DATA / "users.parquet")

    sources, _ = resolve_sources([bucket.url("p/*.csv")])
    assert [s.name for s in sources] == [bucket.url("p/a.csv"), bucket.url("p/b.csv")]
    sources, notices = resolve_sources([bucket.url("p/")])
    assert [s.name for s in sources] == [
        bucket.url("p/a.csv"),
        bucket.url("p/b.csv"),
        bucket.url("p/users.parquet"),
    ]
    assert any("_SUCCESS" in n.path for n in notices)
    assert any("readme.txt" in n.path for n in notices)

    rejects = tmp_path / "r.csv"
    code, summary, err = invoke(
        "run", bucket.url("p/*.csv"), "-m", MAPPING, "--emulator", "--json", "--rejects", rejects
    )
    assert code == 0, err
    assert [s["source"] for s in summary["sources"]] == [
        bucket.url("p/a.csv"),
        bucket.url("p/b.csv"),
    ]
    assert summary["rows_read"] == 3 and summary["items_sent"] == 3
    code, summary, err = invoke(
        "validate", bucket.url("p/"), "-m", MAPPING, "--json", "--rejects", rejects
    )
    assert code == 1 and summary["rows_read"] == 3 + 3000
    assert "ignored" in err and "_SUCCESS" in err


def test_storage_options_in_the_mapping_replace_the_environment(
    bucket: Bucket, moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials and endpoint given in `source: storage_options:` work with no AWS variables."""
    url = bucket.put("x/users.parquet", SAMPLE_DATA / "users.parquet")
    for name in ("ENDPOINT_URL", "ALLOW_HTTP", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.delenv(f"AWS_{name}")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        MAPPING.read_text(encoding="utf-8")
        + "source:\n  storage_options:\n"
        + f"    aws_endpoint_url: {moto_url}\n    aws_allow_http: 'true'\n"
        + "    aws_access_key_id: testing\n    aws_secret_access_key: testing\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "r.csv"
    code, summary, err = invoke("validate", url, "-m", mapping, "--json", "--rejects", rejects)
    assert code == 1, err
    assert summary["rows_read"] == 3000


def test_a_remote_latin1_csv_is_transcoded(bucket: Bucket, tmp_path: Path) -> None:
    """`encoding: latin1` applies to an object too: the bytes are transcoded, not misread."""
    url = bucket.put("l/users.csv", "user_id,city\nu-1,Köln\nu-2,Malmö\n".encode("latin-1"))
    mapping = write(
        tmp_path / "m.yaml",
        """
        distinct_id: user_id
        properties:
          - {column: city, op: set}
        source:
          encoding: latin1
        """,
    )
    options = ("--emulator", "--json", "--rejects", tmp_path / "r.csv", "--show-profiles", "2")
    code, summary, err = invoke("run", url, "-m", mapping, *options)
    assert code == 0, err
    assert summary["rows_valid"] == 2
    assert '"city": "Köln"' in err and '"city": "Malmö"' in err


def test_a_missing_object_or_bucket_is_exit_2_naming_it(bucket: Bucket, tmp_path: Path) -> None:
    """A URL that names nothing stops the command with exit 2 and the URL, not a traceback."""
    for url in (bucket.url("nope/users.csv"), "s3://no-such-bucket-here/users.csv"):
        code, summary, err = invoke("validate", url, "-m", MAPPING, "--json")
        assert code == 2, err
        assert url in summary["error"] and "Traceback" not in err
    with pytest.raises(SourceError, match="cannot list"):
        resolve_sources(["s3://no-such-bucket-here/*.csv"])


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges (polars reads remote files by range)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def send_head(self) -> Any:
        """Answer `Range: bytes=a-b` and `bytes=-n` with 206; anything else as usual."""
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if wanted is None:
            return super().send_head()
        data = Path(self.translate_path(self.path)).read_bytes()
        if wanted[1]:
            start = int(wanted[1])
            end = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
        else:
            start, end = max(0, len(data) - int(wanted[2])), len(data) - 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])


@contextlib.contextmanager
def http_files(directory: Path) -> Iterator[str]:
    """Serve a directory over HTTP on a free loopback port; stopped on exit."""

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client closing early (after the range it needed) is not an error."""

    server = Server(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_web_urls_import_like_local_files(tmp_path: Path) -> None:
    """A CSV and a Parquet file behind an http(s) URL validate like the local files."""
    with http_files(SAMPLE_DATA) as base:
        urls = [f"{base}/users.csv", f"{base}/users.parquet"]
        rejects = tmp_path / "r.csv"
        code, summary, err = invoke(
            "validate", *urls, "-m", MAPPING, "--json", "--rejects", rejects
        )
        _, local, _ = invoke(
            "validate",
            SAMPLE_DATA / "users.csv",
            SAMPLE_DATA / "users.parquet",
            "-m",
            MAPPING,
            "--json",
            "--rejects",
            tmp_path / "l.csv",
        )
        fingerprint = resolve_sources([urls[0]])[0][0].fingerprint()
    assert code == 1, err
    assert summary["rows_read"] == local["rows_read"] == 6000
    assert summary["rows_rejected"] == local["rows_rejected"]
    assert fingerprint.startswith("remote:")
