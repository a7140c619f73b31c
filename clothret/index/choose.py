"""Choose the index type and its parameters from the size of the gallery and a memory budget."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from clothret.index.config import INDEX_KINDS, IndexConfig

logger = logging.getLogger(__name__)

MIN_POINTS_PER_LIST = 39  # faiss k-means wants at least this many training vectors per centroid
PQ_NBITS = 8  # bits per PQ sub-quantizer code: 256 centroids each
ID_BYTES = 8  # an IVF list stores an int64 id beside each code
SQ_BYTES = 2  # ivf_sq stores each dimension as float16


def _check_size(n_vectors: int, dim: int) -> None:
    if n_vectors < 1 or dim < 1:
        raise ValueError(f"an index needs at least one vector of dim >= 1, got n_vectors={n_vectors}, dim={dim}")


def choose_index_kind(n_vectors: int, dim: int, config: IndexConfig) -> str:
    """The index type for ``n_vectors`` float32 vectors of ``dim`` under ``config``.

    The rule (``config.kind`` other than ``auto`` is returned as is):

    - fewer than ``exact_below`` vectors: ``flat``, exact search; it is fast enough there and its recall is 1;
    - else, when the raw vectors (``n * dim * 4`` bytes) fit ``memory_budget_mb``: ``ivf_flat``, which keeps
      the full vectors (recall limited only by ``nprobe``) and trains and adds on a GPU when there is one;
    - else, when they fit as float16 (``n * dim * 2`` bytes): ``ivf_sq``, float16 codes — the very values the
      feature store holds, so nothing is lost against ``ivf_flat`` at half its memory;
    - else ``ivf_pq``, which stores ``pq_m`` bytes per vector, ``pq_m`` chosen to fit the budget
      (:func:`choose_pq_m`).

    ``hnsw`` is never chosen automatically: its graph costs memory on top of the vectors and it builds on the
    CPU only; name it when query latency matters more than build time.
    """
    if config.kind not in INDEX_KINDS:  # a model_construct()-ed config skips pydantic's check
        raise ValueError(f"unknown index kind {config.kind!r}; valid kinds: {', '.join(INDEX_KINDS)}")
    _check_size(n_vectors, dim)
    if config.kind != "auto":
        return config.kind
    if n_vectors < config.exact_below:
        return "flat"
    if n_vectors * dim * 4 <= config.memory_budget_mb * 2**20:
        return "ivf_flat"
    if n_vectors * dim * SQ_BYTES <= config.memory_budget_mb * 2**20:
        return "ivf_sq"
    return "ivf_pq"


def choose_nlist(n_vectors: int, n_train: int, config: IndexConfig) -> int:
    """IVF lists: ``config.nlist`` or about ``4 * sqrt(n)``, clamped so each list gets enough training vectors."""
    wanted = config.nlist or max(1, round(4 * math.sqrt(n_vectors)))
    most = max(1, n_train // MIN_POINTS_PER_LIST)
    if wanted > most:
        log = logger.warning if config.nlist else logger.info
        log("nlist %d clamped to %d: %d training vectors allow %d per list", wanted, most, n_train, MIN_POINTS_PER_LIST)
    return min(wanted, most)


def _divisors(dim: int) -> list[int]:
    return [m for m in range(1, dim + 1) if dim % m == 0]


def choose_pq_m(n_vectors: int, dim: int, nlist: int, config: IndexConfig) -> int:
    """Bytes per vector of ``ivf_pq``: ``config.pq_m``, else the largest divisor of ``dim`` whose codes
    (``n * (pq_m + 8)`` bytes with the ids, plus the coarse centroids) fit ``memory_budget_mb``."""
    valid = _divisors(dim)
    if config.pq_m is not None:
        if config.pq_m not in valid:
            raise ValueError(f"pq_m={config.pq_m} must divide dim={dim}; valid values: {valid}")
        return config.pq_m
    budget = config.memory_budget_mb * 2**20
    for m in reversed(valid):
        if n_vectors * (m + ID_BYTES) + nlist * dim * 4 <= budget:
            return m
    need_mb = (n_vectors * (1 + ID_BYTES) + nlist * dim * 4) / 2**20
    raise ValueError(
        f"{n_vectors} vectors do not fit memory_budget_mb={config.memory_budget_mb} even at 1 byte per vector "
        f"(ivf_pq needs {need_mb:.1f} MB): raise the budget"
    )


@dataclass(frozen=True)
class IndexPlan:
    """What :func:`clothret.index.build.build_index` builds; ``None`` where a parameter does not apply.

    ``nprobe`` / ``ef_search`` are the search breadths to start from; ``tune_breadth`` says they may be raised
    until the recall target is met (the config left them unset)."""

    kind: str
    n_vectors: int
    dim: int
    n_train: int
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    quantizer: str | None = None
    tune_breadth: bool = False

    def figures(self) -> dict:
        """The plan as manifest figures (parameters that apply only)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def plan_index(n_vectors: int, dim: int, config: IndexConfig, *, n_train: int | None = None) -> IndexPlan:
    """The index type and parameters for ``n_vectors`` vectors, ``n_train`` of them to train on
    (default: up to ``config.train_sample``)."""
    kind = choose_index_kind(n_vectors, dim, config)
    n_train = min(n_vectors, config.train_sample) if n_train is None else n_train
    base = {"kind": kind, "n_vectors": n_vectors, "dim": dim, "n_train": n_train}
    if kind == "flat":
        return IndexPlan(**base)
    if kind == "hnsw":
        return IndexPlan(
            **base, hnsw_m=config.hnsw_m, ef_construction=config.ef_construction,
            ef_search=config.ef_search or 32, tune_breadth=config.ef_search is None,
        )
    if n_train < 1:
        raise ValueError(f"{kind} needs training vectors, got n_train={n_train} of {n_vectors}: use kind='flat'")
    nlist = choose_nlist(n_vectors, n_train, config)
    nprobe = min(nlist, config.nprobe or max(1, nlist // 16))
    pq_m = None
    if kind == "ivf_pq":
        if n_train < 2**PQ_NBITS:
            raise ValueError(
                f"ivf_pq needs at least {2**PQ_NBITS} training vectors, got {n_train}: use kind='ivf_flat' or 'flat'"
            )
        pq_m = choose_pq_m(n_vectors, dim, nlist, config)
    quantizer = "hnsw" if nlist >= config.hnsw_quantizer_above else "flat"
    return IndexPlan(
        **base, nlist=nlist, nprobe=nprobe, pq_m=pq_m, quantizer=quantizer, tune_breadth=config.nprobe is None
    )

