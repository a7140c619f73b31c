"""Cut the detected boxes out of an image, for the embedders."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def crop_boxes(image: np.ndarray, boxes: np.ndarray, *, pad: float = 0.0) -> list[np.ndarray]:
    """One crop (a copy) per pixel ``x1, y1, x2, y2`` box of an (H, W) or (H, W, C) image.

    ``pad`` grows each box by that fraction of its width and height on every side. Boxes are clipped to
    the image, rounded outwards to whole pixels, and are at least 1x1 pixel (a box wholly outside the
    image gives the 1-pixel crop at the nearest edge).
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) numpy array, got shape {shape}")
    if not (math.isfinite(pad) and pad >= 0):
        raise ValueError(f"pad must be a finite number >= 0, got {pad}")
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be an (n, 4) array of x1, y1, x2, y2, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes hold non-finite coordinates")
    height, width = image.shape[:2]
    bw = np.clip(arr[:, 2] - arr[:, 0], 0.0, None)
    bh = np.clip(arr[:, 3] - arr[:, 1], 0.0, None)
    x1 = np.floor(arr[:, 0] - pad * bw)
    y1 = np.floor(arr[:, 1] - pad * bh)
    x2 = np.ceil(arr[:, 2] + pad * bw)
    y2 = np.ceil(arr[:, 3] + pad * bh)
    x1 = np.clip(x1, 0, width - 1).astype(np.int64)
    y1 = np.clip(y1, 0, height - 1).astype(np.int64)
    x2 = np.maximum(np.clip(x2, 0, width).astype(np.int64), x1 + 1)
    y2 = np.maximum(np.clip(y2, 0, height).astype(np.int64), y1 + 1)
    return [image[top:bottom, left:right].copy() for left, top, right, bottom in zip(x1, y1, x2, y2)]


__all__ = ["crop_boxes"]
