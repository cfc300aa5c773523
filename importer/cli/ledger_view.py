"""`ledger show` for a person: the history, and a run's report, as blocks (``blocks``).

The library's report (``Ledger.run_report``) and history lines are plain data; this module picks
what a person needs the morning after a run, in words: no JSON object, and no hash longer than a
12-character chunk id (which ``ledger resolve`` takes as it is).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final

from importer.cli import hints
from importer.cli.blocks import Command, Document, Fields, Section, Step, Table, Text, Title
from importer.ledger.history import parse_stamp
from importer.model import ChunkStatus

SHORT_ID: Final = 12  # characters of a chunk id shown (ledger resolve takes such a prefix)
AMBIGUOUS_SHOWN: Final = 20  # ambiguous chunks listed one by one; export lists them all
_SETTINGS_WIDTH: Final = 88
_NUMBERS: Final = frozenset(range(5, 11))  # history columns holding counts


# -- words for times and counts -----------------------------------------------------------------


def count(n: int, thing: str, plural: str | None = None) -> str:
    """``1 chunk``, ``2 chunks``, ``1,000 items``."""
    return f"{n:,} {thing if n == 1 else plural or thing + 's'}"


def ago(stamp: str, now: datetime) -> str:
    """How long before ``now``: ``just now``, ``12 min ago``, ``9 h ago``, ``3 days ago``."""
    seconds = (now - parse_stamp(stamp)).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def took(seconds: float | None) -> str:
    """A duration: ``0.4 s``, ``12 s``, ``3 min 4 s``, ``2 h 5 min``; ``running`` when None."""
    if seconds is None:
        return "running"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def utc(stamp: str, *, seconds: bool = True) -> str:
    """``2026-11-29 23:45:00`` (UTC) from a ledger timestamp."""
    return parse_stamp(stamp).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


# -- the history ---------------------------------------------------------------------------------

_HISTORY_HEADER: Final = (
    "run",
    "kind",
    "started (UTC)",
    "ago",
    "took",
    "sources",
    "rows",
    "items sent",
    "accepted",
    "failed",
    "ambiguous",
    "status",
)


def history_document(
    lines: Sequence[dict[str, Any]], *, ledger: str, size: int, now: datetime
) -> Document:
    """The history table (newest first) and where to look next."""
    shown = f"the latest {len(lines)} of {size}" if len(lines) < size else "every run and retry"
    rows = tuple(
        (
            line["run_id"],
            line["kind"],
            utc(line["started_at"], seconds=False),
            ago(line["started_at"], now).removesuffix(" ago"),
            took(line["duration_s"]),
            _number(line["sources"]),
            _number(line["rows_read"]),
            _number(line["items_sent"]),
            _number(line["chunks_accepted"]),
            _number(line["chunks_failed"]),
            _number(line["chunks_ambiguous"]),
            line["status"],
        )
        for line in lines
    )
    doc = Document([Title(f"Runs in {ledger}, newest first ({shown})")])
    doc.add(Table(_HISTORY_HEADER, rows, right=_NUMBERS))
    doc.add(Section("Next"), Step("a run's report:", hints.show_command(ledger, "RUN_ID")))
    if len(lines) < size:
        doc.add(Step("every run and retry:", hints.show_command(ledger) + " --all"))
    return doc


def empty_document(ledger: str) -> Document:
    """What an existing ledger without runs shows."""
    return Document(
        [
            Title(f"{ledger} holds no runs yet"),
            Section("Next"),
            Step(
                "record one:",
                hints.command("run", "SOURCE...", "--mapping", "FILE", "--ledger", ledger),
            ),
        ]
    )


# -- a run's report ------------------------------------------------------------------------------


def report_document(report: dict[str, Any], *, ledger: str, now: datetime) -> Document:
    """A run's report: header, sources, chunks, retries, failures, ambiguous chunks, next."""
    title = "Run" if report["kind"] == "run" else f"{report['kind'].capitalize()} run"
    doc = Document([Title(f"{title} {report['run_id']}"), Fields(tuple(_header(report, now)))])
    doc.add(Section("Sources"), _sources_table(report))
    doc.add(Section("Chunks"), *_chunks(report))
    retries = [line for line in report["history"] if line["kind"] == "retry"]
    if retries:
        doc.add(Section("Retries"), _retries_table(retries, now))
    if report["failures"]:
        doc.add(Section("Failures, by cause"), *_failures(report))
    if report["ambiguous"]:
        doc.add(Section("Ambiguous chunks"), *_ambiguous(report, ledger))
    steps = list(_next_steps(report, ledger))
    if steps:
        doc.add(Section("Next"), *steps)
    return doc


