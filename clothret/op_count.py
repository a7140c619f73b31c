"""Counting the torch operations that code issues. On a GPU each one costs the host a launch, and some make
it wait for the device to finish everything queued before (an output whose size depends on the values, a
number read back): their numbers per batch are what keep a GPU waiting on Python, so the tests and
``bench/`` use them to hold both down."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = frozenset({"aten.permute.default", "aten.reshape.default", "aten.view.default", "aten.expand.default",
                   "aten.unsqueeze.default", "aten.squeeze.dim", "aten.slice.Tensor", "aten.select.int"})
"""Operations that only make a view (no kernel on the device)."""

WAITS = frozenset({"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.bincount.default",
                   "aten.masked_select.default", "aten.repeat_interleave.Tensor", "aten._unique2.default",
                   "aten.unique_dim.default", "torchvision.nms.default"})
"""Operations that on CUDA wait for the device (plus indexing with a boolean mask, which runs ``nonzero``)."""


def _waits(name: str, args: tuple) -> bool:
    if name in WAITS:
        return True
    if name.startswith("aten.index.Tensor") and len(args) > 1:  # t[mask]
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return False


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter: ...``: ``counter.ops`` operations were run (``counter.by_name`` of each
    kind; with ``kernels_only``, views are not counted), ``counter.waits`` of them wait for a CUDA device
    (:data:`WAITS`; a copy to the host waits too, but on the CPU there is none to see)."""

    def __init__(self, *, kernels_only: bool = False) -> None:
        super().__init__()
        self.kernels_only = kernels_only
        self.by_name: Counter[str] = Counter()
        self.waits = 0

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not (self.kernels_only and name in VIEWS):
            self.by_name[name] += 1
        self.waits += _waits(name, args)
        return func(*args, **(kwargs or {}))


__all__ = ["VIEWS", "WAITS", "OpCounter"]
