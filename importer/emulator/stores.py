"""Where the emulator's profiles live: in memory, or in a SQLite file.

A store hands out the profiles one request touches, as ``Profiles`` (distinct_id -> properties),
for the caller to change in place, and keeps the changes: in memory at once, in SQLite in one
transaction per request. It also finds one profile and forgets them all. Stores know nothing of
Fyno's operators, of HTTP, faults or counters, and do no locking: the caller holds the lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

Profiles = dict[str, dict[str, Any]]  # distinct_id -> properties, for one workspace and version


class MemoryStore:
    """Profiles in dicts, one per (workspace, version)."""

    def __init__(self) -> None:
        self._spaces: dict[tuple[str, str], Profiles] = {}

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close: profiles stay readable after the server stops."""

    @contextlib.contextmanager
    def batch(
        self, workspace: str, version: str, items: list[dict[str, Any]]
    ) -> Iterator[Profiles]:
        """The live profiles of one workspace and version, changed in place."""
        yield self._spaces.setdefault((workspace, version), {})

    def find(self, version: str, distinct_id: str, workspace: str | None) -> list[dict[str, Any]]:
        """Properties of that profile in each matching workspace."""
        return [
            _copy(profiles[distinct_id])
            for (ws, ver), profiles in self._spaces.items()
            if ver == version and (workspace is None or ws == workspace) and distinct_id in profiles
        ]

    def clear(self) -> None:
        """Forget every profile."""
        self._spaces.clear()


class SqliteStore:
    """Profiles in a SQLite table, one row per profile, properties as JSON text."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS profiles (
            workspace   TEXT NOT NULL,
            version     TEXT NOT NULL,
            distinct_id TEXT NOT NULL,
            properties  TEXT NOT NULL,  -- JSON object
            PRIMARY KEY (workspace, version, distinct_id)
        ) WITHOUT ROWID
    """
    _LOAD = """
        SELECT distinct_id, properties FROM profiles
        WHERE workspace = ? AND version = ? AND distinct_id IN (SELECT value FROM json_each(?))
    """
    _SAVE = """
        INSERT INTO profiles (workspace, version, distinct_id, properties) VALUES (?, ?, ?, ?)
        ON CONFLICT (workspace, version, distinct_id) DO UPDATE SET properties = excluded.properties
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (and create) the database; a no-op when open."""
        if self._conn is None:
            # Used from the server's loop and, under the emulator's lock, from the caller's thread.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(self._SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        """Close the database, so the file is complete and can be read by anyone."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def batch(
        self, workspace: str, version: str, items: list[dict[str, Any]]
    ) -> Iterator[Profiles]:
        """The batch's profiles, loaded and written back in one transaction."""
        ids = list({d for item in items if type(d := item.get("distinct_id")) is str})
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(self._LOAD, (workspace, version, orjson.dumps(ids).decode()))
            profiles = {distinct_id: orjson.loads(text) for distinct_id, text in rows}
            yield profiles
            conn.executemany(
                self._SAVE,
                [
                    (workspace, version, distinct_id, orjson.dumps(props).decode())
                    for distinct_id, props in profiles.items()
                ],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def find(self, version: str, distinct_id: str, workspace: str | None) -> list[dict[str, Any]]:
        """Properties of that profile in each matching workspace (works after ``close`` too)."""
        query = "SELECT properties FROM profiles WHERE version = ? AND distinct_id = ?"
        params: tuple[str, ...] = (version, distinct_id)
        if workspace is not None:
            query += " AND workspace = ?"
            params += (workspace,)
        if self._conn is not None:
            rows = self._conn.execute(query, params).fetchall()
        else:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                rows = conn.execute(query, params).fetchall()
        return [orjson.loads(text) for (text,) in rows]

    def clear(self) -> None:
        """Forget every profile."""
        self._connection().execute("DELETE FROM profiles")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the emulator's database is not open")
        return self._conn


Store = MemoryStore | SqliteStore


def _copy(props: dict[str, Any]) -> dict[str, Any]:
    """A copy the caller may keep: lists are the only mutable values stored."""
    return {k: list(v) if type(v) is list else v for k, v in props.items()}
