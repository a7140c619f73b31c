"""glibc malloc settings for a process that runs the models: let freed tensors be reused.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``)
so that freed memory goes back to the operating system. Setting any malloc threshold also freezes glibc's mmap
threshold at 128 KiB: every buffer above it — nearly every activation of a detector on the CPU, every decoded
image — is then a fresh ``mmap``, zero-filled page by page on first touch and unmapped when freed. On the
2-core test machine the models ran ~3x slower in such a worker than in a plain process (16 against 49
images/s, one thread, the demo models).

:func:`reuse_freed_memory`, when it finds that small trim threshold in the environment, raises the mmap
threshold to glibc's largest (32 MiB) and the trim threshold to 128 MiB: large buffers come from the heap
again and freed ones are reused, while memory beyond 128 MiB at the top of the heap still goes back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest mmap threshold on 64-bit Linux."""
TRIM_THRESHOLD = 128 * 1024 * 1024

_done = False


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds when the environment set a small trim threshold (once per
    process); returns whether they are raised. Elsewhere (not Linux, not glibc, no such setting) nothing changes."""
    global _done
    if _done:
        return True
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if value is None or not sys.platform.startswith("linux"):
        return False
    try:
        if int(value) >= TRIM_THRESHOLD:
            return False
    except ValueError:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library
        return False
    _done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if _done:
        logger.info(
            "MALLOC_TRIM_THRESHOLD_=%s froze glibc's mmap threshold at 128 KiB: raised it to 32 MiB (trim at 128 MiB)",
            value,
        )
    return _done


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_freed_memory"]
