"""The Dask task runner of the flows: the cluster is chosen from the environment when a flow run first
submits a task, and every worker death is reported to that flow run.

- ``CLOTHRET_DASK_ADDRESS`` set: use that existing Dask scheduler (the way to go past one machine).
- GPUs and dask-cuda present: a LocalCUDACluster, one worker per GPU, each offering a ``GPU`` resource.
- Otherwise: a LocalCluster of ``CLOTHRET_DASK_WORKERS`` worker processes (default: one per 2 cores,
  at least 2), one thread each, torch limited to the cores each worker owns.

``CLOTHRET_DASK_GPU_RESOURCE=1`` says that workers offer one ``GPU`` resource each and that segment tasks
ask for it: set it for an existing scheduler whose workers were started with ``--resources GPU=1``; on a
machine without GPUs it gives the LocalCluster's workers a ``GPU`` resource each, which runs the GPU
scheduling path on the CPU (the tests use it).

A worker that dies is restarted by its nanny and Dask runs its task again elsewhere; the clusters created
here let Dask try a task on :data:`CLUSTER_SETTINGS`' ``allowed-failures`` + 1 workers before it gives up
(``KilledWorker``), and fail a task that no worker can run for ``no-workers-timeout`` (a ``GPU`` task once
no worker offers the resource any more) instead of waiting for ever. Settings the user changed from
distributed's defaults are kept.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from flows.worker_logs import WorkerDeath, WorkerDeathWatch

logger = logging.getLogger(__name__)

CLUSTER_SETTINGS: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": 1,  # distributed's default 3; the flow retries a lost segment alone once more
    "distributed.scheduler.no-workers-timeout": "60s",  # distributed's default: wait for ever
}
_DISTRIBUTED_DEFAULTS: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": 3,
    "distributed.scheduler.no-workers-timeout": None,
}


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPU
        return 0


def _use_cuda_cluster() -> bool:
    if not _gpu_count():
        return False
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        logger.warning("GPUs found but dask-cuda is not installed: using a CPU cluster")
        return False
    return True


def _gpu_resource_asked() -> bool:
    return os.environ.get("CLOTHRET_DASK_GPU_RESOURCE") == "1"


def task_resources() -> dict[str, int]:
    """Dask resources a GPU task asks for: one ``GPU`` where workers offer it, so two never share a GPU.

    Workers of a LocalCUDACluster offer one each; for an existing scheduler (or, as a test of the GPU
    scheduling path, the CPU LocalCluster) set ``CLOTHRET_DASK_GPU_RESOURCE=1``.
    """
    if os.environ.get("CLOTHRET_DASK_ADDRESS"):
        return {"GPU": 1} if _gpu_resource_asked() else {}
    return {"GPU": 1} if _gpu_resource_asked() or _use_cuda_cluster() else {}


def cluster_spec() -> tuple[str | None, str | None, dict[str, Any]]:
    """``(address, cluster class, cluster kwargs)`` of the cluster for this machine: an address for an
    existing scheduler, else a class and its keyword arguments (see the module docstring)."""
    address = os.environ.get("CLOTHRET_DASK_ADDRESS")
    if address:
        return address, None, {}
    if _use_cuda_cluster():
        kwargs = {"threads_per_worker": 1, "resources": {"GPU": 1}, "silence_logs": False}
        # LocalCUDACluster sets its workers' preload list itself (dask_cuda.initialize), which hides dask's
        # distributed.worker.preload setting: pass the configured preloads so they run there too.
        preload = dask.config.get("distributed.worker.preload", None) or []
        if preload:
            kwargs["preload"] = [preload] if isinstance(preload, str) else list(preload)
        return None, "dask_cuda.LocalCUDACluster", kwargs
    cores = os.cpu_count() or 2
    workers = int(os.environ.get("CLOTHRET_DASK_WORKERS", max(2, cores // 2)))
    threads = str(max(1, cores // workers))
    kwargs = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "silence_logs": False,  # worker logs follow dask's logging.distributed (default: warning)
        "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"},
    }
    if _gpu_resource_asked():
        kwargs["resources"] = {"GPU": 1}
    return None, "distributed.LocalCluster", kwargs


def cluster_settings() -> dict[str, Any]:
    """The :data:`CLUSTER_SETTINGS` the user left at distributed's defaults (for clusters created here)."""
    return {k: v for k, v in CLUSTER_SETTINGS.items() if dask.config.get(k, None) == _DISTRIBUTED_DEFAULTS[k]}


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current flow run's logger, or this module's outside a flow run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


class ClusterTaskRunner(DaskTaskRunner):
    """prefect-dask's task runner on :func:`cluster_spec`'s cluster, resolved when the flow run first submits
    a task; every worker death (with the worker's last log lines) goes to the flow run's log."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: WorkerDeathWatch | None = None

    def duplicate(self) -> ClusterTaskRunner:
        return type(self)()

    @property
    def client(self):
        if self._client is None:
            address, cluster_class, kwargs = cluster_spec()
            self.address, self.cluster_class, self.cluster_kwargs = address, cluster_class, kwargs
            if cluster_class:
                from prefect.utilities.importtools import from_qualified_name

                self.resolved_cluster_class = from_qualified_name(cluster_class)
            with dask.config.set(cluster_settings() if not address else {}):
                client = DaskTaskRunner.client.fget(self)
            run_logger = _run_logger()
            self.watch = WorkerDeathWatch(client, on_death=lambda death: _log_death(run_logger, death))
        return self._client

    def slots(self, resources: dict[str, float]) -> int:
        """How many tasks asking for ``resources`` the cluster's workers can run at once now (at least 1)."""
        workers = self.client.scheduler_info()["workers"].values()
        if resources:
            n = sum(min(int(w.get("resources", {}).get(r, 0) // need) for r, need in resources.items()) for w in workers)
        else:
            n = sum(int(w.get("nthreads", 1)) for w in workers)
        return max(1, n)

    def last_death_of(self, worker: str) -> WorkerDeath | None:
        """The latest death of the worker at address ``worker`` this run saw."""
        return self.watch.last_death_of(worker) if self.watch else None

    def __exit__(self, *exc_info: Any) -> None:
        if self.watch is not None:
            self.watch.close()
        try:
            super().__exit__(*exc_info)
        except TimeoutError:  # a nanny whose worker took more than its 5 s to stop: it was killed
            logger.warning("the Dask cluster took too long to stop; its last worker processes were killed")
            self._started = False


def _log_death(run_logger: logging.Logger | logging.LoggerAdapter, death: WorkerDeath) -> None:
    run_logger.warning(death.report())


def current_runner() -> ClusterTaskRunner | None:
    """The running flow's task runner when it is a :class:`ClusterTaskRunner`."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    return runner if isinstance(runner, ClusterTaskRunner) else None


def dask_task_runner() -> ClusterTaskRunner:
    """The flows' task runner (see the module docstring)."""
    return ClusterTaskRunner()
