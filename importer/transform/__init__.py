"""The transform: mapping + a batch of source rows → item JSON for the valid rows, and rejects.

Owns the value rules (``values``: types, the 255-character limit, dates, booleans, numbers) and
their combination into Fyno batch items (``transformer``), all as polars expressions with no
Python loop over rows. It knows nothing of files (it gets batches), chunks or sending.
"""

from importer.transform.transformer import (
    BODY_OVERHEAD,
    ITEM_SCHEMA,
    REJECT_SCHEMA,
    Transformer,
    TransformResult,
)
from importer.transform.values import MAX_STRING, default_type

__all__ = [
    "BODY_OVERHEAD",
    "ITEM_SCHEMA",
    "MAX_STRING",
    "REJECT_SCHEMA",
    "TransformResult",
    "Transformer",
    "default_type",
]
