"""Weighted boxes fusion of several detectors' boxes for one image (ensemble-boxes' WBF).

This is the one place where pixel ``x1, y1, x2, y2`` boxes become the normalised ``[0, 1]`` boxes that
ensemble-boxes wants, and back (:func:`to_normalized`, :func:`to_pixels`). Inputs are validated here,
because ensemble-boxes prints and calls ``exit()`` on some bad inputs (unequal lengths, an unknown
``conf_type``) and silently ignores others; should it exit all the same, the ``SystemExit`` becomes a
``RuntimeError`` instead of ending the worker process.
Labels go in and come out as DeepFashion2 category ids (ints).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from ensemble_boxes import weighted_boxes_fusion
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clothret.detection.types import Detections, box_array

logger = logging.getLogger(__name__)

CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
"""The fused-score rules ensemble-boxes' ``weighted_boxes_fusion`` knows."""


class FusionConfig(BaseModel):
    """Weighted boxes fusion parameters.

    ``score_prefilter`` drops each detector's boxes below that score before fusion (the fast numpy path;
    WBF's cost grows with the box count), ``skip_box_thr`` is ensemble-boxes' own threshold. Fused boxes
    narrower or shorter than ``min_box_size`` pixels are dropped, then the ``max_boxes_per_image``
    highest-scoring ones are kept (``None``: all).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    iou_thr: float = Field(0.55, gt=0.0, le=1.0)
    skip_box_thr: float = Field(0.0, ge=0.0, le=1.0)
    conf_type: str = "avg"
    allows_overflow: bool = False
    score_prefilter: float = Field(0.05, ge=0.0, le=1.0)
    max_boxes_per_image: int | None = Field(100, ge=1)
    min_box_size: float = Field(1.0, ge=0.0)

    @field_validator("conf_type")
    @classmethod
    def _known_conf_type(cls, value: str) -> str:
        if value not in CONF_TYPES:
            raise ValueError(f"unknown conf_type {value!r}; valid: {list(CONF_TYPES)}")
        return value


def _image_size(image_size: tuple[int, int]) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in image_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from exc
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"image_size must be two positive numbers (width, height), got {image_size!r}")
    return width, height


def _check_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    arr = box_array(boxes, name)
    bad = np.nonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))[0]
    if len(bad):
        raise ValueError(f"{name}: box {int(bad[0])} has x2 < x1 or y2 < y1: {arr[bad[0]].tolist()}")
    return arr


def to_normalized(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Pixel ``x1, y1, x2, y2`` boxes -> ``[0, 1]`` boxes (clipped to the image), float64 (n, 4)."""
    width, height = _image_size(image_size)
    arr = _check_boxes(boxes, "boxes")
    scale = np.array([width, height, width, height])
    return np.clip(arr / scale, 0.0, 1.0)


def to_pixels(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Normalised ``[0, 1]`` boxes -> pixel ``x1, y1, x2, y2`` boxes, float64 (n, 4)."""
    width, height = _image_size(image_size)
    arr = _check_boxes(boxes, "normalised boxes")
    if len(arr) and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"normalised boxes must lie in [0, 1], got values in [{arr.min()}, {arr.max()}]")
    return arr * np.array([width, height, width, height])


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    values = [float(w) for w in weights]
    if len(values) != n:
        raise ValueError(f"weights has {len(values)} entries but there are {n} detectors")
    bad = [w for w in values if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"weights must be positive finite numbers, got {values}")
    return values


def fuse_detections(
    per_detector: Sequence[Detections],
    *,
    image_size: tuple[int, int],
    weights: Sequence[float] | None = None,
    config: FusionConfig = FusionConfig(),
) -> Detections:
    """Fuse one image's detections from several detectors (width, height = ``image_size``) into one set.

    Boxes of the same category that overlap by more than ``iou_thr`` merge into their score-weighted
    mean; the fused score follows ``conf_type``. One detector goes through the same code (its own
    overlapping boxes merge). Returns pixel boxes sorted by descending score.
    """
    if len(per_detector) == 0:
        raise ValueError("per_detector is empty: fusion needs the detections of at least one detector")
    w = _check_weights(weights, len(per_detector))
    width, height = _image_size(image_size)
    boxes_list, scores_list, labels_list = [], [], []
    for d, det in enumerate(per_detector):
        if not isinstance(det, Detections):
            raise ValueError(f"per_detector[{d}] must be Detections, got {type(det).__name__}")
        boxes = _check_boxes(det.boxes, f"per_detector[{d}].boxes")
        scores = det.scores.astype(np.float64)
        if len(scores) and not (np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0):
            raise ValueError(f"per_detector[{d}].scores must lie in [0, 1]")
        labels = det.labels
        if len(labels) and labels.min() < 1:
            raise ValueError(f"per_detector[{d}].labels must be category ids >= 1, got min {int(labels.min())}")
        norm = to_normalized(boxes, (width, height))
        wide = (norm[:, 2] - norm[:, 0]) * width >= max(config.min_box_size, 1e-9)
        tall = (norm[:, 3] - norm[:, 1]) * height >= max(config.min_box_size, 1e-9)
        keep = (scores >= config.score_prefilter) & wide & tall
        boxes_list.append(norm[keep])
        scores_list.append(scores[keep])
        labels_list.append(labels[keep])
    if sum(len(s) for s in scores_list) == 0:
        return Detections.empty()

    try:
        fused, scores, labels = weighted_boxes_fusion(
            boxes_list,
            scores_list,
            labels_list,
            weights=w,
            iou_thr=config.iou_thr,
            skip_box_thr=config.skip_box_thr,
            conf_type=config.conf_type,
            allows_overflow=config.allows_overflow,
        )
    except SystemExit as exc:  # ensemble-boxes calls exit() on inputs it rejects
        raise RuntimeError(f"ensemble-boxes rejected the fusion inputs (conf_type {config.conf_type!r})") from exc
    pixels = to_pixels(np.clip(np.asarray(fused, np.float64).reshape(-1, 4), 0.0, 1.0), (width, height))
    scores = np.asarray(scores, np.float64)
    labels = np.rint(np.asarray(labels, np.float64)).astype(np.int64)
    big = ((pixels[:, 2] - pixels[:, 0]) >= config.min_box_size) & ((pixels[:, 3] - pixels[:, 1]) >= config.min_box_size)
    pixels, scores, labels = pixels[big], scores[big], labels[big]
    order = np.argsort(-scores, kind="stable")
    if config.max_boxes_per_image is not None:
        order = order[: config.max_boxes_per_image]
    return Detections(pixels[order], scores[order], labels[order])


def fuse_batch(
    per_detector: Sequence[Sequence[Detections]],
    *,
    image_sizes: Sequence[tuple[int, int]],
    weights: Sequence[float] | None = None,
    config: FusionConfig = FusionConfig(),
) -> list[Detections]:
    """:func:`fuse_detections` for a batch: ``per_detector[d][i]`` is detector ``d`` on image ``i``."""
    n = len(image_sizes)
    for d, dets in enumerate(per_detector):
        if len(dets) != n:
            raise ValueError(f"detector {d} returned {len(dets)} detections for {n} images")
    return [
        fuse_detections([dets[i] for dets in per_detector], image_size=image_sizes[i], weights=weights, config=config)
        for i in range(n)
    ]


__all__ = ["CONF_TYPES", "FusionConfig", "fuse_batch", "fuse_detections", "to_normalized", "to_pixels"]
