"""Remote sources (``s3://``, ``gs://``, ``az://``, ``https://``): metadata, listings, downloads.

polars reads remote objects itself (through the Rust ``object_store`` crate); this module uses
``obstore``, the Python binding of that same crate, for what polars does not expose: an
object's metadata (ETag and size, for the fingerprint), listings (globs, ``prefix/``) and a
streamed download (to transcode a Latin-1 CSV, which polars cannot read).

Credentials come from the clouds' usual environment variables (``AWS_*``, ``GOOGLE_*``,
``AZURE_*``) or the mapping's ``source: storage_options:``, with the keys polars takes. polars
accepts client keys such as ``aws_allow_http`` or ``timeout`` in the same dictionary as the
store's own keys; obstore wants them apart (and panics on an ``aws_``-prefixed client key), so
``_store`` sorts them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.store import from_url

from importer.errors import SourceError

_GLOB = re.compile(r"[*?\[]")
# obstore's ClientConfig keys; polars lets them carry a cloud prefix (aws_allow_http, …)
_CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
_BOOL_CLIENT_KEYS = frozenset(
    {"allow_http", "allow_invalid_certificates", "http1_only", "http2_only", "randomize_addresses"}
)
_CLOUD_PREFIXES = ("aws_", "google_", "azure_")


def _split(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.csv`` → (``s3://bucket``, ``a/b.csv``); https splits at the host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")


def _client_key(key: str) -> str | None:
    """The obstore client-option name of a storage option, or None for a store option."""
    lower = key.lower()
    for prefix in ("", *_CLOUD_PREFIXES):
        if lower.startswith(prefix) and lower[len(prefix) :] in _CLIENT_KEYS:
            return lower[len(prefix) :]
    return None


def _store(root: str, options: dict[str, str]) -> Any:
    config: dict[str, Any] = {}
    client: dict[str, Any] = {}
    for key, value in options.items():
        name = _client_key(key)
        if name is None:
            config[key] = value
        elif name in _BOOL_CLIENT_KEYS:
            client[name] = str(value).strip().lower() in ("1", "true", "yes", "on")
        else:
            client[name] = value
    if root.startswith("http://"):
        client.setdefault("allow_http", True)  # the user named a plain-http URL on purpose
    try:
        return from_url(root, config=config or None, client_options=client or None)  # type: ignore[arg-type]
    except (KeyboardInterrupt, SystemExit):
        raise
    except (
        BaseException
    ) as exc:  # obstore raises its own types, and a pyo3 panic is a BaseException
        raise SourceError(
            f"{root}: cannot open the object store: {_first_line(exc)}",
            hint="check the credentials in the environment or in source: storage_options:",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(url: str, options: dict[str, str]) -> tuple[Any, str]:
    """The object store of ``url`` and the key (or prefix) inside it."""
    root, key = _split(url)
    return _store(root, options), key


def remote_fingerprint(url: str, options: dict[str, str]) -> str:
    """A hash of the object's ETag (or last-modified time) and size; the URL is not part of it."""
    root, key = _split(url)
    store = _store(root, options)
    try:
        meta = obstore.head(store, key)
    except FileNotFoundError:
        raise SourceError(f"{url}: no such object") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise SourceError(f"{url}: cannot read the object's metadata: {_first_line(exc)}") from None
    # A re-uploaded identical file keeps its ETag (a content hash on S3 and GCS), so the ledger
    # still recognises it; last-modified stands in only where a server gives no ETag.
    tag = meta.get("e_tag") or f"modified:{meta.get('last_modified')}"
    digest = hashlib.sha256(f"{tag}|{meta['size']}".encode()).hexdigest()
    return f"remote:{digest}"


def _matches(pattern: str, key: str) -> bool:
    """Glob matching over keys: ``*``, ``?`` and ``[…]`` stay within one path segment."""
    wanted, parts = pattern.split("/"), key.split("/")
    return len(wanted) == len(parts) and all(
        fnmatch.fnmatchcase(part, glob) for part, glob in zip(parts, wanted, strict=True)
    )


def expand_remote_glob(url: str, options: dict[str, str]) -> list[str]:
    """The objects a remote glob (or a ``prefix/`` ending in a slash) names, in path order.

    Like a local directory, a prefix is not searched recursively. Hidden and marker objects
    (``_SUCCESS``) are returned too: the caller ignores them with a notice, as for local files.
    """
    root, key = _split(url)
    if key.endswith("/") or not key:
        key += "*"
    match = _GLOB.search(key)
    prefix = key[: match.start()] if match else key
    prefix = prefix[: prefix.rfind("/") + 1]
    store = _store(root, options)
    names: list[str] = []
    try:
        for batch in obstore.list(store, prefix=prefix or None):
            names.extend(obj["path"] for obj in batch if _matches(key, obj["path"]))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise SourceError(f"{url}: cannot list the objects: {_first_line(exc)}") from None
    return [f"{root}/{name}" for name in sorted(names)]


def _chunks(url: str, options: dict[str, str]) -> Iterator[bytes]:
    root, key = _split(url)
    store = _store(root, options)
    try:
        for block in obstore.get(store, key).stream():
            yield bytes(block)
    except FileNotFoundError:
        raise SourceError(f"{url}: no such object") from None
    except (KeyboardInterrupt, SystemExit, SourceError):
        raise
    except BaseException as exc:
        raise SourceError(f"{url}: cannot read the object: {_first_line(exc)}") from None


def object_blocks(url: str, options: dict[str, str]) -> Iterator[bytes]:
    """The object's bytes, streamed in the store's blocks (never whole in memory)."""
    yield from _chunks(url, options)


def download_latin1_as_utf8(url: str, options: dict[str, str]) -> Path:
    """A local UTF-8 copy of a remote Latin-1 CSV, streamed block by block (never whole)."""
    import zlib

    gzipped = url.lower().endswith(".gz")
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None
    fd, tmp = tempfile.mkstemp(prefix="fyno-import-", suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as out:
            for block in _chunks(url, options):
                data = inflate.decompress(block) if inflate is not None else block
                out.write(data.decode("latin-1").encode("utf-8"))
            if inflate is not None:
                out.write(inflate.flush().decode("latin-1").encode("utf-8"))
    except zlib.error as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SourceError(f"{url}: not a readable gzip file: {exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
