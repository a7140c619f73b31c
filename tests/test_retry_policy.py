"""Tasks retry transient failures (with backoff) and never bad input: the real Prefect task engine."""

import pytest
from prefect import flow, task

from tasks.retry import RETRIES, RETRY_OPTIONS

attempts: dict[str, int] = {}


@task(**{**RETRY_OPTIONS, "retry_delay_seconds": 0, "retry_jitter_factor": None})
def flaky(kind: str) -> str:
    attempts[kind] = attempts.get(kind, 0) + 1
    if kind == "reset" and attempts[kind] < 3:
        raise ConnectionResetError("connection reset by peer")
    if kind == "bad":
        raise ValueError("manifest line 3: not a manifest entry")
    return "done"


@flow
def run(kind: str):
    return flaky(kind)


def test_transient_errors_retry_and_bad_input_fails_at_once(prefect_server):
    attempts.clear()
    assert run("reset") == "done" and attempts["reset"] == 3
    with pytest.raises(ValueError, match="manifest line 3"):
        run("bad")
    assert attempts["bad"] == 1
    assert RETRY_OPTIONS["retry_delay_seconds"](RETRIES) == [5, 10, 20]  # exponential backoff
