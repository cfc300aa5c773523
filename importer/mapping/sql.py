"""The mapping's SQL: ``expr:`` values and ``filter:`` conditions, in polars' SQL dialect.

Only parsing lives here (a text that is not SQL is a mapping error when the file loads); what
an expression means for a source's columns is the transform's business. polars is imported when
a mapping with SQL is loaded, never for ``--help`` or ``mapping schema``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def parse_sql(text: str) -> pl.Expr:
    """The polars expression of an SQL text; ValueError (for the mapping loader) if it is none."""
    import polars as pl

    try:
        return pl.sql_expr(text)
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"is not a polars SQL expression: {first}") from None


def sql_columns(text: str) -> list[str]:
    """The source columns an SQL text reads, in order of first use, without repeats."""
    return list(dict.fromkeys(parse_sql(text).meta.root_names()))
