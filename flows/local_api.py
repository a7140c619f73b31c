"""A Prefect API for command-line runs: the configured server, or one temporary local server.

Prefect's ephemeral mode starts a temporary server per *process*; each Dask worker process would start
its own. Starting one here and exporting ``PREFECT_API_URL`` before the cluster starts lets the workers
report to the same server. The log and event workers are drained before the server stops, on every way
out (an error included), so nothing is sent to a server that is gone.
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

from flows.console import console_without_tracebacks

logger = logging.getLogger(__name__)


async def _drain() -> None:
    with contextlib.suppress(RuntimeError):  # a worker that never started has nothing to drain
        result = APILogWorker.instance().drain()
        if inspect.isawaitable(result):
            await result
    result = EventsWorker.drain_all()
    if inspect.isawaitable(result):
        await result


def drain_logs_and_events() -> None:
    """Send every queued run log and event now; a failure to send is logged, never raised."""
    try:
        run_coro_as_sync(_drain())
    except Exception as exc:  # noqa: BLE001 - shutting down: the run's own outcome matters more
        logger.warning("could not send the last run logs to the Prefect API: %s", exc)


@contextlib.contextmanager
def prefect_api(*, console_tracebacks: bool = True) -> Iterator[str]:
    """Yield the API URL to use; start (and afterwards stop) a local server when none is configured.

    ``console_tracebacks=False`` prints run logs on the console without their tracebacks (the server
    still receives them).
    """
    with contextlib.ExitStack() as stack:
        if not console_tracebacks:
            stack.enter_context(console_without_tracebacks())
        configured = PREFECT_API_URL.value()
        if configured:
            try:
                yield configured
            finally:
                drain_logs_and_events()
            return
        logger.info("starting a temporary Prefect server")
        server = SubprocessASGIServer()
        server.start()
        SubprocessASGIServer._instances[None] = server  # flows in this process find it instead of starting one
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                try:
                    yield server.api_url
                finally:
                    drain_logs_and_events()
        finally:
            server.stop()
            SubprocessASGIServer._instances.pop(None, None)
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
