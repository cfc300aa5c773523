"""`mapping init`, `mapping schema` and `mapping check`: writing and checking mapping files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from importer.cli import options as opt
from importer.cli.output import console, fail
from importer.errors import ImporterError


@click.group(context_settings=opt.CONTEXT)
def mapping() -> None:
    """Write, describe and check mapping files."""


@mapping.command(name="schema", context_settings=opt.CONTEXT)
def mapping_schema() -> None:
    """Print the JSON Schema of mapping files (for editors with a YAML language server).

    Save it (`fyno-import mapping schema > fyno-import.schema.json`) and start a mapping with
    `# yaml-language-server: $schema=fyno-import.schema.json` for completion and checks.
    """
    from importer.mapping import mapping_json_schema

    click.echo(json.dumps(mapping_json_schema(), indent=2, ensure_ascii=False))


@mapping.command(name="check", context_settings=opt.CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("source", required=False)
@opt.format_opt
def mapping_check(file: Path, source: str | None, fmt: str | None) -> None:
    """Check mapping FILE (keys, values, operator and type combinations) and, given SOURCE, that
    the source has every column it reads with a usable type. Reads no rows; exit 0 or 2.
    """
    from importer.mapping.tools import check_mapping

    try:
        message = check_mapping(file, source, fmt)
    except ImporterError as exc:
        fail(str(exc), exc.exit_code)
    console().print(message, markup=False)


@mapping.command(name="init", context_settings=opt.CONTEXT)
@click.argument("source")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the mapping to this file [default: stdout].",
)
@click.option("--force", is_flag=True, help="With -o: overwrite an existing file.")
@click.option(
    "--id-column", default=None, help="The distinct_id column [default: guessed, e.g. user_id]."
)
@opt.format_opt
def mapping_init(
    source: str, output: Path | None, force: bool, id_column: str | None, fmt: str | None
) -> None:
    """Print a commented starter mapping from SOURCE's columns (types guessed from the data).

    Every column is listed with op: set; comments show a sample value, empty cells and list-like
    columns. Review it, then `fyno-import validate SOURCE -m FILE`.
    """
    from importer.mapping.tools import starter_mapping

    if output is not None and output.exists() and not force:
        fail(f"{output} exists: pass --force to overwrite it, or choose another file")
    try:
        text = starter_mapping(
            source, fmt=fmt, id_column=id_column, mapping_name=str(output) if output else None
        )
    except ImporterError as exc:
        fail(str(exc), exc.exit_code)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
        console().print(f"wrote {output}", markup=False)
