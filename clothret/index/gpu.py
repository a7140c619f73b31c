"""FAISS on the GPU when the installed faiss has GPU support and sees a GPU, the CPU otherwise.

faiss-cpu (the ``cpu`` extra) has no GPU code; faiss-gpu (the ``gpu`` extra) has, and still runs every
index on the CPU where no GPU is visible. An index type or size the GPU kernels refuse stays on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")
GPU_MAX_K = 2048
"""The largest k faiss's GPU indexes search for; a larger k searches on the CPU."""


def gpu_count() -> int:
    """GPUs faiss can use: 0 with a faiss without GPU support."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def use_gpu(device: str) -> bool:
    """Whether ``device`` (``auto``, ``cpu`` or ``gpu``) means the GPU here; ``gpu`` without one is an error."""
    if device not in DEVICES:
        raise ValueError(f"unknown FAISS device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "cpu":
        return False
    if gpu_count():
        return True
    if device == "gpu":
        support = "sees no GPU" if hasattr(faiss, "StandardGpuResources") else "has no GPU support (faiss-cpu)"
        raise ValueError(f"FAISS device 'gpu' asked for, but this faiss {support}: install clothret[gpu] on a "
                         "machine with a CUDA GPU, or use device 'auto' or 'cpu'")
    return False


@dataclass
class GpuIndex:
    """A GPU copy of an index with the resources it lives in (both must stay alive together)."""

    index: faiss.Index
    resources: object


def to_gpu(index: faiss.Index, device: int = 0) -> GpuIndex | None:
    """A copy of ``index`` on GPU ``device``, or None when there is no GPU or the GPU refuses this index."""
    if not gpu_count():
        return None
    try:
        resources = faiss.StandardGpuResources()
        return GpuIndex(faiss.index_cpu_to_gpu(resources, device, index), resources)
    except RuntimeError as exc:  # e.g. HNSW, or a PQ code size the GPU kernels do not support
        logger.warning("searching %s on the CPU: the GPU refused it (%s)", type(index).__name__, exc)
        return None
