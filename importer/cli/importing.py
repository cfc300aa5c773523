"""`run`, `validate` and `preview`: the commands that read sources through a mapping.

Only click and the light ``importer.config`` are imported at start-up; the library (polars,
pydantic, httpx) is imported inside each command, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from importer import config
from importer.cli import options as opt
from importer.cli.execute import execute_with
from importer.cli.output import console, fail, read_key
from importer.errors import ImporterError, UsageError

if TYPE_CHECKING:
    from importer.events import Reporter
    from importer.pipeline import ImportOptions
    from importer.send import Target


def parse_shard(text: str | None) -> config.Shard | None:
    """``--shard K/N`` as (K, N)."""
    if text is None:
        return None
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: write it K/N, for example 2/8") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text!r}: K must run from 1 to N")
    return k, n


def target_from(
    api_key_file: Path | None, workspace: str | None, api_version: str | None, base_url: str | None
) -> Target:
    """Where requests go: command line over environment over defaults; the key never on the
    command line. The library checks it (``Target.check``) before any connection is made."""
    from importer.send import Target

    key = read_key(api_key_file)
    workspace = workspace or os.environ.get(config.ENV_WORKSPACE) or None
    if not key:
        raise UsageError(
            f"no API key: set {config.ENV_API_KEY} or pass --api-key-file FILE",
            hint="to try a mapping without an account, use --emulator or --dry-run",
        )
    if not workspace:
        raise UsageError(f"no workspace: set {config.ENV_WORKSPACE} or pass --workspace WSID")
    version = api_version or os.environ.get(config.ENV_API_VERSION) or config.DEFAULT_API_VERSION
    url = base_url or os.environ.get(config.ENV_BASE_URL) or config.DEFAULT_BASE_URL
    return Target(base_url=url, workspace=workspace, api_version=version, api_key=key)


def import_options(sources: tuple[str, ...], mapping_path: Path, **given: Any) -> ImportOptions:
    """The library's options from the command line: the mapping read, settings merged."""
    from importer.config.settings import merge_settings
    from importer.mapping import load_mapping
    from importer.pipeline import ImportOptions

    mapping = load_mapping(mapping_path)
    settings = merge_settings(mapping.settings, **given.pop("settings", {}))
    shard = parse_shard(given.pop("shard", None))
    return ImportOptions(
        sources=list(sources), mapping=mapping, settings=settings, shard=shard, **given
    )


@click.command(context_settings=opt.CONTEXT)
@opt.sources_arg
@opt.mapping_opt
@opt.ledger_opt(
    f"The SQLite results ledger [default: {config.DEFAULT_LEDGER}; see docs/ledger.md]."
)
@opt.batch_size_opt
@opt.max_batch_bytes_opt
@opt.sending_options
@click.option(
    "--max-reject-rate",
    type=float,
    default=None,
    help="Stop before sending if a larger fraction of rows is invalid (exit 3) "
    f"[default: {config.DEFAULT_MAX_REJECT_RATE:g}].",
)
@opt.allow_empty_opt
@opt.rejects_opt("The rejects file (rewritten by each run).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read, validate, build and count chunks; send nothing; write no ledger.",
)
@click.option(
    "--emulator", is_flag=True, help="Start the built-in emulator in-process and import into it."
)
@click.option(
    "--show-profiles",
    type=click.IntRange(min=0),
    default=0,
    help="With --emulator: print this many resulting profiles.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import already-imported sources again, or restart an unfinished run with other settings.",
)
@click.option(
    "--shard", default=None, metavar="K/N", help="Only profiles whose id falls in shard K of N."
)
@click.option(
    "--changed-only",
    is_flag=True,
    default=None,
    help="Send, per profile and property, only what changed since the last delivery to this "
    "target (incremental sync; see docs/operations.md).",
)
@click.option(
    "--state",
    default=None,
    metavar="PATH",
    help=f"With --changed-only: the sync state, a directory or an s3://, gs://, az:// prefix "
    f"[default: {config.DEFAULT_STATE}/, one per shard; temporary with --emulator].",
)
@click.option(
    "--full-resync",
    is_flag=True,
    help="With --changed-only: send everything, as a full import does, and rewrite the state.",
)
@click.option(
    "--missing",
    type=click.Choice(config.MISSING_MODES),
    default=None,
    help="With --changed-only: profiles in the state that the import no longer has are kept, "
    "or get an $unset of what this tool set [default: keep].",
)
@click.option(
    "--max-missing-rate",
    type=float,
    default=None,
    help="With --missing unset: stop before sending (exit 3) if a larger fraction of the state's "
    f"profiles is missing [default: {config.DEFAULT_MAX_MISSING_RATE:g}].",
)
@opt.format_opt
@opt.json_opt
@opt.output_options
@opt.target_options
def run(**args: Any) -> None:
    """Validate SOURCE... completely, then send every valid row to Fyno, recording each chunk.

    Run the same command again after a crash or Ctrl-C to resume: accepted chunks are skipped.
    """
    from importer.pipeline import RunSummary, run_import

    summary = RunSummary(command="run", dry_run=args["dry_run"])

    def action(reporter: Reporter) -> object:
        return run_import(_run_options(args), summary, reporter)

    execute_with(args, summary, action)


