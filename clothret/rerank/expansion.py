"""Alpha-weighted query expansion (αQE) and database-side augmentation (DBA), Radenović et al. 2018.

αQE replaces a query ``q`` by ``normalise(q + sum_i max(q . g_i, 0) ** alpha * g_i)`` over its ``k`` best
gallery vectors ``g_i``, then searches again. DBA does the same to every gallery vector with its own
``k`` nearest gallery neighbours (itself excluded; itself enters with weight 1, like the query in αQE),
once, before the index is built. ``alpha = 0`` weighs every neighbour 1 (average query expansion).
Vectors are l2-normalised, so inner products are cosine similarities.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faiss
import numpy as np

logger = logging.getLogger(__name__)

BLOCK_ROWS = 16384
"""Gallery rows per exact-search block in :func:`database_side_augmentation`."""


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _check_alpha(alpha: float) -> None:
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")


def alpha_weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    """``max(s, 0) ** alpha`` (``alpha = 0``: 1 for every neighbour)."""
    _check_alpha(alpha)
    s = np.clip(np.asarray(similarities, dtype=np.float64), 0.0, None)
    return np.ones_like(s) if alpha == 0 else s**alpha


def expand(vectors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float) -> np.ndarray:
    """``normalise(v + sum_j w_j n_j)`` per row: (n, d) vectors, (n, k, d) neighbours, (n, k) similarities.

    Neighbour rows that are missing (all-zero vectors, e.g. padding for a short result list) add nothing.
    """
    v = np.asarray(vectors, dtype=np.float32)
    nb = np.asarray(neighbours, dtype=np.float32)
    if nb.ndim != 3 or nb.shape[0] != v.shape[0] or nb.shape[2] != v.shape[1]:
        raise ValueError(f"neighbours must be ({v.shape[0]}, k, {v.shape[1]}), got shape {nb.shape}")
    w = alpha_weights(similarities, alpha).astype(np.float32)
    if w.shape != nb.shape[:2]:
        raise ValueError(f"similarities must be {nb.shape[:2]}, got shape {w.shape}")
    return _normalise(v + np.einsum("nk,nkd->nd", w, nb))


def alpha_query_expansion(
    queries: np.ndarray, gallery: np.ndarray, rows: np.ndarray, similarities: np.ndarray, *, k: int, alpha: float
) -> np.ndarray:
    """αQE of (q, d) queries from their ranked gallery ``rows`` (q, >= k; -1 = none) and ``similarities``.

    ``gallery`` is the (n, d) gallery, or anything that gives the vectors of an array of rows by indexing.
    """
    if k < 1:
        raise ValueError(f"query expansion k must be >= 1, got {k}")
    rows = np.asarray(rows)[:, :k]
    sims = np.asarray(similarities, dtype=np.float32)[:, :k]
    valid = rows >= 0
    flat = np.where(valid, rows, 0).ravel()
    neighbours = np.asarray(gallery[flat], dtype=np.float32).reshape(*rows.shape, -1) * valid[..., None]
    return expand(queries, neighbours, np.where(valid, sims, 0.0), alpha)


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def gallery_neighbours(gallery: np.ndarray, k: int, *, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Each gallery row's ``k`` nearest other rows by exact inner product: (n, k) similarities and rows.

    A row's own entry is removed (when a duplicate row ties with it, one of the two is kept); rows are -1
    where the gallery has fewer than ``k`` others.
    """
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    n = len(g)
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    want = min(k + 1, n)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), -1, dtype=np.int64)
    for block in _blocks(n, block_rows):
        d, i = index.search(g[block], want)
        keep = i != np.arange(block.start, block.stop)[:, None]
        keep[keep.all(axis=1), -1] = False  # a duplicate outranked the row itself: drop the last instead
        m = want - 1
        rows[block, :m] = i[keep].reshape(-1, m)
        sims[block, :m] = d[keep].reshape(-1, m)
    return sims, rows


def database_side_augmentation(gallery: np.ndarray, *, k: int, alpha: float, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """DBA: every (n, d) gallery vector replaced by its αQE over its ``k`` nearest other gallery vectors."""
    if k < 1:
        raise ValueError(f"DBA k must be >= 1, got {k}")
    g = np.asarray(gallery, dtype=np.float32)
    sims, rows = gallery_neighbours(g, k, block_rows=block_rows)
    out = np.empty_like(g)
    for block in _blocks(len(g), block_rows):
        out[block] = alpha_query_expansion(g[block], g, rows[block], sims[block], k=k, alpha=alpha)
    logger.info("database-side augmentation of %d gallery vectors (k=%d, alpha=%s)", len(g), k, alpha)
    return out


__all__ = [
    "alpha_query_expansion",
    "alpha_weights",
    "database_side_augmentation",
    "expand",
    "gallery_neighbours",
]
