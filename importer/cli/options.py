"""The options several commands share, with their help texts (defaults from importer.config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from importer import config

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _stack(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``options`` in the order written (first = first in --help)."""

    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


sources_arg = click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
mapping_opt = click.option(
    "--mapping",
    "-m",
    "mapping_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The mapping file (YAML, JSON or TOML).",
)
format_opt = click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default=None,
    help="Read every source as this format, whatever its suffix.",
)
json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."
)
allow_empty_opt = click.option(
    "--allow-empty",
    is_flag=True,
    default=None,
    help="No files, or files with no data rows, are not an error.",
)
batch_size_opt = click.option(
    "--batch-size",
    type=int,
    default=None,
    help=f"Most items in one request [default: {config.DEFAULT_BATCH_SIZE}].",
)
max_batch_bytes_opt = click.option(
    "--max-batch-bytes",
    type=int,
    default=None,
    help=f"Most bytes in one request body [default: {config.DEFAULT_MAX_BATCH_BYTES}].",
)


def rejects_opt(help_text: str) -> Callable[[F], F]:
    """``--rejects FILE`` with this help text."""
    return click.option(
        "--rejects",
        type=click.Path(path_type=Path),
        default=Path(config.DEFAULT_REJECTS),
        show_default=True,
        help=help_text,
    )


def ledger_opt(
    help_text: str, *, name: str = "ledger", default: Path | None = None
) -> Callable[[F], F]:
    """``--ledger FILE`` stored as ``name``."""
    return click.option(
        "--ledger",
        name,
        type=click.Path(path_type=Path),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


output_options = _stack(
    click.option(
        "--no-progress",
        is_flag=True,
        help="No progress bar (it is also off when stderr is not a terminal).",
    ),
    click.option(
        "--quiet",
        "-q",
        is_flag=True,
        help="No progress, notices or human summary; errors only (with --log-format json: "
        "warnings, errors and run_finished).",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="json: one JSON object per event on stderr (run started, chunk failed, retry, run "
        "finished with counts), no progress bar and no human summary; for log aggregators.",
    ),
)

sending_options = _stack(
    click.option(
        "--concurrency",
        type=int,
        default=None,
        help=f"Most requests in flight [default: {config.DEFAULT_CONCURRENCY}].",
    ),
    click.option(
        "--rate-limit",
        type=float,
        default=None,
        help="Most requests started per second, 0 = none [default: 0].",
    ),
    click.option(
        "--max-retries",
        type=int,
        default=None,
        help="Tries after the first, for transient failures "
        f"[default: {config.DEFAULT_MAX_RETRIES}].",
    ),
    click.option(
        "--timeout",
        type=float,
        default=None,
        help=f"Per-request timeout in seconds [default: {config.DEFAULT_TIMEOUT_S:g}].",
    ),
)

target_options = _stack(
    click.option(
        "--workspace",
        default=None,
        help=f"Fyno workspace id (WSID) [env: {config.ENV_WORKSPACE}].",
    ),
    click.option(
        "--api-version",
        default=None,
        help=f"live or test [env: {config.ENV_API_VERSION}; "
        f"default: {config.DEFAULT_API_VERSION}].",
    ),
    click.option(
        "--base-url",
        default=None,
        help=f"API base URL [env: {config.ENV_BASE_URL}; default: {config.DEFAULT_BASE_URL}].",
    ),
    click.option(
        "--api-key-file",
        type=click.Path(path_type=Path),
        default=None,
        help=f"Read the API key from this file (wins over {config.ENV_API_KEY}).",
    ),
)
