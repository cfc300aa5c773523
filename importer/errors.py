"""The importer's exceptions, one tree under ``ImporterError``.

    ImporterError                  everything the importer raises on purpose
    ├── UsageError                 bad options or environment            (exit 2)
    │   └── InsecureURLError       plain http:// to a non-loopback host    (exit 2)
    ├── MappingError               the mapping file is wrong             (exit 2)
    ├── SourceError                a source is missing, unreadable, empty (exit 2)
    │   └── EmptySourceError       no header and no rows (skipped with --allow-empty)
    ├── LedgerError                the ledger cannot be used              (exit 2)
    │   ├── LedgerLockedError      another run holds it
    │   ├── LedgerCorruptError     not a ledger, or damaged
    │   ├── LedgerSchemaError      written by a newer fyno-import
    │   └── RunConflictError       unfinished run with other settings, or all imported
    ├── StateError                 the sync state cannot be used          (exit 2)
    │   ├── StateLockedError       another run holds it
    │   └── StateMismatchError     written for another base URL, workspace, version or shard
    ├── LedgerWriteError           a record could not be written          (exit 3)
    ├── StateWriteError            the sync state could not be written    (exit 3)
    ├── RejectRateError            too many invalid rows                  (exit 3)
    ├── MissingRateError           too many profiles missing (--missing unset) (exit 3)
    ├── AuthError                  the API refused the key (401/403)      (exit 3)
    └── InterruptedRun             Ctrl-C or SIGTERM                      (exit 3)

``exit_code`` on each class is what the CLI exits with; messages never contain the API key.
"""

from __future__ import annotations


class ImporterError(Exception):
    """Base of every error the importer raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(ImporterError):
    """Bad options, arguments or environment."""


class InsecureURLError(UsageError):
    """The key would travel over plain http:// to a host that is not loopback."""


class MappingError(ImporterError):
    """The mapping file is unreadable or invalid; the message names file, key and line."""


class SourceError(ImporterError):
    """A source is missing, unreadable, of an unknown format or without data rows."""


class EmptySourceError(SourceError):
    """A source with no header and no rows: an error, or skipped with ``--allow-empty``."""


class LedgerError(ImporterError):
    """The ledger cannot be used for this run."""


class LedgerLockedError(LedgerError):
    """Another run holds the ledger."""


class LedgerCorruptError(LedgerError):
    """The ledger file is not a fyno-import ledger or is damaged."""


class LedgerSchemaError(LedgerError):
    """The ledger was written by a newer fyno-import."""


class RunConflictError(LedgerError):
    """An unfinished run has other settings, or every source is already imported."""


class StateError(ImporterError):
    """The incremental-sync state cannot be used (unreadable, damaged, of a newer format)."""


class StateLockedError(StateError):
    """Another run holds the state."""


class StateMismatchError(StateError):
    """The state was written for another base URL, workspace, version or shard."""


class StateWriteError(ImporterError):
    """The state could not be written at the end: it was not advanced (nothing is lost)."""

    exit_code = 3


class MissingRateError(ImporterError):
    """More of the state's profiles are missing from the import than --max-missing-rate allows."""

    exit_code = 3


class LedgerWriteError(ImporterError):
    """A ledger record could not be written; nothing is sent without its record."""

    exit_code = 3


class RejectRateError(ImporterError):
    """More rows were invalid than --max-reject-rate allows."""

    exit_code = 3


class AuthError(ImporterError):
    """The API refused the key or workspace (401/403)."""

    exit_code = 3


class InterruptedRun(ImporterError):
    """The run was stopped by Ctrl-C or SIGTERM."""

    exit_code = 3
