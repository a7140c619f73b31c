"""Cutting the stream of read images into model batches of similar shape.

A detector batch is padded to its largest height and its largest width, so a portrait image in a batch of
landscape ones makes every image of it cost a square: 1024x768 and 768x1024 images resized to 800-1333 px
pad to 1088x1088 together, 1088x800 apart (36% fewer pixels; 52% for 2:3 photos). :class:`ShapeBatcher`
keeps one open batch per aspect-ratio group (quarter-octave steps of height / width) and hands a batch on
when it is full; to keep memory and latency bounded it never holds more than ``window`` images (nor, when
given, ``max_bytes`` of them), handing on the fullest open batch when it would. Images keep their segment
indices, so the order they come out in does not matter to the results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class RawBatch(Generic[Item]):
    """Images (not yet on the device) with their segment indices and names, and failures read before them."""

    indices: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    failures: list[tuple[int, object]] = field(default_factory=list)
    nbytes: int = 0  # the memory its items hold


def aspect_group(height: int, width: int) -> int:
    """The aspect-ratio group of an image: ``round(4 * log2(height / width))`` (0 square, +2 4:3 portrait)."""
    return round(4 * math.log2(max(height, 1) / max(width, 1)))


class ShapeBatcher(Generic[Item]):
    """Batches of at most ``batch_size`` images of one aspect group (or in arrival order, ``by_shape=False``).

    :meth:`add` an image, :meth:`add_failure` an image that failed before the models; each returns the batches
    that are ready (usually none or one). :meth:`drain` hands on what is left at the end.
    """

    def __init__(self, batch_size: int, window: int, *, by_shape: bool = True, max_bytes: int | None = None) -> None:
        if batch_size < 1 or window < batch_size:
            raise ValueError(f"need 1 <= batch_size <= window, got batch_size={batch_size}, window={window}")
        self.batch_size, self.window, self.by_shape, self.max_bytes = batch_size, window, by_shape, max_bytes
        self._open: dict[int, RawBatch[Item]] = {}
        self._failures: list[tuple[int, object]] = []
        self._held = 0
        self._held_bytes = 0

    def add(self, index: int, name: str, item: Item, height: int, width: int, nbytes: int = 0
            ) -> list[RawBatch[Item]]:
        """Add an image (``nbytes``: the memory it holds, counted against ``max_bytes``)."""
        key = aspect_group(height, width) if self.by_shape else 0
        batch = self._open.setdefault(key, RawBatch())
        batch.indices.append(index)
        batch.names.append(name)
        batch.items.append(item)
        batch.nbytes += nbytes
        self._held += 1
        self._held_bytes += nbytes
        if len(batch.items) >= self.batch_size:
            return [self._hand_on(key)]
        if self._held >= self.window or (self.max_bytes is not None and self._held_bytes >= self.max_bytes):
            return [self._hand_on(max(self._open, key=lambda k: len(self._open[k].items)))]
        return []

    def add_failure(self, index: int, failure: object) -> list[RawBatch[Item]]:
        """A failed image rides with the next batch handed on (so it is reported in step with the others)."""
        self._failures.append((index, failure))
        if not self._open and len(self._failures) >= self.batch_size:  # a run of failures: report them now
            return [self._take_failures()]
        return []

    def drain(self) -> Iterator[RawBatch[Item]]:
        """The open batches, fullest first, then any failures left."""
        for key in sorted(self._open, key=lambda k: -len(self._open[k].items)):
            yield self._hand_on(key)
        if self._failures:
            yield self._take_failures()

    def _hand_on(self, key: int) -> RawBatch[Item]:
        batch = self._open.pop(key)
        self._held -= len(batch.items)
        self._held_bytes -= batch.nbytes
        batch.failures, self._failures = self._failures, []
        return batch

    def _take_failures(self) -> RawBatch[Item]:
        batch: RawBatch[Item] = RawBatch(failures=self._failures)
        self._failures = []
        return batch


__all__ = ["RawBatch", "ShapeBatcher", "aspect_group"]
