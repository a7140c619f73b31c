"""Build a FAISS index over gallery features (inner product on l2-normalised vectors = cosine).

The type and parameters come from :func:`clothret.index.choose.plan_index`; IVF kinds train on a seeded sample
and, when faiss sees a GPU, train and add there and come back as a CPU index (the one that gets written).
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np

from clothret.index.choose import PQ_NBITS, IndexPlan, plan_index
from clothret.index.config import IndexConfig

logger = logging.getLogger(__name__)

ADD_BLOCK = 65_536  # vectors added per call: bounds the GPU's temporary memory
EXACT_BLOCK = 32_768  # gallery rows per block of the brute-force reference
GPU_KINDS = ("ivf_flat", "ivf_sq", "ivf_pq")
HNSW_QUANTIZER_M = 32  # links per centroid of an HNSW coarse quantizer
HNSW_QUANTIZER_EF = 64  # its search breadth when assigning vectors to lists  # flat gains nothing from a GPU round trip; hnsw has no GPU build here


def as_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    """``features`` as a contiguous float32 (n, dim) array; ValueError naming the shape otherwise."""
    if not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, dim) array, got {getattr(features, 'shape', type(features))}")
    return np.ascontiguousarray(features, dtype=np.float32)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sorted sample of ``min(n, size)`` distinct row numbers of ``range(n)``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def new_index(plan: IndexPlan) -> faiss.Index:
    """An empty (untrained) inner-product index of the planned kind."""
    d, ip = plan.dim, faiss.METRIC_INNER_PRODUCT
    if plan.kind == "flat":
        return faiss.IndexFlatIP(d)
    if plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, plan.hnsw_m, ip)
        index.hnsw.efConstruction = plan.ef_construction
        return index
    if plan.quantizer == "hnsw":
        quantizer = faiss.IndexHNSWFlat(d, HNSW_QUANTIZER_M, ip)
        quantizer.hnsw.efSearch = HNSW_QUANTIZER_EF
    else:
        quantizer = faiss.IndexFlatIP(d)
    if plan.kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, d, plan.nlist, ip)
    elif plan.kind == "ivf_sq":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, plan.nlist, faiss.ScalarQuantizer.QT_fp16, ip)
    elif plan.kind == "ivf_pq":
        index = faiss.IndexIVFPQ(quantizer, d, plan.nlist, plan.pq_m, PQ_NBITS, ip)
    else:
        raise ValueError(f"no index for kind {plan.kind!r}; valid kinds: flat, ivf_flat, ivf_sq, ivf_pq, hnsw")
    return index  # faiss's Python wrapper keeps ``quantizer`` alive as long as ``index``


def search_breadth(index: faiss.Index) -> int | None:
    """``nprobe`` of an IVF index, ``efSearch`` of an HNSW one, ``None`` for other (exact) indexes."""
    if hasattr(index, "hnsw"):
        return int(index.hnsw.efSearch)
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nprobe)


def set_search_breadth(index: faiss.Index, value: int) -> None:
    """Set ``nprobe`` (IVF, at most nlist) or ``efSearch`` (HNSW); ValueError for an exact index."""
    if value < 1:
        raise ValueError(f"search breadth must be >= 1, got {value}")
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(value)
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"{type(index).__name__} has no search breadth (only IVF nprobe and HNSW efSearch)")
    ivf.nprobe = int(min(value, ivf.nlist))


def _gpu_clone(index: faiss.Index) -> tuple[faiss.Index, object] | None:
    """A GPU copy of ``index`` and its resources (keep both alive), or None without a usable GPU."""
    if not hasattr(faiss, "index_cpu_to_gpu") or faiss.get_num_gpus() == 0:
        return None
    try:
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, index), resources
    except RuntimeError as exc:  # e.g. a PQ code size the GPU kernels do not support
        logger.warning("building %s on the CPU: the GPU refused it (%s)", type(index).__name__, exc)
        return None


def build_from_plan(features: np.ndarray, plan: IndexPlan, train_rows: np.ndarray | None = None) -> faiss.Index:
    """Build the planned index over ``features``, training on ``features[train_rows]`` when it needs it."""
    feats = as_features(features)
    if feats.shape != (plan.n_vectors, plan.dim):
        raise ValueError(f"features of shape {feats.shape} do not match the plan ({plan.n_vectors}, {plan.dim})")
    started = time.perf_counter()
    index = new_index(plan)
    gpu = _gpu_clone(index) if plan.kind in GPU_KINDS and plan.quantizer != "hnsw" else None
    target = gpu[0] if gpu else index
    if not target.is_trained:
        rows = np.arange(plan.n_vectors) if train_rows is None else np.asarray(train_rows)
        target.train(feats[rows])
    for start in range(0, len(feats), ADD_BLOCK):
        target.add(feats[start : start + ADD_BLOCK])
    if gpu:
        index = faiss.index_gpu_to_cpu(target)
    if plan.nprobe is not None:
        set_search_breadth(index, plan.nprobe)
    if plan.ef_search is not None:
        set_search_breadth(index, plan.ef_search)
    logger.info(
        "built %s over %d vectors of dim %d on the %s in %.1fs (%s)", type(index).__name__, index.ntotal, index.d,
        "GPU" if gpu else "CPU", time.perf_counter() - started, plan.figures(),
    )
    return index


def build_index(
    features: np.ndarray, config: IndexConfig | None = None, *, train_rows: np.ndarray | None = None
) -> faiss.Index:
    """An inner-product index over (n, dim) float32 features, of the kind ``config`` chooses (exact flat by
    default below ``exact_below`` vectors). IVF/PQ train on ``train_rows`` (default: a seeded sample of
    ``config.train_sample`` rows)."""
    config = config or IndexConfig()
    feats = as_features(features)
    if train_rows is None:
        train_rows = sample_rows(len(feats), config.train_sample, config.seed)
    plan = plan_index(len(feats), feats.shape[1], config, n_train=len(train_rows))
    return build_from_plan(feats, plan, train_rows)


def exact_search(
    features: np.ndarray, queries: np.ndarray, k: int, *, block: int = EXACT_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference: top-k inner products with numpy (for tests and recall checks), best first,
    equal similarities by row number; the gallery is streamed in blocks so memory stays ``q * block``."""
    feats = np.asarray(features, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    k = min(k, feats.shape[0])
    best_sims = np.zeros((len(q), 0), np.float32)
    best_rows = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(feats), block):
        sims = q @ feats[start : start + block].T
        rows = np.broadcast_to(np.arange(start, start + sims.shape[1], dtype=np.int64), sims.shape)
        best_sims, best_rows = np.concatenate([best_sims, sims], 1), np.concatenate([best_rows, rows], 1)
        if best_sims.shape[1] > k:
            keep = np.argpartition(-best_sims, k - 1, axis=1)[:, :k]
            best_sims = np.take_along_axis(best_sims, keep, 1)
            best_rows = np.take_along_axis(best_rows, keep, 1)
    order = np.lexsort((best_rows, -best_sims), axis=-1)
    return np.take_along_axis(best_sims, order, 1), np.take_along_axis(best_rows, order, 1)
