"""A local Fyno: the user-property API served over real HTTP, with faults on demand.

Tests, benchmarks and ``make demo`` import into this server through a real socket, so it answers
the way ``fyno-api.md`` says Fyno does, and can misbehave the ways a real network does. It must
not know the importer: nothing here imports from the rest of ``importer``.

Endpoints::

    POST /v1/{WSID}/{version}/profiles/properties/batch   {"batch": [{"distinct_id", "action"}]}
    POST /v1/{WSID}/{version}/profiles/properties/{op}    set | set-once | numerical-add |
                                                          list-append | list-remove | unset
    GET  /v1/{WSID}/{version}/profiles/{distinct_id}      {"distinct_id", "properties"} or 404
    GET  /_emulator/stats                                 counters (no key needed)
    POST /_emulator/reset                                 forget profiles and counters (no key)

One write request goes through these steps, in this order (each refusal applies nothing):

1. the key: ``Authorization: Bearer <key>``; missing or wrong -> 401 ``Invalid API details``;
2. the rate limit: a token bucket of R requests/s holding at most R (at least 1) -> 429 with
   ``Retry-After: 1``;
3. ``fail_rate`` -> 503;
4. ``latency_ms`` -> an ``asyncio.sleep``, so slow requests overlap as they do against Fyno;
5. validation of the *whole* request (version, body shape, operator values) -> 400 with Fyno's
   ``{"_message": …, "status": "error"}``; then every item is applied, in one transaction;
6. ``drop_rate`` -> the connection is closed with no answer at all, *after* applying: the client
   sees a dropped connection (httpx raises ``RemoteProtocolError``) for a batch that took effect,
   which is exactly the "ambiguous" case the importer must not resend blindly when it holds $add.

All draws come from one ``random.Random(seed)``, so a seeded run with sequential requests
repeats itself.

Semantics, where ``fyno-api.md`` is silent and a choice had to be made (a user of the emulator
can rely on these):

- Operators of one item are applied in the order $set, $once, $add, $append, $remove, $unset,
  whatever their order in the JSON, and the answer has one ``"ok"`` per operator the item carried.
- A property's type (string, number, boolean, list) is that of its current value in the profile:
  the first value written fixes it until the property is unset. Dates are strings. Booleans are
  not numbers. A later value of another type, a string over 255 characters (code points; also as
  a list element or an appended value), a null, an ``$add`` of a non-number such as ``"12"``, or
  an $append / $remove on a property that is not a list, is answered ``"ok"`` and silently
  dropped, as Fyno does. ``items_dropped`` counts the items with at least one dropped value.
- Lists keep unique values (a $set list is de-duplicated, first occurrence kept) and hold
  strings or numbers.
- Shapes are errors, not drops: an object as a property value, an array or object given to
  $add / $append / $remove, a non-object operator value, an unknown operator or item key.
- **Per-item errors.** An item whose ``distinct_id`` is not a non-empty string is answered
  ``"invalid distinct_id"`` for each of its operators and nothing of it is applied (Fyno
  documents no per-item error; this one lets tests exercise the importer's handling of them).
  It is counted in ``items_refused``. On a single-operator endpoint, which has no per-item
  answer, such a request is a 400 instead.
- The single-operator endpoints take the batch operator name as their body key: ``$set`` for
  ``set``, ``$once`` for ``set-once``, ``$add``, ``$append``, ``$remove``, ``$unset``.
- Profiles are kept per (workspace, version, distinct_id): live and test never mix. Any
  workspace id is accepted.

``GET /_emulator/stats`` answers ``requests_by_status`` (write requests by HTTP status, plus
``"dropped"`` for answers withheld by ``drop_rate`` and ``"disconnected"`` for clients gone
before the body arrived), ``items_applied``, ``items_dropped``, ``items_refused``,
``ops_applied`` (items applied per operator), ``max_in_flight`` (the most write requests being
handled at once, from arrival to answer, latency included) and
``max_in_flight_per_distinct_id`` (the most in-flight write requests holding one same
distinct_id, counted from the moment the body is read: 1 proves a client never had two requests
for one profile in flight). Reset clears profiles and counters, refills the token bucket and
reseeds the draws.

Stores. In memory, profiles are dicts, readable after the server stops. With ``db``, they are
rows of ``profiles(workspace, version, distinct_id, properties JSON)`` in a SQLite file (WAL,
closed cleanly on stop, so ``sqlite3`` can read it afterwards); each request is one transaction.
The sink checks and counts but keeps nothing, so the drops it counts are only those that need
no stored profile (too long, null, non-number $add), and every GET is a 404.

The emulator must never be the bottleneck of a benchmark: bodies are parsed with orjson, each
item is checked in one pass and applied in another, answers are joined from cached JSON
fragments, and uvicorn runs on httptools and uvloop.

Modules, each knowing only those above it::

    config   EmulatorConfig, parse_latency
    rules    Fyno's semantics: checking a whole request, applying operators, silent drops
    stores   profiles in memory or in SQLite
    faults   the token bucket, the seeded fail / latency / drop draws, dropping a connection
    app      the emulator's state, counters and endpoints; create_app
    server   uvicorn in a thread (EmulatorServer) or in the foreground (serve)
"""

from importer.emulator.app import create_app
from importer.emulator.config import EmulatorConfig, parse_latency
from importer.emulator.server import EmulatorServer, serve

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app", "parse_latency", "serve"]
