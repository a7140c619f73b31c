"""Retry policy shared by the tasks: exponential backoff, and only for transient failures."""

from __future__ import annotations

from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from clothret.errors import is_transient

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=5)  # 5 s, 10 s, 20 s (with jitter)


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry I/O errors, throttling, timeouts and lost workers; never bad input."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


RETRY_OPTIONS = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}
