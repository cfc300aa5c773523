"""The pipeline: wiring the stages into the library's commands, and the summary they fill.

    sources ─▶ transform ─▶ chunker ─▶ send ─▶ ledger

Owns ``validate`` (pass 1 alone), ``preview``, ``run_import`` (pass 1, then pass 2 sent from a
reader thread; resumable through the ledger) and ``retry_failed`` (from the ledger alone), with
their options and ``RunSummary``. It reports through typed events (``importer.events``) and
raises typed errors (``importer.errors``); it never prints and never words advice for a terminal.
"""

from importer.pipeline.building import preview
from importer.pipeline.options import ImportOptions, RetryOptions
from importer.pipeline.retrying import retry_failed
from importer.pipeline.running import run_import
from importer.pipeline.summary import RunSummary, SourceSummary
from importer.pipeline.validating import validate

__all__ = [
    "ImportOptions",
    "RetryOptions",
    "RunSummary",
    "SourceSummary",
    "preview",
    "retry_failed",
    "run_import",
    "validate",
]
