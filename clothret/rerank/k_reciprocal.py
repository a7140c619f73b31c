"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017) on each query's top-N candidates, so its cost grows with N, never with the gallery.

For one query ``p`` the local set is ``p`` and its N candidates. On it, with the conventions of the
authors' code where the paper leaves a choice open:

- distances are squared Euclidean distances of the l2-normalised vectors, each row divided by its largest;
- ``N(p, k)`` is the ``k + 1`` nearest members of the set (``p`` itself included);
- ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` (k-reciprocal neighbours);
- ``R*(p, k1) = R(p, k1)`` plus every ``R(q, round(k1 / 2))`` of a ``q in R(p, k1)`` that shares at least 2/3 of
  its members with ``R(p, k1)`` (the paper's ">=", Eq. 6; the authors' code uses ">");
- ``V_p[g] = exp(-d(p, g))`` for ``g in R*(p, k1)``, else 0, normalised to sum 1;
- local query expansion: ``V_p`` becomes the mean of ``V_g`` over the ``k2`` nearest ``g`` (``p`` included);
- Jaccard distance ``d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j])``;
- final distance ``(1 - lambda) d_J + lambda d``; candidates are re-ordered by it, ascending.

Other queries never enter a query's local set (each query is re-ranked on its own, as a served query is).
The returned score of a candidate is ``1 - final distance`` (higher is better).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _check(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """Boolean (m, m): ``[i, j]`` when ``j`` is in ``N(i, k)`` and ``i`` in ``N(j, k)``."""
    m = len(rank)
    near = np.zeros((m, m), dtype=bool)
    near[np.arange(m)[:, None], rank[:, : min(k + 1, m)]] = True
    return near & near.T


def local_distances(vectors: np.ndarray, *, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Final k-reciprocal distances from member 0 (the query) of an (m, d) local set to members 1..m-1."""
    _check(k1, k2, lambda_value)
    x = np.asarray(vectors, dtype=np.float64)
    m = len(x)
    if m < 2:
        return np.zeros(0)
    dist = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    rank = np.argsort(dist, axis=1, kind="stable")
    r_full = _reciprocal(rank, k1)
    r_half = _reciprocal(rank, int(np.around(k1 / 2.0)))
    full, half = r_full.astype(np.float32), r_half.astype(np.float32)  # float matmuls: BLAS, exact for counts
    overlap = full @ half.T  # [i, j] = |R(i, k1) & R(j, k1/2)|
    expand = r_full & (3 * overlap >= 2 * half.sum(axis=1)[None, :])
    r_star = r_full | ((expand.astype(np.float32) @ half) > 0)
    weights = np.where(r_star, np.exp(-dist), 0.0)
    v = weights / weights.sum(axis=1, keepdims=True)
    if k2 > 1:
        v = v[rank[:, : min(k2, m)]].mean(axis=1)
    mins = np.minimum(v[0][None, :], v[1:]).sum(axis=1)
    maxs = np.maximum(v[0][None, :], v[1:]).sum(axis=1)
    jaccard = 1.0 - mins / np.maximum(maxs, 1e-12)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[0, 1:]


def k_reciprocal_rerank(
    queries: np.ndarray,
    gallery: np.ndarray,
    rows: np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate ``rows`` (q, N; -1 = none) of the (n, d) ``gallery`` (an array, or
    anything that gives the vectors of an array of rows by indexing, e.g. :class:`clothret.rerank.vectors.GalleryVectors`).

    Returns ``(scores, rows)`` of shape (q, N): the candidates re-ordered by final distance (ascending), each
    scored ``1 - distance``; missing candidates stay at the end as row -1 with score ``-inf``.
    """
    _check(k1, k2, lambda_value)
    q = np.asarray(queries, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or len(rows) != len(q):
        raise ValueError(f"rows must be ({len(q)}, N), got shape {rows.shape}")
    out_rows = np.full_like(rows, -1)
    out_scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    for i in range(len(q)):
        valid = rows[i][rows[i] >= 0]
        if len(valid) == 0:
            continue
        final = local_distances(np.concatenate([q[i : i + 1], np.asarray(gallery[valid], dtype=np.float32)]), k1=k1, k2=k2, lambda_value=lambda_value)
        order = np.argsort(final, kind="stable")
        out_rows[i, : len(valid)] = valid[order]
        out_scores[i, : len(valid)] = 1.0 - final[order]
    return out_scores, out_rows


__all__ = ["k_reciprocal_rerank", "local_distances"]
