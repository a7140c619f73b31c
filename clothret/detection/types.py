"""What a detector returns for one image, and the protocol every detector backend follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def box_array(boxes, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 ``(n, 4)`` array of ``x1, y1, x2, y2`` (``(0, 4)`` when empty); a ValueError
    naming ``name`` when the shape is wrong or a coordinate is not finite."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must be an (n, 4) array of x1, y1, x2, y2 boxes, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite coordinates")
    return arr


@dataclass
class Detections:
    """Boxes found in one image: pixel ``x1, y1, x2, y2`` (n, 4) float32, scores (n,), category ids (n,) 1-13."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"Detections need as many scores and labels as boxes: "
                f"{n} boxes, {len(self.scores)} scores, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def select(self, keep: np.ndarray) -> Detections:
        """The subset at the given indices or boolean mask."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


class Detector(Protocol):
    """A batch of RGB images (H, W, 3) uint8 in, one :class:`Detections` per image out."""

    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...
