"""How an index build is chosen, trained and checked: one small config for the index stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IndexKind = Literal["auto", "flat", "ivf_flat", "ivf_sq", "ivf_pq", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "ivf_flat", "ivf_sq", "ivf_pq", "hnsw")


class IndexConfig(BaseModel):
    """Index type, its parameters (``None`` = derived from the data) and the validation thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: IndexKind = Field(
        "auto", description="auto, flat (exact), ivf_flat, ivf_sq (float16 codes), ivf_pq or hnsw"
    )
    exact_below: int = Field(200_000, ge=0, description="auto: exact flat search below this many vectors")
    memory_budget_mb: float = Field(
        4096, gt=0, description="auto: RAM for the vectors of one index; above it ivf_sq, then ivf_pq compress them"
    )
    nlist: int | None = Field(None, ge=1, description="IVF lists; None = about 4*sqrt(n), clamped to the training set")
    nprobe: int | None = Field(None, ge=1, description="IVF lists searched per query; None = tuned to min_recall")
    pq_m: int | None = Field(None, ge=1, description="ivf_pq bytes per vector (divides dim); None = fit the budget")
    hnsw_m: int = Field(32, ge=2, description="HNSW links per node")
    ef_construction: int = Field(80, ge=1, description="HNSW build breadth")
    ef_search: int | None = Field(None, ge=1, description="HNSW search breadth; None = tuned to min_recall")
    train_sample: int = Field(100_000, ge=1, description="most vectors used to train IVF/PQ")
    recall_sample: int = Field(500, ge=1, description="held-out gallery vectors used as queries to measure recall")
    min_recall: float = Field(0.95, ge=0, le=1, description="smallest recall@10 against exact search a build may have")
    seed: int = Field(0, description="seed of the training and held-out samples")
    hnsw_quantizer_above: int = Field(
        8192, ge=1, description="IVF lists from which an HNSW graph over the centroids assigns vectors to lists"
    )
    stream_above: int = Field(
        500_000, ge=0,
        description="galleries of at least this many boxes are built segment by segment, never all in memory",
    )
    update_fraction: float = Field(
        0.2, ge=0, le=1,
        description="a refresh updates the serving IVF/flat build in place (remove + add) while the rows added "
        "since it was trained stay below this fraction of it; beyond, it builds and trains a new one",
    )