def _run_options(args: dict[str, Any]) -> ImportOptions:
    settings = {
        name: args[name]
        for name in (
            "batch_size",
            "max_batch_bytes",
            "concurrency",
            "rate_limit",
            "max_retries",
            "timeout",
            "max_reject_rate",
            "allow_empty",
            "changed_only",
            "missing",
            "max_missing_rate",
        )
    }
    target = None
    if not (args["dry_run"] or args["emulator"]):
        target = target_from(
            args["api_key_file"], args["workspace"], args["api_version"], args["base_url"]
        )
    return import_options(
        args["sources"],
        args["mapping_path"],
        settings=settings,
        format=args["fmt"],
        ledger=args["ledger"],
        rejects=args["rejects"],
        dry_run=args["dry_run"],
        force=args["force"],
        shard=args["shard"],
        target=target,
        emulator=args["emulator"],
        show_profiles=args["show_profiles"],
        state=args["state"],
        full_resync=args["full_resync"],
    )


@click.command(name="validate", context_settings=opt.CONTEXT)
@opt.sources_arg
@opt.mapping_opt
@opt.rejects_opt("Where to write the rejected rows with their reasons.")
@opt.format_opt
@opt.allow_empty_opt
@opt.json_opt
@opt.output_options
def validate_command(**args: Any) -> None:
    """Read and check SOURCE... against the mapping; write rejected rows and why. Sends nothing.

    Exit 0 when every row is valid, 1 when some rows were rejected, 2 on a bad mapping or source.
    """
    from importer.pipeline import RunSummary, validate

    summary = RunSummary(command="validate")

    def action(reporter: Reporter) -> object:
        options = import_options(
            args["sources"],
            args["mapping_path"],
            settings={"allow_empty": args["allow_empty"]},
            format=args["fmt"],
            rejects=args["rejects"],
        )
        return validate(options, summary, reporter)

    execute_with(args, summary, action)


@click.command(name="preview", context_settings=opt.CONTEXT)
@opt.sources_arg
@opt.mapping_opt
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many request bodies to show.",
)
@opt.batch_size_opt
@opt.max_batch_bytes_opt
@opt.format_opt
def preview_command(
    sources: tuple[str, ...],
    mapping_path: Path,
    count: int,
    batch_size: int | None,
    max_batch_bytes: int | None,
    fmt: str | None,
) -> None:
    """Print the first N request bodies, pretty-printed, exactly as `run` would send them."""
    from importer.pipeline import preview

    try:
        options = import_options(
            sources,
            mapping_path,
            settings={
                "batch_size": batch_size,
                "max_batch_bytes": max_batch_bytes,
                "allow_empty": True,
            },
            format=fmt,
        )
        bodies = preview(options, count)
    except ImporterError as exc:
        fail(str(exc), exc.exit_code)
    for index, body in enumerate(bodies):
        data = json.loads(body)
        console().print(
            f"# request {index + 1}: {len(data['batch'])} items, {len(body):,} bytes", markup=False
        )
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
