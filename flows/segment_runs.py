"""One task per segment on the flow's Dask cluster, run so that a worker that dies costs only its own segment
and never hangs the flow.

- At most as many segment tasks are on the cluster as its workers can run at once (one per ``GPU``
  resource, else one per worker thread): a task waiting on a worker would be blamed by Dask for that
  worker's death as much as the task that ran there.
- A result is read once and its Dask future released, so a worker lost later does not make Dask compute
  that finished segment again.
- When Dask gives up on a segment (``KilledWorker``: its workers died ``allowed-failures`` + 1 times),
  the segment is run once more at the end, alone on the cluster: only a segment that takes its worker down
  alone fails, with the worker's death (signal or exit status) as its reason.
- After :data:`LOST_IN_A_ROW` segments in a row lost their workers (the workers die whatever they run), or
  once no worker can run a segment (``no-workers-timeout``), the segments not started are not submitted and
  fail with that reason.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import dask
from prefect.futures import PrefectFuture, as_completed

from flows.cluster import ClusterTaskRunner, current_runner

T = TypeVar("T")

LOST_IN_A_ROW = 3
"""Segments in a row whose workers died after which no further segment is started."""

_DEATH_WAIT_S = 5.0  # how long to wait for the nanny's death report of a worker named by a KilledWorker


class SegmentLost(RuntimeError):
    """A segment took its worker down every time it ran, or was not run because workers kept dying or none
    could run it."""


def run_segments(
    submit: Callable[[T], PrefectFuture], segments: Sequence[T], *, resources: dict[str, float] | None = None
) -> Iterator[tuple[T, Any, bool]]:
    """Submit ``submit(segment)`` for each segment and yield ``(segment, outcome, cached)`` once each, as they
    finish: ``outcome`` is the task's result or the exception it ended with; ``cached`` whether Prefect
    answered from its cache. ``resources`` are the Dask resources each task asks for."""
    runner = current_runner()
    resources = resources or {}
    queue, running = deque(segments), {}
    lost: list[T] = []
    lost_in_a_row, stop_reason = 0, ""

    def start(segment: T) -> PrefectFuture:
        with dask.annotate(resources=resources) if resources else contextlib.nullcontext():
            return submit(segment)

    while queue or running:
        capacity = runner.slots(resources) if runner else len(queue) + len(running)
        while queue and not stop_reason and len(running) < capacity:
            segment = queue.popleft()
            running[start(segment)] = segment
        if not running:
            break
        future = next(as_completed(list(running)))
        segment = running.pop(future)
        outcome, cached = _outcome(future)
        if _worker_lost(outcome):
            lost.append(segment)
            lost_in_a_row += 1
            if lost_in_a_row >= LOST_IN_A_ROW and not stop_reason:
                stop_reason = (f"not run: the workers died under {lost_in_a_row} segments in a row "
                               f"(see the worker deaths in this run's log)")
            continue
        if _no_worker(outcome):
            outcome = SegmentLost(_no_worker_reason(outcome))
            stop_reason = stop_reason or f"not run: {outcome}"
        if not isinstance(outcome, BaseException):
            lost_in_a_row = 0
        yield segment, outcome, cached
    for segment in queue:
        yield segment, SegmentLost(stop_reason), False
    yield from _alone(start, lost, runner)


def _alone(start: Callable[[T], PrefectFuture], lost: list[T], runner: ClusterTaskRunner | None) -> Iterator[tuple[T, Any, bool]]:
    """Run each segment whose workers died once more, one at a time."""
    culprits_in_a_row = 0
    for segment in lost:
        if culprits_in_a_row >= LOST_IN_A_ROW:
            yield segment, SegmentLost(f"its worker died, and it was not run again alone: {culprits_in_a_row} "
                                       "segments in a row took their workers down alone"), False
            continue
        outcome, cached = _outcome(start(segment))
        if _worker_lost(outcome):
            culprits_in_a_row += 1
            outcome = SegmentLost(f"its worker died each time it ran, also alone on the cluster; {_death_of(outcome, runner)}")
        elif _no_worker(outcome):
            outcome = SegmentLost(_no_worker_reason(outcome))
        else:
            culprits_in_a_row = 0
        yield segment, outcome, cached


def _outcome(future: PrefectFuture) -> tuple[Any, bool]:
    """The task's result or exception, and whether it came from Prefect's cache; the Dask future is released."""
    try:
        outcome = future.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - the Dask future itself failed: a lost worker, no worker, ...
        outcome = exc
    cached = not isinstance(outcome, BaseException) and future.state.name == "Cached"
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "release"):
        wrapped.release()
    return outcome, cached


def _worker_lost(outcome: Any) -> bool:
    return type(outcome).__name__ == "KilledWorker"


def _no_worker(outcome: Any) -> bool:
    return type(outcome).__name__ in ("NoValidWorkerError", "NoWorkerError")


def _no_worker_reason(error: BaseException) -> str:
    """What a ``NoValidWorkerError`` / ``NoWorkerError`` says, in one line."""
    timeout = getattr(error, "timeout", None)
    waited = f" for {timeout:.0f} s (the scheduler's no-workers-timeout)" if timeout else ""
    wanted = getattr(error, "resource_restrictions", None) if type(error).__name__ == "NoValidWorkerError" else None
    if wanted:
        offer = ", ".join(f"{name}={amount:g}" for name, amount in wanted.items())
        return f"no worker offering {offer} was there{waited}"
    return f"no worker was there{waited}"


def _death_of(killed: BaseException, runner: ClusterTaskRunner | None) -> str:
    """The last death of the worker a ``KilledWorker`` names, as the nanny reported it."""
    worker = getattr(getattr(killed, "last_worker", None), "address", None)
    if runner is None or worker is None:
        return f"{type(killed).__name__}: {killed}"
    deadline = time.monotonic() + _DEATH_WAIT_S
    death = runner.last_death_of(worker)
    while death is None and time.monotonic() < deadline:
        time.sleep(0.1)
        death = runner.last_death_of(worker)
    if death is None:
        return f"the last worker to run it ({worker}) was lost without a word from its nanny"
    return f"the last time: {death.message} ({worker})"
