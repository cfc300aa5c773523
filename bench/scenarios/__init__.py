"""The measurements. Each scenario prints one line of figures and adds rows to the report.

common      Plan, Row, Results; running the importer and the ideal client
throughput  a. prep, b. baseline, c. end-to-end, g. computed values
network     d. latency, e. rate limit
memory      f. memory (and the rows/s and RSS plot's points)
sync        h. incremental sync (--changed-only)
requests    i. full requests (one file against 100 and 1,000 part files)
stages      j. CPU per row by stage
"""

from __future__ import annotations

from collections.abc import Callable

from bench.scenarios.common import Plan, Results, Row, human, rate
from bench.scenarios.memory import memory
from bench.scenarios.network import latency, rate_limit
from bench.scenarios.requests import full_requests
from bench.scenarios.stages import stages
from bench.scenarios.sync import sync
from bench.scenarios.throughput import baseline, end_to_end, expressions, prep

SCENARIOS: dict[str, Callable[[Results], None]] = {
    "prep": prep,
    "baseline": baseline,
    "e2e": end_to_end,
    "stages": stages,
    "latency": latency,
    "rate": rate_limit,
    "memory": memory,
    "sync": sync,
    "requests": full_requests,
    "expr": expressions,
}

__all__ = ["SCENARIOS", "Plan", "Results", "Row", "human", "rate"]
