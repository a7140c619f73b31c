"""Gather committed segments, build the index, check it and publish it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from clothret.index.build import build_index, exact_search
from clothret.index.gallery import gather_gallery
from clothret.index.publish import publish

logger = logging.getLogger(__name__)


def recall_at_k(index, features: np.ndarray, *, k: int = 10, n_queries: int = 200, seed: int = 0) -> float:
    """Recall@k of the index against exact search, on a seeded sample of gallery vectors as queries.

    A returned vector counts as found when its exact similarity reaches the k-th exact similarity, so
    ties (equal similarities, common among near-duplicate gallery boxes) are not counted as misses.
    """
    rng = np.random.default_rng(seed)
    sample = features[rng.choice(len(features), size=min(n_queries, len(features)), replace=False)]
    exact_sims, exact = exact_search(features, sample, k)
    k = exact.shape[1]
    _, approx = index.search(np.ascontiguousarray(sample, dtype=np.float32), k)
    found = 0
    for q, rows in enumerate(approx):
        rows = rows[rows >= 0]
        sims = features[rows].astype(np.float32) @ sample[q].astype(np.float32)
        found += min(k, int(np.sum(sims >= exact_sims[q, -1] - 1e-5)))
    return found / (k * len(sample))


def rebuild_and_publish(
    *, store_url: str, version: str, segment_ids: Sequence[str], index_root: str, extra: dict | None = None
) -> dict:
    """Build an index over the given segments and publish it; returns the build's manifest figures."""
    gallery = gather_gallery(store_url, version, segment_ids)
    index = build_index(gallery.features)
    recall = recall_at_k(index, gallery.features)
    manifest = {
        "model_version": version,
        "segments": list(segment_ids),
        "n_images": int(len(np.unique(gallery.image_ids))),
        "n_items": int(len(np.unique(gallery.item_ids))),
        "n_boxes": int(len(gallery)),
        "recall_at_10": recall,
        **(extra or {}),
    }
    build_id = publish(index_root, index, gallery, manifest)
    return {**manifest, "build_id": build_id}
