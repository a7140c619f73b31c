"""Weighted boxes fusion of a batch off the model thread: on a thread, or spread over worker processes.

ensemble-boxes is Python and numpy: one core fuses a few hundred images a second, and while it runs it
holds the GIL the model thread needs to launch its kernels. :class:`Fuser` runs the fusion of each batch on
its own thread and, with ``processes > 0``, splits the batch over that many worker processes (started
once per process with ``spawn``, reused by later segments). A process that may not start children — a
Dask worker, daemonic by default — fuses on the thread alone.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from clothret.detection.fusion import FusionConfig, fuse_detections
from clothret.detection.types import Detections

logger = logging.getLogger(__name__)


def fuse_chunk(
    per_image: Sequence[Sequence[Detections]], sizes: Sequence[tuple[int, int]], weights: Sequence[float],
    config: FusionConfig,
) -> list[Detections]:
    """Fuse each image's detectors' boxes (``per_image[i][d]``: detector ``d`` on image ``i``, size (width, height))."""
    return [fuse_detections(dets, image_size=size, weights=weights, config=config) for dets, size in zip(per_image, sizes)]


def may_start_processes() -> bool:
    """Whether this process may start child processes (a daemonic one, such as a Dask worker, may not)."""
    return not multiprocessing.current_process().daemon


def auto_processes(device_type: str) -> int:
    """Fusion processes for models on ``device_type``: none on the CPU (the cores run the models); with GPUs,
    up to 4 per GPU from half of the cores, when this process may start children."""
    if device_type != "cuda" or not may_start_processes():
        return 0
    import torch

    cores, gpus = os.cpu_count() or 1, max(1, torch.cuda.device_count())
    return min(4, cores // (2 * gpus)) if cores >= 4 else 0


@functools.lru_cache(maxsize=2)
def _process_pool(processes: int) -> ProcessPoolExecutor:
    logger.info("starting %d fusion processes", processes)
    return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))


class Fuser:
    """Submit a batch's fusion; get a future of its fused :class:`Detections`, one per image."""

    def __init__(self, weights: Sequence[float], config: FusionConfig, *, processes: int = 0) -> None:
        if processes and not may_start_processes():
            logger.info("this process may not start children (a daemonic worker): fusing on one thread")
            processes = 0
        self.weights, self.config, self.processes = list(weights), config, processes
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clothret-fuse")
        self._pool = _process_pool(processes) if processes else None

    def _fuse(self, per_detector: Sequence[Sequence[Detections]], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        per_image = [[dets[i] for dets in per_detector] for i in range(len(sizes))]
        if self._pool is None or len(sizes) < 2:
            return fuse_chunk(per_image, sizes, self.weights, self.config)
        step = -(-len(sizes) // self.processes)
        try:
            parts = [
                self._pool.submit(fuse_chunk, per_image[i : i + step], sizes[i : i + step], self.weights, self.config)
                for i in range(0, len(sizes), step)
            ]
            return [dets for part in parts for dets in part.result()]
        except BrokenProcessPool as exc:
            logger.warning("a fusion process died (%s): fusing on one thread from now on", exc)
            _process_pool.cache_clear()
            self._pool = None
            return fuse_chunk(per_image, sizes, self.weights, self.config)

    def submit(self, per_detector: Sequence[Sequence[Detections]], sizes: Sequence[tuple[int, int]]) -> Future:
        """Fuse ``per_detector[d][i]`` (detector ``d`` on image ``i`` of (width, height) ``sizes[i]``)."""
        return self._thread.submit(self._fuse, per_detector, list(sizes))

    def shutdown(self) -> None:
        """Stop the thread (the processes stay for the next segment)."""
        self._thread.shutdown(wait=True, cancel_futures=True)


__all__ = ["Fuser", "auto_processes", "fuse_chunk", "may_start_processes"]
