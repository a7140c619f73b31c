"""S3 options from a Prefect Secret block, applied in whichever process runs a task (Dask workers too)."""

from __future__ import annotations

import functools
import json

from prefect.blocks.system import Secret

from clothret.storage import configure_s3


@functools.lru_cache(maxsize=8)
def _options(block_name: str) -> tuple[tuple[str, object], ...]:
    value = Secret.load(block_name).get()
    try:
        options = json.loads(value) if isinstance(value, str) else dict(value)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"Secret block {block_name!r} must hold a JSON object of s3fs options "
            f'(e.g. {{"endpoint_url": ..., "key": ..., "secret": ...}}): {exc}'
        ) from exc
    if not isinstance(options, dict):
        raise ValueError(f"Secret block {block_name!r} must hold a JSON object of s3fs options, got {type(options).__name__}")
    return tuple(sorted(options.items()))


def use_s3_block(block_name: str | None) -> None:
    """Configure s3fs in this process from the named Secret block (no-op without a name).

    The options stay in this process (they are not exported to the environment).
    """
    if block_name:
        configure_s3(export=False, **dict(_options(block_name)))
