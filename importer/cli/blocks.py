"""A report as a few plain blocks (a title, sections, fields, tables, steps), and two ways to print
it: aligned plain text for the terminal, and Markdown for pasting into a ticket.

Plain text on purpose, not rich tables: a report is read in a terminal, a pipe, a log or an
e-mail, and a table that wraps at the terminal's width would break the commands it shows.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

WIDTH: Final = 100  # of a line of text (tables and commands are never wrapped)
_INDENT: Final = "  "
_GAP: Final = "  "  # between two table columns


@dataclass(frozen=True, slots=True)
class Title:
    """What the report is about: its first line."""

    text: str


@dataclass(frozen=True, slots=True)
class Section:
    """The heading of a part of the report."""

    text: str


@dataclass(frozen=True, slots=True)
class Fields:
    """Labelled values, one per line (a value may take several lines)."""

    rows: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Table:
    """Columns with a header; the columns in ``right`` are numbers, aligned right."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = frozenset()
    indent: int = 1


@dataclass(frozen=True, slots=True)
class Text:
    """A sentence or two."""

    text: str
    indent: int = 1


@dataclass(frozen=True, slots=True)
class Step:
    """Something to do, with the command that does it (if one does)."""

    text: str
    command: str | None = None
    indent: int = 1


@dataclass(frozen=True, slots=True)
class Command:
    """A command to paste, on a line of its own (never wrapped)."""

    text: str
    indent: int = 2


Block = Title | Section | Fields | Table | Text | Step | Command


@dataclass
class Document:
    """Blocks in order; ``add`` appends and returns the document."""

    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Document:
        """Append blocks."""
        self.blocks.extend(blocks)
        return self


# -- plain text ---------------------------------------------------------------------------------


def as_text(document: Document) -> str:
    """The document as aligned plain text, ending with a newline."""
    lines: list[str] = []
    for block in document.blocks:
        match block:
            case Title(text=text):
                lines.append(text)
            case Section(text=text):
                lines += ["", text]
            case Fields(rows=rows):
                lines += _text_fields(rows)
            case Table():
                lines += _text_table(block)
            case Text(text=text, indent=indent):
                lines += _wrap(text, _INDENT * indent)
            case Step(text=text, command=command, indent=indent):
                lines += _wrap(text, _INDENT * indent)
                if command is not None:
                    lines.append(_INDENT * (indent + 1) + command)
            case Command(text=text, indent=indent):
                lines.append(_INDENT * indent + text)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _wrap(text: str, indent: str) -> list[str]:
    """A sentence on lines of at most ``WIDTH`` characters."""
    return textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _text_fields(rows: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    width = max((len(label) for label, _ in rows), default=0)
    out = []
    for label, values in rows:
        for index, value in enumerate(values or ("",)):
            shown = label if index == 0 else ""
            out.append(f"{_INDENT}{shown:<{width}}{_GAP}{value}")
    return out


def _text_table(table: Table) -> list[str]:
    everything = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in everything) for i in range(len(table.header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in table.right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return _INDENT * table.indent + _GAP.join(cells)

    return [line(row) for row in everything]


# -- Markdown -----------------------------------------------------------------------------------

_MD_SPECIAL: Final = str.maketrans({"\\": "\\\\", "*": "\\*", "|": "\\|", "<": "&lt;", "[": "\\["})
_MD_UNDERSCORE: Final = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md(text: str) -> str:
    """Text with Markdown's special characters escaped, to read as written.

    Backticks are kept: the report writes commands and options in them, as code. An underscore
    inside a word (``sample_data``) is not emphasis in GitHub's Markdown, so only others are.
    """
    return _MD_UNDERSCORE.sub(r"\\_", text.translate(_MD_SPECIAL))


def as_markdown(document: Document) -> str:
    """The document as GitHub-flavoured Markdown, ending with a newline."""
    parts: list[str] = []
    for block in document.blocks:
        match block:
            case Title(text=text):
                parts.append(f"## {md(text)}")
            case Section(text=text):
                parts.append(f"### {md(text)}")
            case Fields(rows=rows):
                parts.append("\n".join(f"- **{md(k)}**: {md(' '.join(v))}" for k, v in rows))
            case Table():
                parts.append(_md_table(block))
            case Text(text=text):
                parts.append(md(text))
            case Step(text=text, command=command):
                parts.append(f"- {md(text)}" + (f" `{command}`" if command else ""))
            case Command(text=text):
                parts.append(f"```sh\n{text}\n```")
    return "\n\n".join(_joined(parts)) + "\n"


def _md_table(table: Table) -> str:
    rule = ["---:" if i in table.right else "---" for i in range(len(table.header))]
    rows = [[md(cell) for cell in table.header], rule, *[[md(c) for c in r] for r in table.rows]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _joined(parts: list[str]) -> list[str]:
    """Consecutive list items as one list, and consecutive commands as one code block."""
    out: list[str] = []
    for part in parts:
        if out and part.startswith("- ") and out[-1].startswith("- "):
            out[-1] += "\n" + part
        elif out and part.startswith("```sh\n") and out[-1].startswith("```sh\n"):
            out[-1] = out[-1].removesuffix("\n```") + part.removeprefix("```sh")
        else:
            out.append(part)
    return out
