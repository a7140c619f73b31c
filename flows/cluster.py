"""The Dask task runner for the flows, chosen from the environment.

- ``CLOTHRET_DASK_ADDRESS`` set: use that existing Dask scheduler (the way to go past one machine).
- GPUs and dask-cuda present: a LocalCUDACluster, one worker per GPU, each offering a ``GPU`` resource.
- Otherwise: a LocalCluster of ``CLOTHRET_DASK_WORKERS`` worker processes (default: one per 2 cores,
  at least 2), one thread each, torch limited to the cores each worker owns.
"""

from __future__ import annotations

import logging
import os

from prefect_dask import DaskTaskRunner


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
        logging.getLogger(__name__).warning("GPUs found but dask-cuda is not installed: using a CPU cluster")
        return False
    return True


def task_resources() -> dict[str, int]:
    """Dask resources a GPU task asks for: one ``GPU`` where workers offer it, so two never share a GPU.

    Workers of a LocalCUDACluster offer one each; for an existing scheduler set
    ``CLOTHRET_DASK_GPU_RESOURCE=1`` when its workers were started with ``--resources GPU=1``.
    """
    if os.environ.get("CLOTHRET_DASK_ADDRESS"):
        return {"GPU": 1} if os.environ.get("CLOTHRET_DASK_GPU_RESOURCE") == "1" else {}
    return {"GPU": 1} if _use_cuda_cluster() else {}


def dask_task_runner() -> DaskTaskRunner:
    """A DaskTaskRunner for this machine (see the module docstring)."""
    address = os.environ.get("CLOTHRET_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    if _use_cuda_cluster():
        return DaskTaskRunner(
            cluster_class="dask_cuda.LocalCUDACluster",
            cluster_kwargs={"threads_per_worker": 1, "resources": {"GPU": 1}, "silence_logs": False},
        )
    cores = os.cpu_count() or 2
    workers = int(os.environ.get("CLOTHRET_DASK_WORKERS", max(2, cores // 2)))
    threads = str(max(1, cores // workers))
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "silence_logs": False,  # worker logs follow dask's logging.distributed (default: warning)
            "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"},
        },
    )
