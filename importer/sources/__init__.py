"""Sources: SOURCE arguments → files and objects → polars batches with their row numbers.

Owns finding the files of an import (``resolve``), reading one of them in bounded batches with a
1-based ``__row__`` column and its fingerprint (``source``), finding the CSV records whose field
count is not the header's and where records end (``records``), reading a local CSV a window of
records at a time (``windows``), a Parquet file's row-group sizes from its footer (``footer``),
locating what makes a CSV unreadable (``problems``) and object stores (``remote``). It knows
the mapping's reader options only, never its properties, and nothing of items, chunks or
sending.
"""

from importer.sources.resolve import resolve_sources
from importer.sources.source import (
    RAGGED,
    RAGGED_COLUMN,
    REMOTE_SCHEMES,
    ROW,
    Format,
    Source,
    is_remote,
)

__all__ = [
    "RAGGED",
    "RAGGED_COLUMN",
    "REMOTE_SCHEMES",
    "ROW",
    "Format",
    "Source",
    "is_remote",
    "resolve_sources",
]
