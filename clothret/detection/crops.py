"""Cut the detected boxes out of an image, for the embedders: numpy crops (:func:`crop_boxes`), or crops cut
and resized on the images' device (:func:`crop_resized`); both cut the same whole pixels (:func:`pixel_edges`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from clothret.detection.types import box_array

logger = logging.getLogger(__name__)


def _check_boxes(boxes: np.ndarray, pad: float) -> np.ndarray:
    if not (math.isfinite(pad) and pad >= 0):
        raise ValueError(f"pad must be a finite number >= 0, got {pad}")
    return box_array(boxes)


def pixel_edges(boxes: np.ndarray, width: int, height: int, *, pad: float = 0.0) -> np.ndarray:
    """The whole-pixel ``left, top, right, bottom`` (n, 4) int64 that :func:`crop_boxes` cuts for each box."""
    arr = _check_boxes(boxes, pad)
    bw = np.clip(arr[:, 2] - arr[:, 0], 0.0, None)
    bh = np.clip(arr[:, 3] - arr[:, 1], 0.0, None)
    x1 = np.clip(np.floor(arr[:, 0] - pad * bw), 0, width - 1).astype(np.int64)
    y1 = np.clip(np.floor(arr[:, 1] - pad * bh), 0, height - 1).astype(np.int64)
    x2 = np.maximum(np.clip(np.ceil(arr[:, 2] + pad * bw), 0, width).astype(np.int64), x1 + 1)
    y2 = np.maximum(np.clip(np.ceil(arr[:, 3] + pad * bh), 0, height).astype(np.int64), y1 + 1)
    return np.stack([x1, y1, x2, y2], axis=1)


def crop_boxes(image: np.ndarray, boxes: np.ndarray, *, pad: float = 0.0) -> list[np.ndarray]:
    """One crop (a copy) per pixel ``x1, y1, x2, y2`` box of an (H, W) or (H, W, C) image.

    ``pad`` grows each box by that fraction of its width and height on every side. Boxes are clipped to
    the image, rounded outwards to whole pixels, and are at least 1x1 pixel (a box wholly outside the
    image gives the 1-pixel crop at the nearest edge).
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) numpy array, got shape {shape}")
    height, width = image.shape[:2]
    edges = pixel_edges(boxes, width, height, pad=pad)
    return [image[top:bottom, left:right].copy() for left, top, right, bottom in edges]


def crop_resized(images: Sequence[torch.Tensor], boxes: Sequence[np.ndarray], size: int, *, pad: float = 0.0) -> torch.Tensor:
    """The crops of :func:`crop_boxes`, resized to ``size`` x ``size``, cut on the images' device.

    ``images`` are (C, H, W) tensors (uint8 or float) on one device, ``boxes[i]`` the pixel boxes of image
    ``i``. Returns (n, C, size, size) float32 in the images' value range, the boxes of image 0 first. Each
    crop is ``torchvision.ops.roi_align`` over the crop's whole pixels (``aligned=True``) with adaptive
    sampling: an output pixel averages ``ceil(crop side / size)`` bilinear samples per side, which stands in
    for the antialiasing of a bilinear resize when a crop shrinks, and is bilinear interpolation at the
    same sample points as PIL's when it grows. Samples within half a pixel of a crop's edge blend in the
    image's pixels beyond it, where PIL (resizing the cut-out crop) repeats the edge pixel: only crops a few
    pixels wide differ much (tests/test_crops_resized.py measures it).
    """
    from torchvision.ops import roi_align

    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box arrays")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    device = images[0].device if len(images) else torch.device("cpu")
    channels = int(images[0].shape[0]) if len(images) else 3
    edges = [pixel_edges(b, int(img.shape[-1]), int(img.shape[-2]), pad=pad) for img, b in zip(images, boxes)]
    counts = [len(e) for e in edges]
    out = torch.empty((sum(counts), channels, size, size), dtype=torch.float32, device=device)
    starts = np.cumsum([0] + counts)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        if counts[i]:
            groups.setdefault((int(img.shape[-2]), int(img.shape[-1])), []).append(i)
    for members in groups.values():
        rois = np.concatenate([
            np.concatenate([np.full((counts[i], 1), j, np.float32), edges[i].astype(np.float32)], axis=1)
            for j, i in enumerate(members)
        ])
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
        stacked = torch.stack([images[i] for i in members]).float()
        crops = roi_align(
            stacked, torch.from_numpy(rois).to(device), output_size=size, spatial_scale=1.0, sampling_ratio=0,
            aligned=True,
        )
        out[torch.from_numpy(rows).to(device)] = crops
    return out


__all__ = ["crop_boxes", "crop_resized", "pixel_edges"]
