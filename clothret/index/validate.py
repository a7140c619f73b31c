"""Checks a build must pass before it is published: recall against exact search, identical after reload."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from clothret.errors import PublishRefused
from clothret.index.build import exact_search, search_breadth, set_search_breadth
from clothret.index.config import IndexConfig

logger = logging.getLogger(__name__)

MAX_EF_SEARCH = 2048  # the widest HNSW search the tuner tries


@dataclass(frozen=True)
class RowSplit:
    """Disjoint gallery rows: queries that validate the build, queries that tune it, vectors that train it."""

    validate: np.ndarray
    tune: np.ndarray
    train: np.ndarray


def split_rows(n: int, config: IndexConfig) -> RowSplit:
    """A seeded split of ``range(n)``: up to ``recall_sample`` validation and as many tuning queries (each at
    most a quarter of the gallery), then up to ``train_sample`` training rows among the others, so that
    recall is measured on queries the index was neither trained nor tuned on."""
    if n < 1:
        raise ValueError(f"cannot split an empty gallery (n={n})")
    perm = np.random.default_rng(config.seed).permutation(n)
    n_q = min(config.recall_sample, max(1, n // 4))
    return RowSplit(
        validate=np.sort(perm[:n_q]),
        tune=np.sort(perm[n_q : 2 * n_q]),
        train=np.sort(perm[2 * n_q : 2 * n_q + config.train_sample]),
    )


def exact_kth(features: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact similarity of each query (k capped at the gallery size), from :func:`exact_search`."""
    sims, _ = exact_search(features, queries, k)
    return sims[:, -1]


def recall_against(index: faiss.Index, features: np.ndarray, queries: np.ndarray, kth: np.ndarray, k: int) -> float:
    """Recall@k of ``index`` for ``queries`` given their k-th exact similarities ``kth``.

    A returned vector counts as found when its exact similarity reaches the k-th exact similarity, so
    ties (equal similarities, common among near-duplicate gallery boxes) are not counted as misses.
    """
    k = min(k, len(features))
    _, approx = index.search(queries, k)
    found = 0
    for q, got in enumerate(approx):
        got = got[got >= 0]
        sims = features[got].astype(np.float32) @ queries[q]
        found += min(k, int(np.sum(sims >= kth[q] - 1e-5)))
    return found / (k * len(queries))


def _queries(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        raise ValueError("recall needs at least one query row, got none")
    return np.ascontiguousarray(features[rows], dtype=np.float32)


def recall_at_k(
    index: faiss.Index,
    features: np.ndarray,
    *,
    k: int = 10,
    n_queries: int = 200,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> float:
    """Recall@k of the index against exact search, gallery vectors ``features[rows]`` as queries
    (default: a seeded sample of ``n_queries`` rows); ties count as found (:func:`recall_against`)."""
    if rows is None:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(features), size=min(n_queries, len(features)), replace=False)
    queries = _queries(features, rows)
    return recall_against(index, features, queries, exact_kth(features, queries, k), k)


def tune_breadth(
    index: faiss.Index, features: np.ndarray, rows: np.ndarray, *, min_recall: float, k: int = 10
) -> tuple[int | None, float | None]:
    """Double ``nprobe`` (IVF) or ``efSearch`` (HNSW) until recall@k on ``features[rows]`` reaches
    ``min_recall`` or the breadth its maximum; returns the breadth kept and the recall it gave."""
    breadth = search_breadth(index)
    if breadth is None or len(rows) == 0:
        return breadth, None
    ivf = faiss.try_extract_index_ivf(index)
    most = int(ivf.nlist) if ivf is not None else MAX_EF_SEARCH
    queries = _queries(features, rows)
    kth = exact_kth(features, queries, k)  # once: the exact search is the costly part at scale
    recall = recall_against(index, features, queries, kth, k)
    while recall < min_recall and breadth < most:
        breadth = min(most, breadth * 2)
        set_search_breadth(index, breadth)
        recall = recall_against(index, features, queries, kth, k)
    logger.info("search breadth %d gives recall@%d %.4f on %d tuning queries", breadth, k, recall, len(rows))
    return breadth, recall


def check_recall(recall: float, min_recall: float, *, kind: str, n_queries: int) -> None:
    """Raise :class:`PublishRefused` naming both figures when ``recall`` is below ``min_recall``."""
    if recall < min_recall:
        raise PublishRefused(
            f"publish refused: recall@10 {recall:.4f} of the {kind} index against exact search on {n_queries} "
            f"held-out queries is below min_recall {min_recall}: raise nprobe/ef_search (or leave them unset "
            f"to tune them) or use kind='flat'"
        )


def check_reload(index: faiss.Index, queries: np.ndarray, *, k: int = 10) -> int:
    """Serialize, deserialize and search ``queries`` again; raise :class:`PublishRefused` unless the
    similarities and rows equal the in-memory index's. Returns the size of the serialized index in bytes."""
    data = faiss.serialize_index(index)
    reloaded = faiss.deserialize_index(data)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sims, rows = index.search(q, k)
    sims2, rows2 = reloaded.search(q, k)
    if not (np.array_equal(rows, rows2) and np.array_equal(sims, sims2)):
        differ = int(np.sum(np.any(rows != rows2, axis=1)))
        raise PublishRefused(
            f"publish refused: the {type(index).__name__} read back from its serialized bytes answers {differ} of "
            f"{len(q)} queries differently from the built one"
        )
    return int(data.size)
