"""One segment of the catalogue through reader → mapper → arrays, ready for the feature store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from clothret.datasets.catalogue import ManifestEntry
from clothret.models import LoadedModels
from clothret.pipeline.mapper import map_isolated
from clothret.pipeline.reader import ImageFailure, ImageLimits, iter_images
from clothret.pipeline.result import STATUS_OK, SegmentResult

logger = logging.getLogger(__name__)


def run_segment(
    entries: Sequence[ManifestEntry],
    models: LoadedModels,
    *,
    batch_size: int = 16,
    limits: ImageLimits = ImageLimits(),
    on_progress: Callable[[int, int], None] | None = None,
) -> SegmentResult:
    """Detect, fuse, embed every image of a segment; failed images are recorded, never raised.

    An image fails as bad input when it cannot be decoded, is outside ``limits`` or makes a model fail
    on its own (see :func:`map_isolated`); as transient when it could not be read.
    """
    start = time.perf_counter()
    n = len(entries)
    status = [STATUS_OK] * n
    reasons = [""] * n
    outputs: list = [None] * n
    batch_idx: list[int] = []
    batch_imgs: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done
        names = [entries[i].image_id for i in batch_idx]
        for i, out in zip(batch_idx, map_isolated(models, batch_imgs, names)):
            if isinstance(out, ImageFailure):
                status[i], reasons[i] = out.kind, out.reason
            else:
                outputs[i] = out
        done += len(batch_idx)
        batch_idx.clear()
        batch_imgs.clear()
        if on_progress is not None:
            on_progress(done, n)

    for index, image in iter_images([e.uri for e in entries], limits=limits):
        if isinstance(image, ImageFailure):
            status[index], reasons[index] = image.kind, image.reason
            logger.warning("skipped image %s (%s): %s", entries[index].image_id, image.kind, image.reason)
            done += 1
            continue
        batch_idx.append(index)
        batch_imgs.append(image)
        if len(batch_imgs) >= batch_size:
            flush()
    if batch_imgs:
        flush()

    dim = models.dim
    box_image, boxes, scores, cats, feats = [], [], [], [], []
    for i, out in enumerate(outputs):
        if out is None:
            continue
        k = len(out.detections)
        box_image.append(np.full(k, i, np.int32))
        boxes.append(out.detections.boxes)
        scores.append(out.detections.scores)
        cats.append(out.detections.labels.astype(np.int16))
        feats.append(out.features.astype(np.float16))
    result = SegmentResult(
        image_ids=[e.image_id for e in entries],
        item_ids=[e.item_id for e in entries],
        sha256=[e.sha256 for e in entries],
        status=status,
        reasons=reasons,
        box_image=np.concatenate(box_image) if box_image else np.zeros(0, np.int32),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        categories=np.concatenate(cats) if cats else np.zeros(0, np.int16),
        features=np.concatenate(feats) if feats else np.zeros((0, dim), np.float16),
        seconds=time.perf_counter() - start,
    )
    result.counts = {
        "images": n,
        "images_ok": n - result.n_failed,
        "images_failed": result.n_failed,
        "boxes": int(len(result.boxes)),
    }
    logger.info(
        "segment of %d images: %d boxes, %d failed, %.1f s", n, len(result.boxes), result.n_failed, result.seconds
    )
    return result