def _verdict(report: dict[str, Any]) -> str:
    """The status, and what went wrong in a few words."""
    chunks, line = report["chunks"], report["history"][0]
    problems = [
        count(chunks["failed"], "chunk") + " failed" if chunks["failed"] else "",
        count(chunks["refused"], "chunk") + " refused" if chunks["refused"] else "",
        count(chunks["ambiguous"], "chunk") + " ambiguous" if chunks["ambiguous"] else "",
        count(report["item_errors"], "item error") if report["item_errors"] else "",
        count(chunks["in_flight"] + chunks["pending"], "chunk") + " unsettled"
        if chunks["in_flight"] + chunks["pending"]
        else "",
        count(line["rows_rejected"], "row") + " rejected" if line["rows_rejected"] else "",
    ]
    said = [p for p in problems if p]
    if not said and report["status"] == "finished":
        said = [f"all {count(line['chunks_total'], 'chunk')} accepted"]
    return ", ".join([report["status"], *said])


def _header(report: dict[str, Any], now: datetime) -> Iterator[tuple[str, tuple[str, ...]]]:
    yield "status", (_verdict(report),)
    error = (report["summary"] or {}).get("error")
    if error:
        yield "error", tuple(error.splitlines())
    started = report["created_at"]
    yield (
        "started",
        (f"{utc(started)} UTC ({ago(started, now)}), took {took(report['duration_s'])}",),
    )
    where = report["base_url"], report["workspace"], report["api_version"]
    yield "target", ("{}, workspace {}, version {}".format(*where),)
    yield "settings", tuple(_wrapped(_settings(report), _SETTINGS_WIDTH))
    if report["settings"].get("changed_only") and report["summary"]:
        yield "sync", tuple(_wrapped(_sync(report["summary"]), _SETTINGS_WIDTH))


def _sync(summary: dict[str, Any]) -> list[str]:
    """What a changed-only run found changed, and what became of its state."""
    words = [
        count(summary.get("profiles_changed", 0), "profile") + " changed",
        count(summary.get("rows_unchanged", 0), "row") + " unchanged",
    ]
    if summary.get("profiles_missing"):
        words.append(count(summary["profiles_missing"], "profile") + " missing (unset)")
    advanced = summary.get("state_advanced")
    if advanced is not None:  # where the state is, the settings say
        words.append("state advanced" if advanced else "state not advanced (sent again next run)")
    return words


def _wrapped(pieces: Sequence[str], width: int) -> Iterator[str]:
    """Comma-separated pieces on lines of at most ``width`` characters, never split."""
    line = ""
    for piece in pieces:
        if line and len(line) + 2 + len(piece) > width:
            yield line + ","
            line = piece
        else:
            line = f"{line}, {piece}" if line else piece
    yield line


def _setting(name: str, value: Any) -> str | None:
    """One setting in words; None for an option left off."""
    words = name.replace("_", " ")
    if name == "rate_limit":
        return f"rate limit {value:g}/s" if value else "rate limit none"
    if name == "timeout":
        return f"timeout {value:g} s"
    if isinstance(value, bool):
        return words if value else None
    if isinstance(value, int | float):
        return f"{words} {value:,}" if isinstance(value, int) else f"{words} {value:g}"
    if isinstance(value, list | tuple):
        return f"{words} {', '.join(map(str, value))}" if value else None
    if isinstance(value, dict):
        inner = ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
        return f"{words} ({inner})" if inner else None
    return None if value is None else f"{words} {value}"


def _settings(report: dict[str, Any]) -> list[str]:
    from importer.config.settings import Settings

    settings = dict(report["settings"])
    if not settings.get("changed_only"):  # the sync settings mean nothing without it
        for name in ("missing", "max_missing_rate"):
            settings.pop(name, None)
    known = [name for name in Settings.model_fields if name in settings]  # as --help orders them
    names = known + sorted(set(settings) - set(known))
    words = [_setting(name, settings[name]) for name in names]
    if report["shard"]:
        words.append(f"shard {report['shard']}")
    return [w for w in words if w]


def _rows_of(report: dict[str, Any], index: int, source: dict[str, Any]) -> tuple[str, str]:
    """A source's rows read and rejected; from the run's summary while it is not chunked."""
    validated = (report["summary"] or {}).get("sources") or []
    if source["status"] != "pending":
        return f"{source['rows_read']:,}", f"{source['rows_rejected']:,}"
    if len(validated) != len(report["sources"]):
        return "—", "—"
    counts = validated[index]
    return f"{counts.get('rows_read', 0):,}", f"{counts.get('rows_rejected', 0):,}"


def _sources_table(report: dict[str, Any]) -> Table:
    rows = []
    for index, source in enumerate(report["sources"]):
        total = "?" if source["chunks_total"] is None else f"{source['chunks_total']:,}"
        accepted = f"{source['chunks_accepted']:,} of {total}"
        by = source["imported_by"]
        if source["status"] == "skipped":
            accepted, imported = "—", f"skipped: imported by run {by}" if by else "skipped"
        elif source["imported"]:
            imported = "yes"
        else:
            imported = f"no (imported by run {by})" if by else "no"
        rows.append((source["source"], *_rows_of(report, index, source), accepted, imported))
    header = ("source", "rows read", "rejected", "chunks accepted", "imported")
    return Table(header, tuple(rows), right=frozenset({1, 2, 3}))


