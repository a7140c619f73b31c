"""Dask's MALLOC_TRIM_THRESHOLD_ freezes glibc's mmap threshold; the engine raises it again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_by_a_megabyte():
    before = libc.mallinfo2().hblkhd
    buffer = np.ones(1 << 20, np.uint8)
    grew = libc.mallinfo2().hblkhd - before
    del buffer
    return grew

from clothret.pipeline.host_memory import reuse_freed_memory
first = mapped_by_a_megabyte()
raised = reuse_freed_memory()
print(json.dumps({"before": first, "raised": raised, "after": mapped_by_a_megabyte(), "again": reuse_freed_memory()}))
"""


def _probe(env: dict) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_small_trim_threshold_is_raised_so_large_buffers_come_from_the_heap():
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    dask_like = _probe({**base, "MALLOC_TRIM_THRESHOLD_": "65536"})  # as Dask's nanny starts its workers
    assert dask_like["before"] >= 1 << 20  # a 1 MiB array was its own mmap
    assert dask_like["raised"] and dask_like["again"] and dask_like["after"] == 0
    plain = _probe(base)
    assert not plain["raised"]  # nothing set: glibc's own dynamic threshold stays in charge
