"""The arrays one segment produces: per image status, per box boxes, scores, categories, features."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STATUS_OK = "ok"


@dataclass
class SegmentResult:
    """Per image: id, item id, content hash, status ("ok", "bad_input", "transient"), reason.
    Per box: the rest."""

    image_ids: list[str]
    item_ids: list[str]
    sha256: list[str]
    status: list[str]
    reasons: list[str]
    box_image: np.ndarray  # (n_boxes,) int32 index into image_ids
    boxes: np.ndarray  # (n_boxes, 4) float32 pixel x1,y1,x2,y2
    scores: np.ndarray  # (n_boxes,) float32
    categories: np.ndarray  # (n_boxes,) int16, 1-13
    features: np.ndarray  # (n_boxes, dim) float16, l2-normalised
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(s != STATUS_OK for s in self.status)
