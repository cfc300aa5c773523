"""`emulator`: a local Fyno-compatible server with fault injection."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from importer.cli import options as opt
from importer.cli.output import fail, read_key
from importer.errors import ImporterError


@click.command(context_settings=opt.CONTEXT)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--port",
    type=int,
    default=8080,
    show_default=True,
    help="Port; 0 picks a free one and prints it.",
)
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep profiles in this SQLite file [default: in memory].",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Accept only this key [else FYNO_API_KEY; with neither, any non-empty key].",
)
@click.option(
    "--latency-ms",
    default=None,
    metavar="MIN[-MAX]",
    help="Wait this long before applying each request.",
)
@click.option(
    "--fail-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of requests answered 503 (nothing applied).",
)
@click.option(
    "--rate-limit",
    type=float,
    default=0.0,
    show_default=True,
    help="Token bucket of R requests/s (burst R); excess answered 429 with Retry-After: 1.",
)
@click.option(
    "--drop-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of requests applied, then the connection closed without an answer.",
)
@click.option("--seed", type=int, default=None, help="Seed for the fault draws.")
@click.option(
    "--sink", is_flag=True, help="Check and count items without storing profiles (for benchmarks)."
)
def emulator(
    host: str,
    port: int,
    db: Path | None,
    api_key_file: Path | None,
    latency_ms: str | None,
    fail_rate: float,
    rate_limit: float,
    drop_rate: float,
    seed: int | None,
    sink: bool,
) -> None:
    """Serve a local Fyno-compatible API with fault injection, for trying mappings and tests.

    Endpoints: POST /v1/{WSID}/{version}/profiles/properties/batch (and the single-operator ones),
    GET /v1/{WSID}/{version}/profiles/{distinct_id}, GET /_emulator/stats, POST /_emulator/reset.
    """
    from importer.emulator import EmulatorConfig, parse_latency, serve

    for name, value in (("--fail-rate", fail_rate), ("--drop-rate", drop_rate)):
        if not 0 <= value <= 1:
            fail(f"{name} {value:g}: give a fraction from 0 to 1")
    if not rate_limit >= 0:
        fail(f"--rate-limit {rate_limit:g}: give 0 (off) or a positive rate in requests/s")
    if not 0 <= port <= 65535:
        fail(f"--port {port}: give a port from 0 to 65535 (0 picks a free one)")
    try:
        key = read_key(api_key_file)
        emulator_config = EmulatorConfig(
            host=host,
            port=port,
            api_key=key,
            db=db,
            latency_ms=parse_latency(latency_ms) if latency_ms else None,
            fail_rate=fail_rate,
            rate_limit=rate_limit,
            drop_rate=drop_rate,
            seed=seed,
            sink=sink,
        )
    except ImporterError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc))

    def ready(url: str) -> None:
        click.echo(f"fyno-import emulator listening on {url}", err=False)
        sys.stdout.flush()

    try:
        serve(emulator_config, ready)
    except OSError as exc:
        fail(f"the emulator cannot listen on {host}:{port}: {exc.strerror or exc}")
    except sqlite3.Error as exc:
        fail(f"the emulator cannot use --db {db}: {exc}")
