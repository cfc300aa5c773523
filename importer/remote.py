"""Remote sources (``s3://``, ``gs://``, ``az://``, ``https://``): fingerprints and listings.

polars reads remote objects itself (through the Rust ``object_store`` crate); this module uses
``obstore``, the Python binding of that same crate, for what polars does not expose: an
object's metadata (ETag and size, for the fingerprint) and listings (globs, ``prefix/``).
Credentials come from the clouds' usual environment variables or the mapping's
``source: storage_options:``, exactly as polars takes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.store import from_url

from importer.errors import SourceError

_GLOB = re.compile(r"[*?\[]")


def _split(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.csv`` → (``s3://bucket``, ``a/b.csv``); https splits at the host."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")


def _store(root: str, options: dict[str, str]) -> Any:
    try:
        config: Any = dict(options) or None  # obstore's typed configs are TypedDicts of str
        return from_url(root, config=config)
    except Exception as exc:  # obstore raises its own error types for bad configuration
        raise SourceError(f"{root}: cannot open the object store: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def remote_fingerprint(url: str, options: dict[str, str]) -> str:
    """A hash of the object's ETag (or last-modified time) and size; the URL is not part of it."""
    root, key = _split(url)
    try:
        meta = obstore.head(_store(root, options), key)
    except FileNotFoundError:
        raise SourceError(f"{url}: no such object") from None
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{url}: cannot read the object's metadata: {_first_line(exc)}") from None
    tag = meta.get("e_tag") or f"modified:{meta.get('last_modified')}"
    digest = hashlib.sha256(f"{tag}|{meta['size']}".encode()).hexdigest()
    return f"remote:{digest}"


def _pattern(glob: str) -> re.Pattern[str]:
    """A glob over keys: ``*`` and ``?`` stay within one path segment, as for local files."""
    out = ""
    for char in glob:
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char) if char != "[" else "[")
    return re.compile(out.replace("\\]", "]") + "$")


def expand_remote_glob(url: str, options: dict[str, str]) -> Iterator[str]:
    """The objects a remote glob (or a ``prefix/`` ending in a slash) names, in name order."""
    root, key = _split(url)
    if key.endswith("/") or not key:
        key += "*"
    match = _GLOB.search(key)
    prefix = key[: match.start()] if match else key
    prefix = prefix[: prefix.rfind("/") + 1]
    pattern = _pattern(key)
    names: list[str] = []
    try:
        for batch in obstore.list(_store(root, options), prefix=prefix or None):
            names.extend(obj["path"] for obj in batch if pattern.match(obj["path"]))
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{url}: cannot list the objects: {_first_line(exc)}") from None
    for name in sorted(names, key=lambda n: n.rsplit("/", 1)[-1]):
        if not name.rsplit("/", 1)[-1].startswith((".", "_")):
            yield f"{root}/{name}"
