"""The mapping file: which columns (or expressions, or constants) feed which Fyno property
operators, and how, and which rows are sent at all (``filter``).

Owns the model of a mapping (``model``), reading a file into it with errors that name file, key
and line (``loader``), and the tooling around it: starter mappings, checks and the generated key
reference (``tools``). It knows nothing of reading rows, building requests or sending them.
"""

from importer.mapping.loader import load_mapping
from importer.mapping.model import (
    OPERATOR_KEYS,
    OPERATORS,
    SPLIT_OPERATORS,
    ComputedId,
    Mapping,
    Operator,
    PropertySpec,
    SourceOptions,
    ValueType,
    mapping_json_schema,
)

__all__ = [
    "OPERATORS",
    "OPERATOR_KEYS",
    "SPLIT_OPERATORS",
    "ComputedId",
    "Mapping",
    "Operator",
    "PropertySpec",
    "SourceOptions",
    "ValueType",
    "load_mapping",
    "mapping_json_schema",
]
