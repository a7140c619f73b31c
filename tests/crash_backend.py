"""Detector backends for the worker-loss tests: the torchvision backend, except that a *poison* image (an
image of exactly :data:`POISON_SHAPE`) takes its process down, as a crash in native code would.

- ``crash-kill``: the process sends itself ``SIGKILL``;
- ``crash-exit``: the process ends with ``os._exit(EXIT_STATUS)``.

:func:`register` registers both. The tests load this module in every Dask worker process as a preload
module (dask's ``distributed.worker.preload``, whose ``dask_setup`` hook registers them there), and
register them in the flow's process for the length of a test.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from clothret.detection.registry import backends, register_backend, unregister_backend
from clothret.detection.types import Detections

logger = logging.getLogger(__name__)

POISON_SHAPE = (173, 211)
"""(height, width) of the images that take a worker down."""
EXIT_STATUS = 70


def write_poison_image(path: str) -> None:
    """A plain PNG image of :data:`POISON_SHAPE`."""
    Image.new("RGB", POISON_SHAPE[::-1], (200, 120, 40)).save(path)


class CrashingDetector:
    """The torchvision detector, until it is handed a poison image."""

    def __init__(self, inner, how: str) -> None:
        self.inner, self.how, self.name = inner, how, inner.name

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if any(image.shape[:2] == POISON_SHAPE for image in images):
            logger.warning("poison image in this batch: the worker process goes down (%s)", self.how)
            time.sleep(1.0)  # a crash a moment after the last log line, which has reached the scheduler by then
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(EXIT_STATUS)
        return self.inner.detect(images)


def _loader(how: str):
    def load(weights_url: str, *, name: str, device: str) -> CrashingDetector:
        from clothret.detection.torchvision_backend import TorchvisionDetector

        return CrashingDetector(TorchvisionDetector.from_weights(weights_url, name=name, device=device), how)

    return load


NAMES = ("crash-kill", "crash-exit")


def register() -> None:
    """Register the crash-* backends in this process (once)."""
    for name in NAMES:
        if name not in backends():
            register_backend(name, _loader(name.removeprefix("crash-")))


def unregister() -> None:
    for name in NAMES:
        if name in backends():
            unregister_backend(name)


def dask_setup(worker) -> None:
    """Dask's preload hook, run in each worker process as it starts."""
    register()
