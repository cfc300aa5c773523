"""The run settings as a validated model, and their merge: command line over the mapping's
``settings:`` over the defaults of ``importer.config``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from importer import config
from importer.errors import UsageError


class Settings(BaseModel):
    """Defaults for the run options marked * in the contract; the command line wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: Annotated[int, Field(ge=1, description="most items in one request")] = (
        config.DEFAULT_BATCH_SIZE
    )
    max_batch_bytes: Annotated[
        int, Field(ge=config.MIN_BATCH_BYTES, description="most bytes in one request body")
    ] = config.DEFAULT_MAX_BATCH_BYTES
    concurrency: Annotated[
        int, Field(ge=1, le=config.MAX_CONCURRENCY, description="most requests in flight")
    ] = config.DEFAULT_CONCURRENCY
    rate_limit: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False, description="most requests started per second (0 = none)"),
    ] = config.DEFAULT_RATE_LIMIT
    max_retries: Annotated[int, Field(ge=0, description="tries after the first")] = (
        config.DEFAULT_MAX_RETRIES
    )
    timeout: Annotated[
        float, Field(gt=0, allow_inf_nan=False, description="per-request timeout, seconds")
    ] = config.DEFAULT_TIMEOUT_S
    max_reject_rate: Annotated[
        float, Field(ge=0, le=1, description="largest invalid fraction before sending stops")
    ] = config.DEFAULT_MAX_REJECT_RATE
    allow_empty: Annotated[bool, Field(description="no files or no rows is not an error")] = False
    changed_only: Annotated[
        bool, Field(description="send only what changed since the last delivery (incremental sync)")
    ] = False
    missing: Annotated[
        Literal["keep", "unset"],
        Field(description="with changed_only: profiles no longer in the import are kept or unset"),
    ] = "keep"
    max_missing_rate: Annotated[
        float,
        Field(ge=0, le=1, description="with missing unset: most missing fraction before stopping"),
    ] = config.DEFAULT_MAX_MISSING_RATE


def merge_settings(base: Settings | None = None, **given: Any) -> Settings:
    """``base`` (the mapping's settings, or the defaults) with every option that was given.

    An option given as None was not given. A value out of range is a ``UsageError`` naming the
    option as the command line spells it (``--concurrency 0: …``).
    """
    overrides = {key: value for key, value in given.items() if value is not None}
    data = (base or Settings()).model_dump()
    try:
        return Settings.model_validate({**data, **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        option = "--" + name.replace("_", "-")
        value = overrides.get(name, data.get(name))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option} {value}: {message}") from None
