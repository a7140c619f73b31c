"""One segment of the catalogue through the segment engine (read → decode → detect → fuse → embed) → arrays, ready
for the feature store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from clothret.datasets.catalogue import ManifestEntry
from clothret.models import LoadedModels
from clothret.pipeline.engine import run_engine
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.mapper import ImageOutput
from clothret.pipeline.reader import ImageFailure, ImageLimits
from clothret.pipeline.result import STATUS_OK, SegmentResult

logger = logging.getLogger(__name__)


def run_segment(
    entries: Sequence[ManifestEntry],
    models: LoadedModels,
    *,
    batch_size: int | None = None,
    engine: EngineConfig = EngineConfig(),
    limits: ImageLimits = ImageLimits(),
    on_progress: Callable[[int, int], None] | None = None,
) -> SegmentResult:
    """Detect, fuse, embed every image of a segment; failed images are recorded, never raised.

    The images go through the segment engine (:mod:`clothret.pipeline.engine`) with the ``engine``
    settings, in batches of ``engine.batch_size`` when set, else ``batch_size``, else 16. An image fails as bad input when
    it cannot be decoded, is outside ``limits`` or makes a model fail on its own (see
    :func:`~clothret.pipeline.mapper.map_isolated`); as transient when it could not be read.
    """
    if hasattr(models, "simulate_segment"):  # clothret.simulated (benches, tests): no pixel is read
        return models.simulate_segment(entries)
    start = time.perf_counter()
    engine = engine.with_batch_size(batch_size)
    n = len(entries)
    status = [STATUS_OK] * n
    reasons = [""] * n
    outputs: list = [None] * n
    done = 0

    def record(index: int, out: ImageOutput | ImageFailure) -> None:
        nonlocal done
        if isinstance(out, ImageFailure):
            status[index], reasons[index] = out.kind, out.reason
            logger.warning("skipped image %s (%s): %s", entries[index].image_id, out.kind, out.reason)
        else:
            outputs[index] = out
        done += 1
        if on_progress is not None and (done % engine.batch_size == 0 or done == n):
            on_progress(done, n)

    run_engine(
        [e.uri for e in entries], [e.image_id for e in entries], models, record, config=engine, limits=limits
    )

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
