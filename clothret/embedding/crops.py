"""Ground-truth garment crops of annotated images, for training and evaluating embedders.

``gt_crops(records)`` reads every image once and cuts out each matchable item's box, optionally with some
context around it (training jitters the box inside that context).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image

from clothret.datasets.records import Box, ImageRecord

logger = logging.getLogger(__name__)

SOURCES = ("shop", "user")


@dataclass(frozen=True)
class GtCrop:
    """One item's pixels (H, W, 3) uint8 RGB; ``box`` is the item's box inside ``pixels`` (pixel x1,y1,x2,y2)."""

    pixels: np.ndarray
    box: Box
    key: tuple[int, int]
    source: str
    image_id: str
    category_id: int


def read_image(url: str) -> np.ndarray:
    """An image file (any fsspec URL) as (H, W, 3) uint8 RGB."""
    with fsspec.open(url, "rb") as f:
        img = Image.open(f)
        img.load()
    return np.asarray(img.convert("RGB"))


def crop_box(image: np.ndarray, box: Box, *, context: float = 0.0) -> tuple[np.ndarray, Box]:
    """Cut ``box`` (grown by ``context`` x its width/height on each side, clipped to the image) out of ``image``.

    Returns the crop and the original box in the crop's pixel coordinates.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ValueError(f"box {tuple(box)} is empty inside a {w}x{h} image")
    bw, bh = x2 - x1, y2 - y1
    cx1 = max(0, math.floor(x1 - context * bw))
    cy1 = max(0, math.floor(y1 - context * bh))
    cx2 = min(w, math.ceil(x2 + context * bw))
    cy2 = min(h, math.ceil(y2 + context * bh))
    return image[cy1:cy2, cx1:cx2], (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)


def gt_crops(
    records: Iterable[ImageRecord], *, sources: Sequence[str] = SOURCES, context: float = 0.0
) -> list[GtCrop]:
    """The crops of every item with ``style > 0`` in images of the given sources, in record order."""
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ValueError(f"unknown source(s) {bad}; valid: {SOURCES}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    out: list[GtCrop] = []
    n_images = 0
    for record in records:
        if record.source not in sources:
            continue
        keys = record.match_keys()
        if not any(keys):
            continue
        image = read_image(record.path)
        n_images += 1
        for item, key in zip(record.items, keys):
            if key is None:
                continue
            pixels, box = crop_box(image, item.bbox, context=context)
            out.append(GtCrop(np.ascontiguousarray(pixels), box, key, record.source, record.image_id, item.category_id))
    logger.info("cut %d ground-truth crops from %d images", len(out), n_images)
    return out


__all__ = ["GtCrop", "SOURCES", "crop_box", "gt_crops", "read_image"]
