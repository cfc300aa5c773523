"""The human summary a command ends with, on stderr."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from importer.cli.hints import closing_hint

if TYPE_CHECKING:
    from importer.pipeline import RunSummary


def _counts(summary: RunSummary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("run", summary.run_id or ("dry run" if summary.dry_run else "-")),
        ("rows read", f"{summary.rows_read:,}"),
        ("rows valid", f"{summary.rows_valid:,}"),
        ("rows rejected", f"{summary.rows_rejected:,}"),
    ]
    if summary.rows_filtered:
        rows.append(("rows filtered out", f"{summary.rows_filtered:,}"))
    if summary.command == "validate" or summary.dry_run:
        return [
            *rows,
            ("items to send", f"{summary.items_total:,}"),
            ("chunks to send", f"{summary.chunks_total:,}"),
            ("bytes to send", f"{summary.bytes_total:,}"),
            *_sync_counts(summary),
        ]
    rows += [
        ("items sent", f"{summary.items_sent:,}"),
        ("chunks", f"{summary.chunks_total:,}"),
        ("  accepted", f"{summary.chunks_accepted:,}"),
        ("  skipped (done before)", f"{summary.chunks_skipped:,}"),
        ("  failed", f"{summary.chunks_failed:,}"),
        ("  ambiguous", f"{summary.chunks_ambiguous:,}"),
        ("item errors", f"{summary.item_errors:,}"),
        ("retries", f"{summary.retries:,}"),
    ]
    if summary.profiles_superseded is not None:
        rows.append(("profiles superseded", f"{summary.profiles_superseded:,}"))
    return rows + _sync_counts(summary)


def _sync_counts(summary: RunSummary) -> list[tuple[str, Any]]:
    """The lines of --changed-only: what changed, what it saved, where the state is."""
    if summary.state is None:
        return []
    saved = max(0, summary.chunks_full - summary.chunks_total)
    rows: list[tuple[str, Any]] = [
        ("rows unchanged", f"{summary.rows_unchanged:,}"),
        ("profiles changed", f"{summary.profiles_changed:,}"),
        ("requests saved", f"{saved:,} of {summary.chunks_full:,}"),
    ]
    if summary.profiles_missing:
        rows.append(("profiles missing", f"{summary.profiles_missing:,}"))
    advanced = {True: "", False: " (not advanced: the next run sends these again)", None: ""}
    rows.append(("state", summary.state + advanced[summary.state_advanced]))
    return rows


def print_summary(summary: RunSummary, console: Console) -> None:
    """The counts table, the profiles shown by --emulator, and where to look next."""
    table = Table(title=f"fyno-import {summary.command}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = _counts(summary)
    if summary.sources_skipped:
        rows.append(("sources skipped", f"{summary.sources_skipped:,}"))
    rows.append(("elapsed", f"{summary.elapsed_s:.1f} s"))
    if summary.rejects:
        rows.append(("rejects", summary.rejects))
    if summary.ledger:
        temporary = (
            " (temporary: pass --ledger FILE to keep it)" if summary.ledger_temporary else ""
        )
        rows.append(("ledger", summary.ledger + temporary))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for distinct_id, profile in summary.profiles.items():
        console.print(
            f"profile {distinct_id}: {json.dumps(profile, ensure_ascii=False)}", markup=False
        )
    hint = closing_hint(summary)
    if hint is not None:
        console.print(hint, markup=False)
