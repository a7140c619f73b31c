"""The mapper: a batch of decoded images → fused detections and their concatenated features.

:func:`map_isolated` keeps one image's model error that image's failure: when a batch fails, its images
run again one by one, and only those that fail alone are recorded as failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clothret.detection.crops import crop_boxes
from clothret.detection.fusion import fuse_detections
from clothret.detection.types import Detections
from clothret.errors import is_transient
from clothret.models import LoadedModels
from clothret.pipeline.reader import BAD_INPUT, TRANSIENT, ImageFailure, describe_error

logger = logging.getLogger(__name__)


@dataclass
class ImageOutput:
    """What the pipeline found in one image: fused detections and one feature row per box."""

    detections: Detections
    features: np.ndarray


def fuse_images(
    models: LoadedModels, per_detector: Sequence[Sequence[Detections]], sizes: Sequence[tuple[int, int]]
) -> list[Detections]:
    """Fuse the detectors' boxes image by image; ``per_detector[d][i]`` is detector ``d`` on image ``i``,
    ``sizes[i]`` its (width, height)."""
    return [
        fuse_detections(
            [dets[i] for dets in per_detector], image_size=size, weights=models.wbf_weights, config=models.fusion
        )
        for i, size in enumerate(sizes)
    ]


def detect_and_fuse(models: LoadedModels, images: Sequence[np.ndarray]) -> list[Detections]:
    """Run every detector on the batch, then fuse their boxes per image (also with one detector)."""
    per_detector = [d.detect(images) for d in models.detectors]
    return fuse_images(models, per_detector, [(image.shape[1], image.shape[0]) for image in images])


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


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator (or host) out-of-memory error."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)


def _release_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _model_failure(name: str, exc: Exception) -> ImageFailure:
    if _out_of_memory(exc):
        return ImageFailure(name, TRANSIENT, f"out of memory on this image alone: {describe_error(exc)}")
    return ImageFailure(name, BAD_INPUT, f"model failed on this image: {describe_error(exc)}")


MapFn = Callable[[LoadedModels, Sequence], list[ImageOutput]]
"""``map_fn(models, images)``: one :class:`ImageOutput` per image of a batch, or an exception."""


def map_isolated(
    models: LoadedModels, images: Sequence[np.ndarray], names: Sequence[str], *, map_fn: MapFn = map_batch
) -> list[ImageOutput | ImageFailure]:
    """:func:`map_batch` (or ``map_fn``), with a model error on one image recorded as that image's failure.

    When the batch raises, each image runs alone: one that still fails becomes an :class:`ImageFailure`
    (bad input with the model's error as its reason; transient when it ran out of memory alone), the
    others go through. Transient errors that are not about an image (I/O, a lost connection) are raised.
    ``names`` (image ids) label the log lines and the failures.
    """
    try:
        return list(map_fn(models, images))
    except Exception as exc:  # noqa: BLE001 - sorted out image by image below
        return map_one_by_one(models, images, names, exc, map_fn=map_fn)


def map_one_by_one(
    models: LoadedModels, images: Sequence, names: Sequence[str], batch_error: Exception, *, map_fn: MapFn = map_batch
) -> list[ImageOutput | ImageFailure]:
    """After ``batch_error`` ended a batch in ``map_fn``: run its images one by one (see :func:`map_isolated`)."""
    if is_transient(batch_error) and not _out_of_memory(batch_error):
        raise batch_error
    if len(images) == 1:
        failure = _model_failure(names[0], batch_error)
        logger.warning("image %s: %s", names[0], failure.reason)
        return [failure]
    logger.warning(
        "a batch of %d images failed in the models (%s): running them one by one", len(images),
        describe_error(batch_error),
    )
    if _out_of_memory(batch_error):
        _release_accelerator_memory()
    out: list[ImageOutput | ImageFailure] = []
    for name, image in zip(names, images):
        try:
            out.append(map_fn(models, [image])[0])
        except Exception as exc:  # noqa: BLE001 - this image's own failure
            if is_transient(exc) and not _out_of_memory(exc):
                raise
            out.append(_model_failure(name, exc))
            logger.warning("image %s: %s", name, out[-1].reason)
    failures = [o for o in out if isinstance(o, ImageFailure)]
    if len(failures) == len(out) and len({f.reason for f in failures}) == 1:
        logger.error(
            "every image of a batch of %d failed alone with the same error (%s): the models or the machine, "
            "not these images, are likely at fault; they are recorded as failed (re-run them with --retry-failed)",
            len(out), failures[0].reason,
        )
    return out
