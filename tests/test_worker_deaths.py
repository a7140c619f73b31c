"""Worker deaths as the flows report them, on a real local Dask cluster (no Prefect): the nanny's death
message, the worker's last log lines, and the traceback faulthandler writes on a fatal signal."""

from __future__ import annotations

import faulthandler
import logging
import time

import pytest
from distributed import Client, LocalCluster

from flows.worker_logs import WorkerDeath, WorkerDeathWatch

pytestmark = pytest.mark.slow


def crash_in_native_code() -> None:
    """Log a line, then die of SIGSEGV as a crash in a C extension would."""
    logging.getLogger("clothret.test").warning("segment 42: about to crash")
    time.sleep(1.0)  # the line reaches the scheduler first
    faulthandler._sigsegv()


def test_a_segfault_is_reported_with_the_workers_last_lines_and_its_traceback():
    deaths: list[WorkerDeath] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        watch = WorkerDeathWatch(client, on_death=deaths.append)
        worker = next(iter(client.scheduler_info()["workers"]))
        client.submit(crash_in_native_code, pure=False)
        deadline = time.monotonic() + 60
        while not deaths and time.monotonic() < deadline:
            time.sleep(0.1)
        watch.close()
        client.wait_for_workers(1, timeout=60)  # the nanny restarted it
    assert len(deaths) == 1, deaths
    death = deaths[0]
    assert death.worker == worker and death.message == f"Worker process {death.pid} was killed by signal 11"
    assert any("WARNING clothret.test: segment 42: about to crash" in line for line in death.last_lines)
    assert "crash_in_native_code" in death.faults  # faulthandler's traceback, read by the nanny
    report = death.report()
    assert report.startswith(f"Dask worker {worker} died: Worker process {death.pid} was killed by signal 11.")
    crash = report[report.index("Traceback written on the fatal signal:"):]
    assert "Segmentation fault" in crash and "crash_in_native_code" in crash  # the thread that crashed
