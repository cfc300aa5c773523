"""`retry`: resend a run's failed chunks from the ledger alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from importer import config
from importer.cli import options as opt
from importer.cli.execute import execute
from importer.cli.output import read_key
from importer.errors import UsageError

if TYPE_CHECKING:
    from importer.events import Reporter


@click.command(context_settings=opt.CONTEXT)
@opt.ledger_opt("The results ledger.", default=Path(config.DEFAULT_LEDGER))
@click.option(
    "--run",
    "run_id",
    default=None,
    help="The run to retry [default: the latest run with failures].",
)
@click.option(
    "--include-ambiguous",
    is_flag=True,
    help="Also resend ambiguous chunks (those carrying $add may be applied twice).",
)
@opt.sending_options
@opt.target_options
@opt.json_opt
@opt.output_options
def retry(
    ledger: Path,
    run_id: str | None,
    include_ambiguous: bool,
    concurrency: int | None,
    rate_limit: float | None,
    max_retries: int | None,
    timeout: float | None,
    workspace: str | None,
    api_version: str | None,
    base_url: str | None,
    api_key_file: Path | None,
    as_json: bool,
    no_progress: bool,
    quiet: bool,
    log_format: str,
) -> None:
    """Resend a run's failed chunks from the ledger alone (the source file may be gone).

    Chunks refused with HTTP 400 are reported, not resent. Goes to the base URL, workspace and
    version recorded in the ledger.
    """
    from importer.config.settings import merge_settings
    from importer.pipeline import RetryOptions, RunSummary, retry_failed

    summary = RunSummary(command="retry")

    def action(reporter: Reporter) -> object:
        settings = merge_settings(
            concurrency=concurrency,
            rate_limit=rate_limit,
            max_retries=max_retries,
            timeout=timeout,
        )
        key = read_key(api_key_file)
        if not key:
            raise UsageError(f"no API key: set {config.ENV_API_KEY} or pass --api-key-file FILE")
        options = RetryOptions(
            ledger=ledger,
            run_id=run_id,
            include_ambiguous=include_ambiguous,
            settings=settings,
            api_key=key,
            base_url=base_url,
            workspace=workspace,
            api_version=api_version,
        )
        return retry_failed(options, summary, reporter)

    execute(
        summary,
        action,
        as_json=as_json,
        no_progress=no_progress,
        quiet=quiet,
        log_format=log_format,
    )