# the chunk statuses in the order a person asks about them: what landed, then what did not
_CHUNK_ORDER: Final = (
    ChunkStatus.ACCEPTED,
    ChunkStatus.FAILED,
    ChunkStatus.REFUSED,
    ChunkStatus.AMBIGUOUS,
    ChunkStatus.ABANDONED,
    ChunkStatus.IN_FLIGHT,
    ChunkStatus.PENDING,
)


def _chunks(report: dict[str, Any]) -> Iterator[Table | Text]:
    counts = report["chunks"]
    order = [*_CHUNK_ORDER, *(status for status in counts if status not in _CHUNK_ORDER)]
    rows = tuple(
        (status.replace("_", " "), f"{counts[status]:,}") for status in order if counts.get(status)
    )
    if rows:
        yield Table(("status", "chunks"), rows, right=frozenset({1}))
    resent = report["attempts"] - report["chunks_recorded"]
    yield Text(
        f"{count(report['items'], 'item')} in {count(report['chunks_recorded'], 'chunk')},"
        f" {count(report['attempts'], 'request')}"
        + (f" ({resent:,} of them resent)" if resent > 0 else "")
    )


def _retries_table(retries: Sequence[dict[str, Any]], now: datetime) -> Table:
    header = ("started (UTC)", "ago", "took", "chunks", "accepted", "failed", "ambiguous")
    rows = tuple(
        (
            utc(r["started_at"], seconds=False),
            ago(r["started_at"], now).removesuffix(" ago"),
            took(r["duration_s"]),
            f"{r['chunks_total']:,}",
            f"{r['chunks_accepted']:,}",
            f"{r['chunks_failed']:,}",
            f"{r['chunks_ambiguous']:,}",
            r["status"] + (", ambiguous ones too" if r["include_ambiguous"] else ""),
        )
        for r in retries
    )
    return Table((*header, "status"), rows, right=frozenset(range(3, 7)))


_KIND_WORDS: Final = {
    "failed": "failed until the tries ran out; `retry` resends them",
    "refused": "refused by the API; resending cannot help: fix the rows",
    "item_error": "items the API did not take in accepted chunks; fix the rows",
}


def _place(where: dict[str, Any]) -> str:
    return f"{where['source']}:{where['row']}"


def _failures(report: dict[str, Any]) -> Iterator[Text | Table]:
    for group in report["failures"]:
        size = f"{count(group['chunks'], 'chunk')}, {count(group['items'], 'item')}"
        yield Text(group["cause"])
        yield Text(f"{size}: {_KIND_WORDS[group['kind']]}", indent=2)
        examples = group["examples"]
        if examples:
            rows = tuple((_place(e), str(e["distinct_id"]) or "(empty)") for e in examples)
            yield Table(("first rows", "distinct_id"), rows, indent=2)
        if group["items"] > len(examples):
            yield Text(f"… and {group['items'] - len(examples):,} more", indent=2)


def _ambiguous(report: dict[str, Any], ledger: str) -> Iterator[Text | Command]:
    yield Text(
        "They may have been applied. Check each in Fyno, then close it: with its command below"
        " when its updates are there, with --as abandoned instead when they are not."
    )
    for chunk in report["ambiguous"][:AMBIGUOUS_SHOWN]:
        first, last = chunk["first"], chunk["last"]
        rows = f"{_place(first)} to " + (
            str(last["row"]) if last["source"] == first["source"] else _place(last)
        )
        short = chunk["chunk_id"][:SHORT_ID]
        yield Text(f"chunk {short}: {count(chunk['items'], 'item')}, rows {rows}")
        yield Text(chunk["cause"], indent=2)
        yield Command(hints.resolve_command(ledger, report["run_id"], short))
    hidden = len(report["ambiguous"]) - AMBIGUOUS_SHOWN
    if hidden > 0:
        yield Text(f"… and {count(hidden, 'more chunk')}: `ledger export` lists every one")


def _next_steps(report: dict[str, Any], ledger: str) -> Iterator[Step]:
    run_id, chunks, status = report["run_id"], report["chunks"], report["status"]
    if status == "running":
        yield Step("it is still running: look again once it ends")
        return
    if status in ("interrupted", "aborted"):
        # a resumed run sends what it never sent and what failed; retry only the latter
        yield Step("resume it: run the same `fyno-import run` command again")
    elif chunks["failed"] + chunks["pending"] + chunks["in_flight"]:
        what = count(chunks["failed"] + chunks["pending"] + chunks["in_flight"], "chunk")
        yield Step(f"resend the {what} not accepted:", hints.retry_command(ledger, run_id))
    if chunks["refused"] or report["item_errors"]:
        yield Step("list the refused items:", hints.export_command(ledger, run_id))
    if chunks["ambiguous"]:
        them = "it" if chunks["ambiguous"] == 1 else "them"
        yield Step(
            f"close the {count(chunks['ambiguous'], 'ambiguous chunk')} above, or resend {them}"
            f" (a $add in {them} may be applied twice):",
            hints.retry_command(ledger, run_id, include_ambiguous=True),
        )
