"""Street (query) images through the same detect → fuse → embed path, then k-NN in the index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from clothret.index.results import QueryResult
from clothret.index.search import SearchIndex
from clothret.models import LoadedModels
from clothret.pipeline.mapper import map_isolated
from clothret.pipeline.reader import ImageFailure, iter_images

logger = logging.getLogger(__name__)


def search_images(
    models: LoadedModels,
    index: SearchIndex,
    images: Sequence[tuple[str, str]],
    *,
    k: int = 20,
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[QueryResult], dict[str, str]]:
    """Search ``(image_id, uri)`` pairs; returns one result per detection and the failed images' reasons."""
    if index.version != models.version:
        raise ValueError(
            f"index was built with model version {index.version} but the models are version {models.version}"
        )
    results: list[QueryResult] = []
    failures: dict[str, str] = {}
    batch: list[tuple[str, object]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        outputs = map_isolated(models, [img for _, img in batch], [image_id for image_id, _ in batch])
        for (image_id, _), out in zip(batch, outputs):
            if isinstance(out, ImageFailure):
                failures[image_id] = f"{out.kind}: {out.reason}"
            else:
                results.extend(index.query_results(image_id, out.detections, out.features, k=k))
        done += len(batch)
        batch.clear()
        if on_progress:
            on_progress(done, len(images))

    for i, image in iter_images([uri for _, uri in images]):
        if isinstance(image, ImageFailure):
            failures[images[i][0]] = f"{image.kind}: {image.reason}"
            done += 1
            continue
        batch.append((images[i][0], image))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return results, failures
