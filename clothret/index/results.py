"""What a search returns for one query detection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clothret.datasets.records import Box


@dataclass
class QueryResult:
    """One detection in a query image and its ranked gallery boxes (best first).

    ``gallery_image_ids[r]`` and ``gallery_boxes[r]`` (pixel x1,y1,x2,y2) are rank ``r``;
    ``gallery_item_ids[r]`` is the shop item that box belongs to, ``similarities[r]`` its score.
    """

    query_image_id: str
    box: Box
    score: float
    category_id: int
    gallery_image_ids: list[str]
    gallery_boxes: np.ndarray
    gallery_item_ids: list[str]
    similarities: np.ndarray
