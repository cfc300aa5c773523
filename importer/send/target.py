"""Where requests go, and the HTTP client that takes them there.

The key travels only in the client's ``Authorization`` header: it is kept out of ``Target``'s
repr, and a base URL that would carry it in clear text to a host other than loopback is refused
before any connection is made.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from importer import config
from importer.errors import InsecureURLError, UsageError

if TYPE_CHECKING:
    import httpx

    from importer.send.sender import SendConfig

EMULATOR_WORKSPACE = "emulator"
# Idle connections are dropped after 2 s, before a server's own idle timeout (uvicorn's is 5 s,
# httpx's default is also 5 s): reusing a connection the server is closing makes an "ambiguous"
# failure out of a request that never arrived, and a $add chunk is then held back.
KEEPALIVE_EXPIRY_S = 2.0


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where requests go. The key is kept out of repr, so it never reaches a log by accident."""

    base_url: str
    workspace: str
    api_version: str
    api_key: str = field(repr=False)

    @property
    def batch_url(self) -> str:
        """The batch endpoint of this workspace and version."""
        base = self.base_url.rstrip("/")
        workspace = quote(self.workspace, safe="")
        return f"{base}/v1/{workspace}/{self.api_version}/profiles/properties/batch"

    def check(self) -> Target:
        """This target, once its base URL and API version are known to be safe and real."""
        check_base_url(self.base_url)
        check_api_version(self.api_version)
        return self

    @classmethod
    def emulator(cls, url: str) -> Target:
        """The built-in emulator at ``url``, with a random key (no word of a message matches it)."""
        return cls(
            base_url=url,
            workspace=EMULATOR_WORKSPACE,
            api_version=config.DEFAULT_API_VERSION,
            api_key=f"emulator-{secrets.token_hex(8)}",
        )


def check_base_url(url: str) -> None:
    """Refuse a base URL that would carry the key in clear text to a non-loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"base URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise InsecureURLError(
            f"refusing to send the API key over plain http:// to {parts.hostname}",
            hint="use https://, or http:// only to a loopback address such as 127.0.0.1",
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_version(version: str) -> str:
    """Only ``live`` and ``test`` exist."""
    if version not in config.API_VERSIONS:
        raise UsageError(f"API version {version!r} does not exist: use live or test")
    return version


def make_client(target: Target, send: SendConfig) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with the key, a pool sized to the concurrency, no proxy lookup,
    over the lean transport (``transport``)."""
    import httpx

    from importer.send.transport import LeanTransport

    transport = LeanTransport(max_connections=send.concurrency, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    return httpx.AsyncClient(
        transport=transport,
        headers={
            "Authorization": f"Bearer {target.api_key}",
            "Content-Type": "application/json",
            "User-Agent": "fyno-import",
        },
        timeout=send.timeout,
        trust_env=False,
    )
