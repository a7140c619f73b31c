"""Gallery-side post-processing: the vectors an index holds and the transform its queries need.

Whitening comes first (learned on the gallery), then database-side augmentation in the whitened space,
so the queries (whitened by the same map, expanded or not) and the gallery vectors live in one space.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import faiss
import numpy as np

from clothret.index.gallery import Gallery
from clothret.rerank.config import PostProcessConfig
from clothret.rerank.expansion import database_side_augmentation
from clothret.rerank.whitening import apply_whitening, learn_pca_whitening, whitening_transform, with_pretransform

logger = logging.getLogger(__name__)


def postprocess_gallery(
    features: np.ndarray, config: PostProcessConfig
) -> tuple[np.ndarray, list[faiss.VectorTransform], dict]:
    """``(vectors to index, query transforms, figures)`` for (n, d) l2-normalised gallery features.

    The transforms are empty when nothing whitens; ``figures`` records the gallery-side settings and the
    indexed dimension under ``"postprocess"`` (for a build manifest).
    """
    started = time.perf_counter()
    x = np.ascontiguousarray(features, dtype=np.float32)
    transforms: list[faiss.VectorTransform] = []
    if config.whiten:
        whitening = learn_pca_whitening(x, dim=config.whiten_dim, shrinkage=config.whiten_shrinkage)
        x = apply_whitening(x, whitening)
        transforms = whitening_transform(whitening)
    if config.dba_k > 0:
        x = database_side_augmentation(x, k=config.dba_k, alpha=config.dba_alpha)
    figures = {"indexed_dim": int(x.shape[1]), "seconds": round(time.perf_counter() - started, 3)}
    return x, transforms, figures


def manifest_entry(config: PostProcessConfig, figures: dict | None = None) -> dict:
    """What a build manifest records under ``"postprocess"``: the settings (gallery- and query-side) and figures."""
    return {"config": config.model_dump(mode="json"), **(figures or {})}


def postprocess_build(
    gallery: Gallery, config: PostProcessConfig
) -> tuple[Gallery, Callable[[faiss.Index], faiss.Index], dict]:
    """For an index build: the gallery with the vectors to index, a function that puts the query transform
    in front of the built index, and the manifest fields (``{"postprocess": ...}``).

        gallery, finish, fields = postprocess_build(gallery, config)
        index, figures = build_validated(gallery, index_config)
        index = finish(index)                # whitens each query itself; unchanged without whitening
    """
    if not config.changes_gallery:
        return gallery, lambda index: index, {"postprocess": manifest_entry(config)}
    vectors, transforms, figures = postprocess_gallery(gallery.features, config)
    logger.info("gallery post-processing for the build: %s, %d -> %d dimensions", config.label(),
                gallery.features.shape[1], vectors.shape[1])
    return (
        dataclasses.replace(gallery, features=vectors),
        lambda index: with_pretransform(index, transforms),
        {"postprocess": manifest_entry(config, figures)},
    )


__all__ = ["manifest_entry", "postprocess_build", "postprocess_gallery"]
