"""Where a sync state's files live: a local directory or an object-store prefix.

Both give the same four operations on named files: read, write, replace atomically (the
manifest), delete, list. A local replace is a rename over the old file (``os.replace``, after
an fsync); an object store's single PUT is atomic by itself. The lock is separate: a local
state holds an ``flock`` (released by the kernel however the process ends); a remote one holds
a lease object created only if absent, refreshed while the run lasts and taken over once it has
expired (a process killed with -9 holds a remote state until then).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from importer.errors import StateError, StateLockedError
from importer.files import open_private, open_private_fd, write_private_atomically
from importer.sources import is_remote

LEASE_S = 600.0  # a remote lock not refreshed for this long belongs to a dead run
_REFRESH_S = 60.0
_LOCK = "lock"


class StateFiles(Protocol):
    """Named files of one state."""

    where: str  # the path or URL, for messages

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""

    def write(self, name: str, data: bytes) -> None:
        """Write (or overwrite) a file."""

    def replace(self, name: str, data: bytes) -> None:
        """Replace a file atomically: a crash leaves the old one or the new one, whole."""

    def delete(self, name: str) -> None:
        """Remove a file; a missing one is fine."""

    def names(self) -> list[str]:
        """Every file's name (with its folder, like ``gen-3/part-0001.parquet``)."""

    def lock(self) -> None:
        """Hold the state for this run; StateLockedError when another run does."""

    def unlock(self) -> None:
        """Release the state."""


def state_files(where: str, storage_options: dict[str, str]) -> StateFiles:
    """The files of the state at ``where`` (a directory, or an s3://, gs://, az:// prefix)."""
    if is_remote(where):
        return RemoteFiles(where, storage_options)
    return LocalFiles(Path(where))


class LocalFiles:
    """A state in a local directory (created owner-only when missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        self._lock_fd: int | None = None

    def _ensure(self, folder: Path) -> None:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state directory {folder}: {exc.strerror}"
            ) from None

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise StateError(f"{self.root / name} is a directory, not a state file") from None

    def write(self, name: str, data: bytes) -> None:
        """Write (or overwrite) a file, owner-only."""
        path = self.root / name
        self._ensure(path.parent)
        with open_private(path, "wb") as handle:
            handle.write(data)  # type: ignore[arg-type]

    def replace(self, name: str, data: bytes) -> None:
        """Replace a file atomically (temporary file, fsync, rename, fsync of the folder)."""
        self._ensure(self.root)
        write_private_atomically(self.root / name, data)

    def delete(self, name: str) -> None:
        """Remove a file, and its folder once empty."""
        path = self.root / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if path.parent != self.root:
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    def names(self) -> list[str]:
        """Every file below the state directory."""
        if not self.root.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def lock(self) -> None:
        """flock the state's lock file for this process's lifetime."""
        if self._lock_fd is not None:
            return
        if self.root.exists() and not self.root.is_dir():
            raise StateError(
                f"the state path {self.root} is a file, not a directory",
                hint="--state names a directory (or an s3://, gs://, az:// prefix)",
            )
        self._ensure(self.root)
        fd = open_private_fd(self.root / _LOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise StateLockedError(
                f"the state {self.root} is in use by another run ({holder or 'pid unknown'})",
                hint="wait for that run to finish, or use another --state",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the flock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class RemoteFiles:
    """A state under an object-store prefix (``s3://bucket/nightly/state``)."""

    def __init__(self, url: str, storage_options: dict[str, str]) -> None:
        from importer.sources.remote import open_store

        self.where = url.rstrip("/")
        self._store, prefix = open_store(self.where, storage_options)
        self._prefix = prefix.strip("/")
        self._lease: threading.Event | None = None

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _fail(self, what: str, exc: BaseException) -> StateError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StateError(f"{self.where}: cannot {what}: {text}")

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        import obstore

        try:
            return bytes(obstore.get(self._store, self._key(name)).bytes())
        except FileNotFoundError:
            return None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise self._fail(f"read {name}", exc) from None

    def write(self, name: str, data: bytes) -> None:
        """Put the object."""
        import obstore

        try:
            obstore.put(self._store, self._key(name), data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise self._fail(f"write {name}", exc) from None

    def replace(self, name: str, data: bytes) -> None:
        """One PUT: an object store replaces an object atomically."""
        self.write(name, data)

    def delete(self, name: str) -> None:
        """Delete the object; a missing one is fine."""
        import obstore

        with contextlib.suppress(FileNotFoundError):
            try:
                obstore.delete(self._store, self._key(name))
            except (KeyboardInterrupt, SystemExit, FileNotFoundError):
                raise
            except BaseException as exc:
                raise self._fail(f"delete {name}", exc) from None

    def names(self) -> list[str]:
        """Every object under the prefix, relative to it."""
        import obstore

        start = len(self._prefix) + 1 if self._prefix else 0
        try:
            listed = obstore.list(self._store, prefix=self._prefix or None)
            return sorted(obj["path"][start:] for batch in listed for obj in batch)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise self._fail("list the state", exc) from None

    def lock(self) -> None:
        """Create the lease object if absent (or take over an expired one); refresh it."""
        if self._lease is not None:
            return
        if not self._create_lease():
            held = _lease_holder(self.read(_LOCK))
            if held is not None and held["expires"] > time.time():
                raise StateLockedError(
                    f"the state {self.where} is in use by another run ({held['owner']})",
                    hint="wait for that run to finish (a killed run's lease expires after "
                    f"{LEASE_S / 60:.0f} minutes), or use another --state",
                )
            self.delete(_LOCK)  # expired: its run is gone
            if not self._create_lease():
                raise StateLockedError(f"the state {self.where} was just taken by another run")
        stop = threading.Event()
        thread = threading.Thread(target=self._refresh, args=(stop,), daemon=True)
        thread.start()
        self._lease = stop

    def _create_lease(self) -> bool:
        import obstore

        try:
            obstore.put(self._store, self._key(_LOCK), _lease_body(), mode="create")
        except FileExistsError:
            return False
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            if type(exc).__name__ == "AlreadyExistsError":
                return False
            raise self._fail("lock the state", exc) from None
        return True

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(_REFRESH_S):
            with contextlib.suppress(StateError):
                self.write(_LOCK, _lease_body())

    def unlock(self) -> None:
        """Stop refreshing and delete the lease."""
        if self._lease is not None:
            self._lease.set()
            self._lease = None
            with contextlib.suppress(StateError):
                self.delete(_LOCK)


def _lease_body() -> bytes:
    owner = f"pid {os.getpid()} on {socket.gethostname()}"
    return json.dumps({"owner": owner, "expires": time.time() + LEASE_S}).encode()


def _lease_holder(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        held = json.loads(data)
        return {"owner": str(held["owner"]), "expires": float(held["expires"])}
    except (ValueError, KeyError, TypeError):
        return None
