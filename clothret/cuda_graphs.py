"""CUDA graphs for the dense parts of the networks: one replay per batch instead of a launch per kernel.

A detector's backbone and heads issue ~1,000 kernels per batch in eager PyTorch (FCOS's GroupNorm towers
alone ~40 calls of ~20 small ops), each costing the host some microseconds of Python, dispatch and launch.
With three detectors on one GPU the host then becomes the limit: the GPU waits for launches. A CUDA graph
records the kernels of one call once and replays them with a single launch.

:class:`GraphedCalls` wraps a function of one tensor (``fn(x) -> tensors``, any nesting of tuples, lists
and dicts). On CUDA it captures a graph for each input shape, dtype, layout and autocast state the second
time that key is seen (a key seen once runs eagerly: a one-off shape is not worth a capture), keeps at most
``max_graphs`` of them (least recently used dropped), and from then on copies the input into the graph's
static input and replays it. When shapes vary so much that graphs are dropped before they pay off (after
``2 * max_graphs`` captures, fewer than :data:`MIN_REPLAYS_PER_CAPTURE` replays per capture), it stops
capturing, with one warning: new keys run eagerly, the graphs held still replay. Anywhere else (the CPU,
while another capture is under way, after a failed capture) it calls ``fn``. The graphs of one
:class:`GraphedCalls` share one memory pool, so they cost about the largest one's activations, not the sum.

What a caller must know:

- the tensors returned are the graph's static outputs: valid until the next call of the same
  :class:`GraphedCalls` (any shape), read or copied before then, never written in place. Callers that
  may run on several threads hold a lock over the call and the reads (the detectors and embedders do);
- ``fn`` must not synchronise with the host or change shape with the values (the dense parts of the
  networks do neither), and its weights must not be replaced while graphs exist (inference copies are
  rebuilt, with new :class:`GraphedCalls`, when their model's weights change);
- capture runs ``fn`` under autocast with autocast's weight-cast cache off: a cached cast would be freed
  when the caller's autocast region ends, while the graph still reads it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8
"""Graphs kept per :class:`GraphedCalls` (input shapes), least recently used dropped."""
CAPTURE_ON_SIGHTING = 2
"""A key is captured the time it is seen for this many times (before that, ``fn`` runs eagerly)."""

MIN_REPLAYS_PER_CAPTURE = 4
"""Replays per capture (each costs a synchronisation and two eager calls) below which capturing stops."""

_MAX_SIGHTINGS = 10_000  # distinct keys remembered before the counts start over
_CAPTURE = threading.Lock()  # one capture at a time in the process: captures are rare, and each syncs the device


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: object  # the static outputs, as ``fn`` returned them


def _key(x: torch.Tensor) -> tuple:
    cast = torch.is_autocast_enabled("cuda")
    return (x.device, tuple(x.shape), x.stride(), x.dtype, cast, torch.get_autocast_dtype("cuda") if cast else None)


class GraphedCalls:
    """``fn(x)`` through CUDA graphs captured per input key; see the module's docstring for the contract."""

    def __init__(self, fn: Callable[[torch.Tensor], object], *, name: str = "network", max_graphs: int = MAX_GRAPHS,
                 capture_on_sighting: int = CAPTURE_ON_SIGHTING) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        if capture_on_sighting < 1:
            raise ValueError(f"capture_on_sighting must be >= 1, got {capture_on_sighting}")
        self.fn, self.name = fn, name
        self.max_graphs, self.capture_on_sighting = max_graphs, capture_on_sighting
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._sightings: Counter[tuple] = Counter()
        self._pool = None  # one memory pool shared by this object's graphs
        self._stream: torch.cuda.Stream | None = None
        self.disabled: str | None = None  # why graphs are off for good (a capture failed), else None
        self.stopped_capturing = False  # shapes varied too much: no new graphs, the held ones still replay
        self.captures = 0
        self.replays = 0

    @property
    def graphs(self) -> int:
        """How many graphs are held now."""
        return len(self._graphs)

    def __call__(self, x: torch.Tensor) -> object:
        if not x.is_cuda or self.disabled is not None or torch.cuda.is_current_stream_capturing():
            return self.fn(x)
        key = _key(x)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._sightings) > _MAX_SIGHTINGS:
                self._sightings.clear()
            self._sightings[key] += 1
            if self._sightings[key] < self.capture_on_sighting or self._thrashing():
                return self.fn(x)
            graph = self._capture(x, key)
            if graph is None:
                return self.fn(x)
        else:
            self._graphs.move_to_end(key)
        graph.input.copy_(x)
        graph.graph.replay()
        self.replays += 1
        return graph.output

    def _thrashing(self) -> bool:
        """Whether capturing has stopped because graphs were dropped before they paid off (warns once)."""
        if not self.stopped_capturing and self.captures >= 2 * self.max_graphs \
                and self.replays < MIN_REPLAYS_PER_CAPTURE * self.captures:
            self.stopped_capturing = True
            logger.warning("%s: %d CUDA graphs captured but only %d replays: the input shapes vary too much for "
                           "%d graphs; new shapes run eagerly from now on (the %d graphs held still replay). "
                           "Batches of fewer shapes (group_by_shape) or cuda_graphs=false avoid the captures",
                           self.name, self.captures, self.replays, self.max_graphs, len(self._graphs))
        return self.stopped_capturing

    def _capture(self, x: torch.Tensor, key: tuple) -> _Graph | None:
        """Warm ``fn`` up on a side stream, capture it into this object's pool; ``None`` (and graphs off from
        then on, with a warning) when the capture fails."""
        cast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")

        def autocast():
            return torch.autocast("cuda", dtype=dtype, enabled=cast, cache_enabled=False)

        with _CAPTURE:
            try:
                torch.cuda.synchronize(x.device)  # a graph dropped now may still be running
                while len(self._graphs) >= self.max_graphs:
                    self._graphs.popitem(last=False)
                if self._stream is None:
                    self._stream = torch.cuda.Stream(x.device)
                    self._pool = torch.cuda.graph_pool_handle()
                static_input = torch.empty_like(x)  # same layout: the key includes the strides
                static_input.copy_(x)
                self._stream.wait_stream(torch.cuda.current_stream(x.device))
                with torch.cuda.stream(self._stream), autocast():
                    self.fn(static_input)  # warm-up: cuDNN's algorithm choice, lazy workspaces, weight casts
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"), \
                        autocast():
                    output = self.fn(static_input)
                torch.cuda.current_stream(x.device).wait_stream(self._stream)
            except Exception as exc:  # noqa: BLE001 - eager calls give the same results, only slower
                self.disabled = f"{type(exc).__name__}: {exc}"
                self._graphs.clear()
                logger.warning("%s: CUDA graph capture failed for input %s (%s): running eagerly from now on",
                               self.name, tuple(x.shape), self.disabled)
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(x.device)
                return None
            self.captures += 1
            self._graphs[key] = captured = _Graph(graph, static_input, output)
            logger.info("%s: CUDA graph captured for input %s %s (%d held)", self.name, tuple(x.shape), x.dtype,
                        len(self._graphs))
            return captured


__all__ = ["CAPTURE_ON_SIGHTING", "MAX_GRAPHS", "MIN_REPLAYS_PER_CAPTURE", "GraphedCalls"]
