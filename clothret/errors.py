"""Which failures are worth retrying: transient ones (I/O, throttling, timeouts, a lost worker) are,
bad input (a malformed manifest, a corrupt bundle, a wrong configuration) never is."""

from __future__ import annotations

import asyncio

_TRANSIENT_NAMES = {
    "KilledWorker",  # distributed: the worker running the task died
    "CommClosedError",  # distributed: a connection to a worker or the scheduler dropped
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ServerDisconnectedError",  # aiohttp, under s3fs
    "ClientConnectorError",
    "ClientOSError",
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500",
}
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) is worth retrying later."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ValueError, TypeError, LookupError)):
            return False  # raised on purpose about the input, whatever caused it
        if type(current).__name__ in _TRANSIENT_NAMES or _error_code(current) in _TRANSIENT_CODES:
            return True
        if isinstance(current, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
            return True
        if isinstance(current, OSError) and not isinstance(current, _PERMANENT_OS_ERRORS):
            return True
        current = current.__cause__ or current.__context__
    return False


class PublishRefused(RuntimeError):
    """A build failed a quality gate (recall or Acc@10); the serving build stays."""


class SegmentsFailed(RuntimeError):
    """Some segments failed after their retries; the finished ones are committed and kept."""


class StoreBusy(RuntimeError):
    """Another run holds the lease of this store and model version; try again once it has finished."""


class StoreChanged(RuntimeError):
    """Another run changed the catalog or the index pointer under this run in a way it cannot merge; re-run."""


class SegmentDamaged(RuntimeError):
    """A committed segment fails its marker's check (missing or truncated files); a new plan recomputes it."""
