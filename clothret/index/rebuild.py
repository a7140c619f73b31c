"""Build an index over a gallery and validate it before it may be published.

    index, figures = build_validated(gallery, config)   # raises PublishRefused when a check fails
    build_id = publish(index_root, index, gallery, {**manifest, **figures}, activate=...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import faiss
import numpy as np

from clothret.index.build import as_features, build_from_plan, search_breadth
from clothret.index.choose import plan_index
from clothret.index.config import IndexConfig
from clothret.index.gallery import Gallery, gather_gallery
from clothret.index.publish import publish
from clothret.index.validate import check_recall, check_reload, recall_at_k, split_rows, tune_breadth

__all__ = ["build_validated", "rebuild_and_publish", "recall_at_k"]

logger = logging.getLogger(__name__)


def build_validated(gallery: Gallery, config: IndexConfig | None = None) -> tuple[faiss.Index, dict]:
    """Build the index ``config`` chooses over the gallery's features and check it can be published.

    Training, tuning (of an unset ``nprobe``/``ef_search``) and validation use disjoint seeded rows
    (:func:`~clothret.index.validate.split_rows`). Raises :class:`~clothret.errors.PublishRefused` when
    recall@10 against exact search on the held-out queries is below ``config.min_recall``, or when the index
    read back from its serialized bytes answers differently. Returns the index and its manifest figures.
    """
    config = config or IndexConfig()
    feats = as_features(gallery.features, "gallery features")
    n, dim = feats.shape
    started = time.perf_counter()
    split = split_rows(n, config)
    plan = plan_index(n, dim, config, n_train=len(split.train))
    index = build_from_plan(feats, plan, split.train)
    build_seconds = time.perf_counter() - started
    tune_recall = None
    if plan.tune_breadth:
        _, tune_recall = tune_breadth(index, feats, split.tune, min_recall=config.min_recall)
    recall = recall_at_k(index, feats, k=10, rows=split.validate)
    check_recall(recall, config.min_recall, kind=plan.kind, n_queries=len(split.validate))
    index_bytes = check_reload(index, feats[split.validate])
    figures = {
        "index_kind": plan.kind,
        "recall_at_10": float(recall),
        "min_recall": config.min_recall,
        "recall_queries": len(split.validate),
        "reload_identical": True,
        "n_vectors": int(n),
        "dim": int(dim),
        "n_train": plan.n_train if plan.kind.startswith("ivf") else 0,
        "index_bytes": index_bytes,
        "build_seconds": round(build_seconds, 3),
    }
    for name in ("nlist", "pq_m", "hnsw_m", "ef_construction"):
        if getattr(plan, name) is not None:
            figures[name] = getattr(plan, name)
    breadth = search_breadth(index)
    if breadth is not None:
        figures["nprobe" if plan.kind.startswith("ivf") else "ef_search"] = breadth
    if tune_recall is not None:
        figures["tune_recall_at_10"] = float(tune_recall)
    logger.info("index validated: %s", figures)
    return index, figures


def rebuild_and_publish(
    *,
    store_url: str,
    version: str,
    segment_ids: Sequence[str],
    index_root: str,
    extra: dict | None = None,
    config: IndexConfig | None = None,
    activate: bool = True,
) -> dict:
    """Gather the segments, build and validate the index, publish it; returns the build's manifest figures."""
    gallery = gather_gallery(store_url, version, segment_ids)
    index, figures = build_validated(gallery, config)
    manifest = {
        "model_version": version,
        "segments": list(segment_ids),
        "n_images": int(len(np.unique(gallery.image_ids))),
        "n_items": int(len(np.unique(gallery.item_ids))),
        "n_boxes": int(len(gallery)),
        **figures,
        **(extra or {}),
    }
    build_id = publish(index_root, index, gallery, manifest, activate=activate)
    return {**manifest, "build_id": build_id, "active": activate}
