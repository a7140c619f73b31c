"""Counting the torch operations that code issues. On a GPU each one costs the host a launch (or a wait for the
device), so their number per batch is what keeps a GPU waiting on Python; the tests and ``bench/`` use it to
hold that number down."""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = frozenset({"aten.permute.default", "aten.reshape.default", "aten.view.default", "aten.expand.default",
                   "aten.unsqueeze.default", "aten.squeeze.dim", "aten.slice.Tensor", "aten.select.int"})
"""Operations that only make a view (no kernel on the device)."""


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter: ...``: ``counter.ops`` operations were run, ``counter.by_name`` of each
    kind; with ``kernels_only``, views are not counted."""

    def __init__(self, *, kernels_only: bool = False) -> None:
        super().__init__()
        self.kernels_only = kernels_only
        self.by_name: Counter[str] = Counter()

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not (self.kernels_only and name in VIEWS):
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))


__all__ = ["VIEWS", "OpCounter"]
