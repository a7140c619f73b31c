"""Build a FAISS index over gallery features (inner product on l2-normalised vectors = cosine)."""

from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)


def build_index(features: np.ndarray) -> faiss.Index:
    """An exact inner-product index over (n, dim) float32 features."""
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be a non-empty (n, dim) array, got shape {features.shape}")
    feats = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    logger.info("built %s over %d vectors of dim %d", type(index).__name__, index.ntotal, index.d)
    return index


def exact_search(features: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference: top-k inner products with numpy (for tests and recall checks)."""
    sims = queries.astype(np.float32) @ features.astype(np.float32).T
    k = min(k, features.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx
