"""The mapper: a batch of decoded images → fused detections and their concatenated features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clothret.detection.crops import crop_boxes
from clothret.detection.fusion import fuse_detections
from clothret.detection.types import Detections
from clothret.models import LoadedModels


@dataclass
class ImageOutput:
    """What the pipeline found in one image: fused detections and one feature row per box."""

    detections: Detections
    features: np.ndarray


def detect_and_fuse(models: LoadedModels, images: Sequence[np.ndarray]) -> list[Detections]:
    """Run every detector on the batch, then fuse their boxes per image (also with one detector)."""
    per_detector = [d.detect(images) for d in models.detectors]
    fused = []
    for i, image in enumerate(images):
        height, width = image.shape[:2]
        fused.append(
            fuse_detections(
                [dets[i] for dets in per_detector],
                image_size=(width, height),
                weights=models.wbf_weights,
                config=models.fusion,
            )
        )
    return fused


def map_batch(models: LoadedModels, images: Sequence[np.ndarray]) -> list[ImageOutput]:
    """Detect, fuse, crop and embed a batch of images; crops of the whole batch embed together."""
    fused = detect_and_fuse(models, images)
    crops = [c for image, dets in zip(images, fused) for c in crop_boxes(image, dets.boxes)]
    features = models.embed(crops)
    out, start = [], 0
    for dets in fused:
        out.append(ImageOutput(dets, features[start : start + len(dets)]))
        start += len(dets)
    return out
