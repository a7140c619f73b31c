"""A Prefect API for command-line runs: the configured server, or one temporary local server.

Prefect's ephemeral mode starts a temporary server per *process*; each Dask worker process would start
its own. Starting one here and exporting ``PREFECT_API_URL`` before the cluster starts lets the workers
report to the same server, and draining the log and event workers before it stops keeps shutdown quiet.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

logger = logging.getLogger(__name__)


async def _drain() -> None:
    with contextlib.suppress(RuntimeError):  # a worker that never started has nothing to drain
        result = APILogWorker.instance().drain()
        if inspect.isawaitable(result):
            await result
    result = EventsWorker.drain_all()
    if inspect.isawaitable(result):
        await result


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the API URL to use; start (and afterwards stop) a local server when none is configured."""
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server = SubprocessASGIServer()
    server.start()
    SubprocessASGIServer._instances[None] = server  # flows in this process find it instead of starting one
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
            run_coro_as_sync(_drain())
    finally:
        server.stop()
        SubprocessASGIServer._instances.pop(None, None)
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
