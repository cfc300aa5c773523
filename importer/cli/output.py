"""Where the CLI's words go: stderr for people, stdout for ``--json``; never the API key.

Every key the CLI reads is remembered here, and every message passes through ``redact`` before
it is shown (the second line of defence: nothing is meant to print the key at all).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from importer import config
from importer.errors import UsageError
from importer.redact import redact, redact_values

if TYPE_CHECKING:
    from rich.console import Console

_SECRETS: list[str] = []


def shown(text: str) -> str:
    """A message as it may be shown: every known secret cut out."""
    return redact(text, _SECRETS)


def shown_values(data: Any) -> Any:
    """JSON-able data as it may be shown: secrets cut out of its string values."""
    return redact_values(data, _SECRETS)


def console() -> Console:
    """A rich console on stderr (rich is imported only by the commands that draw)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """One line for a person, on stderr."""
    sys.stderr.write(shown(message) + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    say(f"error: {message}")
    sys.exit(code)


def read_key(api_key_file: Path | None) -> str | None:
    """The API key, from ``--api-key-file`` (trailing newline stripped) or ``FYNO_API_KEY``."""
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file {api_key_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--api-key-file {api_key_file} is not UTF-8 text") from None
        if not key.strip():
            raise UsageError(f"--api-key-file {api_key_file} is empty")
        _SECRETS.append(key)
        return key
    from_env = os.environ.get(config.ENV_API_KEY) or None
    if from_env:
        _SECRETS.append(from_env)
    return from_env
