"""Street (query) images through the segment engine — the very path the gallery went through — then k-NN
in the index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from clothret.index.results import QueryResult
from clothret.index.search import SearchIndex
from clothret.models import LoadedModels
from clothret.pipeline.engine import run_engine
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.mapper import ImageOutput
from clothret.pipeline.reader import ImageFailure

logger = logging.getLogger(__name__)


def search_images(
    models: LoadedModels,
    index: SearchIndex,
    images: Sequence[tuple[str, str]],
    *,
    k: int = 20,
    batch_size: int = 16,
    engine: EngineConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[QueryResult], dict[str, str]]:
    """Search ``(image_id, uri)`` pairs; returns one result per detection (in the images' order) and the
    failed images' reasons.

    The images are detected, fused and embedded by the segment engine (:func:`~clothret.pipeline.engine.run_engine`,
    ``engine`` settings, batches of ``batch_size`` unless ``engine`` sets one), so a query's features are
    computed exactly as a gallery image's are.
    """
    if index.version != models.version:
        raise ValueError(
            f"index was built with model version {index.version} but the models are version {models.version}"
        )
    per_image: list[list[QueryResult]] = [[] for _ in images]
    failures: dict[str, str] = {}
    done = 0

    def on_output(i: int, out: ImageOutput | ImageFailure) -> None:
        nonlocal done
        image_id = images[i][0]
        if isinstance(out, ImageFailure):
            failures[image_id] = f"{out.kind}: {out.reason}"
        else:
            per_image[i] = index.query_results(image_id, out.detections, out.features, k=k)
        done += 1
        if on_progress:
            on_progress(done, len(images))

    if engine is None:  # a few queries fuse on one thread rather than wait for fusion processes to start
        engine = EngineConfig(fusion_processes=0) if len(images) <= 4 * batch_size else EngineConfig()
    config = engine.with_batch_size(batch_size)
    run_engine([uri for _, uri in images], [image_id for image_id, _ in images], models, on_output, config=config)
    return [r for results in per_image for r in results], failures


__all__ = ["search_images"]
