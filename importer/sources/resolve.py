"""SOURCE arguments → the files (or objects) of one import, in order.

A directory is not searched recursively; in a directory or glob, hidden files, marker files
(``_SUCCESS``) and files of other formats are ignored, each with a notice; matches are taken in
name order.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import re
from pathlib import Path

from importer.errors import SourceError
from importer.events import FileIgnored, IgnoreReason
from importer.mapping import SourceOptions
from importer.sources.source import Format, Source, is_remote

_SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".csv.gz": "csv",
    ".tsv.gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = re.compile(r"[*?\[]")


def _suffix_format(name: str) -> Format | None:
    lower = name.lower()
    for suffix, fmt in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return fmt
    return None


def resolve_sources(
    args: list[str], *, format: Format | None = None, options: SourceOptions | None = None
) -> tuple[list[Source], list[FileIgnored]]:
    """Expand SOURCE arguments into files, in order; returns (sources, the files left out)."""
    options = options or SourceOptions()
    sources: list[Source] = []
    notices: list[FileIgnored] = []

    def add(name: str, explicit: bool) -> None:
        fmt = format or _suffix_format(name)
        if fmt is None:
            if explicit:
                raise SourceError(
                    f"{name}: unknown format (expected .csv, .tsv, .csv.gz, .parquet or .pq)",
                    hint="pass --format csv or --format parquet",
                )
            notices.append(FileIgnored(name, IgnoreReason.NOT_DATA))
            return
        sources.append(Source(name=name, format=fmt, options=options))

    for arg in args:
        if is_remote(arg):
            if _GLOB_CHARS.search(arg) or arg.endswith("/"):  # a glob, or a prefix as a folder
                from importer.sources.remote import expand_remote_glob

                for name in expand_remote_glob(arg, options.storage_options):
                    if name.rsplit("/", 1)[-1].startswith((".", "_")):
                        notices.append(FileIgnored(name, IgnoreReason.HIDDEN))
                        continue
                    add(name, explicit=False)
            else:
                add(arg, explicit=True)
            continue
        path = Path(arg)
        if path.is_dir():
            for entry in sorted(path.iterdir(), key=lambda p: p.name):
                if entry.name.startswith((".", "_")) or not entry.is_file():
                    notices.append(FileIgnored(str(entry), IgnoreReason.HIDDEN))
                    continue
                add(str(entry), explicit=False)
        elif _GLOB_CHARS.search(arg) and not path.exists():
            # the whole path: a glob over dated folders (2024-01-*/users.csv) is in date order
            for name in sorted(globlib.glob(arg)):
                if Path(name).name.startswith((".", "_")) or not Path(name).is_file():
                    notices.append(FileIgnored(name, IgnoreReason.HIDDEN))
                    continue
                add(name, explicit=False)
        elif path.exists():
            if _is_fifo(path):
                raise SourceError(
                    f"{arg}: is a pipe (FIFO); a source is read twice (validated, then sent)",
                    hint="write the data to a file first and import the file",
                )
            if not path.is_file():
                raise SourceError(f"{arg}: not a regular file")
            add(arg, explicit=True)
        else:
            raise SourceError(f"{arg}: no such file or directory")
    return sources, notices


def _is_fifo(path: Path) -> bool:
    with contextlib.suppress(OSError):
        return path.is_fifo()
    return False
