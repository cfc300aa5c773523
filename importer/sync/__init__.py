"""Incremental sync: each run sends, per profile and property, only what changed since the last
delivery to the same target (``run --changed-only``).

Owns the state (``state``: a hash per profile and mapped property of the value last accepted,
partitioned by profile, written as a whole new generation and switched to atomically), where it
lives (``files``: a directory or an object-store prefix, with its lock), the comparison of an
import with it (``diff``, all polars, partition by partition, so millions of profiles fit in
bounded memory) and one run's use of it (``run``). It knows the mapping and the transform's
per-row contributions; it knows nothing of HTTP, chunks or the ledger (the pipeline tells it
which profiles' chunks were not accepted).
"""

from importer.sync.files import state_files
from importer.sync.run import Comparison, SyncRun
from importer.sync.state import Manifest, SyncState

__all__ = ["Comparison", "Manifest", "SyncRun", "SyncState", "state_files"]
