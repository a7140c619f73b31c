"""COCO-style detection AP (pycocotools) of per-image detections against annotated records.

Ground truth is every item of every record (its pixel box and category id 1-13); predictions are one
:class:`~clothret.detection.types.Detections` per record, in the same order. AP is COCO's: mean over the
categories that have ground truth of the 101-point interpolated precision, averaged over IoU 0.50:0.95
(``ap``), or at IoU 0.5 (``ap50``) and 0.75 (``ap75``); at most 100 detections per image count.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clothret.datasets.coco import coco_detection_dict
from clothret.datasets.records import ImageRecord
from clothret.detection.types import Detections

logger = logging.getLogger(__name__)


def _coco_ground_truth(records: Sequence[ImageRecord]) -> COCO:
    gt = COCO()
    gt.dataset = coco_detection_dict(records, file_name=lambda r: r.image_id)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _coco_predictions(detections: Sequence[Detections]) -> np.ndarray:
    """An (n, 7) array of ``image_id, x, y, w, h, score, category_id`` rows (pycocotools' loadRes form)."""
    rows = []
    for i, det in enumerate(detections):
        if not isinstance(det, Detections):
            raise ValueError(f"detections[{i}] must be Detections, got {type(det).__name__}")
        if len(det) == 0:
            continue
        boxes = det.boxes.astype(np.float64)
        if not np.isfinite(boxes).all() or not np.isfinite(det.scores).all():
            raise ValueError(f"detections[{i}] holds non-finite boxes or scores")
        wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)
        ids = np.full((len(det), 1), i + 1, np.float64)
        rows.append(np.hstack([ids, boxes[:, :2], wh, det.scores[:, None].astype(np.float64), det.labels[:, None]]))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def detection_ap(records: Sequence[ImageRecord], detections: Sequence[Detections]) -> dict[str, float]:
    """COCO ``ap``, ``ap50`` and ``ap75`` of ``detections[i]`` against ``records[i]``'s items.

    Also returns ``n_images``, ``n_items`` and ``n_detections``. Detections of a category with no ground
    truth anywhere do not count (COCO's rule). No detection at all gives 0.0.
    """
    if len(records) != len(detections):
        raise ValueError(f"got {len(detections)} detections for {len(records)} records: need one per record")
    n_items = sum(len(r.items) for r in records)
    if n_items == 0:
        raise ValueError("the records hold no items: AP needs at least one ground-truth box")
    preds = _coco_predictions(detections)
    counts = {"n_images": len(records), "n_items": n_items, "n_detections": int(len(preds))}
    if len(preds) == 0:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, **counts}
    gt = _coco_ground_truth(records)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(preds)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in evaluator.stats[:3])
    logger.debug("detection AP %.4f, AP50 %.4f, AP75 %.4f on %d images", ap, ap50, ap75, len(records))
    return {"ap": ap, "ap50": ap50, "ap75": ap75, **counts}


__all__ = ["detection_ap"]
