"""Detector comparisons: train (or reuse) several torchvision detectors, score each and the weighted boxes
fusion of the first 1..n with COCO AP (the paper's Tables 2 and 5). Shared by ``bench/detection.py`` and
``clothret experiment``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from clothret.datasets.records import ImageRecord
from clothret.detection.fusion import FusionConfig, fuse_batch
from clothret.detection.torchvision_backend import TorchvisionDetector, TorchvisionDetectorConfig
from clothret.detection.training import DetectorTrainConfig, train_detector
from clothret.detection.types import Detections
from clothret.evaluation.boxes import iou_matrix
from clothret.evaluation.detection_ap import detection_ap
from clothret.weights import load_card

logger = logging.getLogger(__name__)

ARCHITECTURES = ("fcos", "retinanet", "faster_rcnn")
"""Three families: anchor-free one-stage, anchor-based one-stage, two-stage."""


def model_config(architecture: str, base: dict) -> TorchvisionDetectorConfig:
    """``base`` for one architecture; the foreground cross-entropy only where there is a sigmoid head."""
    ce = float(base.get("class_ce_weight", 1.0)) if architecture in ("fcos", "retinanet") else 0.0
    return TorchvisionDetectorConfig(**{**base, "architecture": architecture, "class_ce_weight": ce})


def train_or_reuse(
    records: list[ImageRecord], model: TorchvisionDetectorConfig, train: DetectorTrainConfig, url: str,
    *, progress: bool = True,
) -> float:
    """Train ``url`` unless its model card says it was trained with the same settings on as many images;
    returns the training seconds (those of the earlier run when reused)."""
    try:
        card = load_card(url)
    except FileNotFoundError:
        card = {}
    same = (
        card.get("config") == model.model_dump(mode="json")
        and card.get("train_config") == train.model_dump(mode="json")
        and card.get("n_images") == len(records)
    )
    if same:
        logger.info("reusing %s (trained in %.0f s)", url, card["seconds"])
        return float(card["seconds"])
    metrics = train_detector(records, model_config=model, train_config=train, weights_url=url, progress=progress,
                             resume=False)
    return float(metrics["seconds"])


def item_recall(records: Sequence[ImageRecord], detections: Sequence[Detections], iou: float = 0.5) -> float:
    """Share of ground-truth items with a detection of their category at IoU >= ``iou``."""
    found = total = 0
    for record, det in zip(records, detections):
        for item in record.items:
            total += 1
            same = det.boxes[det.labels == item.category_id]
            found += int(len(same) > 0 and iou_matrix(same, np.asarray([item.bbox])).max() >= iou)
    return found / total if total else 0.0


def detection_scores(records: Sequence[ImageRecord], detections: Sequence[Detections]) -> dict:
    """AP, AP50, AP75 (COCO), item recall at IoU 0.5 and boxes per image, rounded to 4 places."""
    ap = detection_ap(records, detections)
    return {
        "ap": round(ap["ap"], 4),
        "ap50": round(ap["ap50"], 4),
        "ap75": round(ap["ap75"], 4),
        "recall50": round(item_recall(records, detections), 4),
        "boxes_per_image": round(float(np.mean([len(d) for d in detections])) if detections else 0.0, 2),
    }


def timed_fusion(
    per_detector: Sequence[Sequence[Detections]], sizes: Sequence[tuple[int, int]], weights: Sequence[float],
    config: FusionConfig, *, repeats: int = 3,
) -> tuple[list[Detections], float]:
    """Fused detections and the fusion time in ms per image (best of ``repeats`` runs)."""
    best, fused = float("inf"), []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fused = fuse_batch(list(per_detector), image_sizes=list(sizes), weights=list(weights), config=config)
        best = min(best, time.perf_counter() - t0)
    return fused, 1000.0 * best / max(1, len(sizes))


def run_detectors(
    detectors: dict[str, TorchvisionDetector], images: Sequence[np.ndarray]
) -> tuple[dict[str, list[Detections]], dict[str, float]]:
    """Every detector's raw detections of the images, and its inference ms per image."""
    outputs, ms = {}, {}
    for name, detector in detectors.items():
        t0 = time.perf_counter()
        outputs[name] = detector.detect(list(images))
        ms[name] = round(1000.0 * (time.perf_counter() - t0) / max(1, len(images)), 1)
    return outputs, ms


def fusion_of_first_n(
    records: Sequence[ImageRecord], outputs: dict[str, list[Detections]], sizes: Sequence[tuple[int, int]],
    weights: Sequence[float], config: FusionConfig,
) -> tuple[list[dict], list[Detections]]:
    """One row per n = 1..len(outputs): the scores of the fusion of the first n detectors; and the fused
    detections of all of them."""
    names = list(outputs)
    rows, fused = [], []
    for n in range(1, len(names) + 1):
        fused, ms = timed_fusion([outputs[m] for m in names[:n]], sizes, list(weights)[:n], config)
        rows.append({"n": n, "detectors": names[:n], **detection_scores(records, fused), "fusion_ms_per_image": round(ms, 3)})
    return rows, fused


__all__ = [
    "ARCHITECTURES",
    "detection_scores",
    "fusion_of_first_n",
    "item_recall",
    "model_config",
    "run_detectors",
    "timed_fusion",
    "train_or_reuse",
]
