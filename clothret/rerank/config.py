"""Which post-processing a search applies: one small config, for a build's settings and for search time.

Gallery-side options change the vectors the index holds (PCA whitening, database-side augmentation); an
index build made with them stores the result, and queries get the same whitening from the index itself.
Query-side options change how each query is searched (α-query expansion, k-reciprocal re-ranking of the
top candidates, one entry per gallery image).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GALLERY_FIELDS: tuple[str, ...] = ("whiten", "whiten_dim", "whiten_shrinkage", "dba_k", "dba_alpha")
"""The fields that decide a build's gallery vectors."""


class PostProcessConfig(BaseModel):
    """Post-processing of a search; the defaults switch everything off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    whiten: bool = Field(False, description="PCA whitening learned on the gallery; queries get the same map")
    whiten_dim: int | None = Field(None, ge=1, description="whitened dimensions kept; None: all the gallery supports")
    whiten_shrinkage: float = Field(0.0, ge=0, description="added to each eigenvalue, x the mean eigenvalue")
    dba_k: int = Field(0, ge=0, description="database-side augmentation with k gallery neighbours (after whitening); 0: off")
    dba_alpha: float = Field(3.0, ge=0, description="DBA neighbour weight: similarity ** alpha")
    qe_k: int = Field(0, ge=0, description="alpha-query expansion with the k best gallery vectors; 0: off")
    qe_alpha: float = Field(3.0, ge=0, description="query-expansion neighbour weight: similarity ** alpha")
    rerank: bool = Field(False, description="k-reciprocal re-ranking of each query's top candidates")
    k1: int = Field(20, ge=1, description="k-reciprocal neighbourhood size")
    k2: int = Field(6, ge=1, description="local query expansion size of the re-ranking")
    lambda_value: float = Field(0.3, ge=0, le=1, description="weight of the original distance in the re-ranking")
    candidates: int = Field(100, ge=1, description="candidates per query that query expansion and re-ranking see")
    dedupe: Literal["none", "image"] = Field("none", description="image: keep the best box per gallery image")

    @model_validator(mode="after")
    def _whiten_dim_needs_whiten(self) -> PostProcessConfig:
        if self.whiten_dim is not None and not self.whiten:
            raise ValueError("whiten_dim is set but whiten is False; set whiten=True to reduce dimensions")
        return self

    def gallery_side(self) -> dict:
        """The gallery-side settings, as a dict (recorded with a build)."""
        return {name: getattr(self, name) for name in GALLERY_FIELDS}

    @property
    def changes_gallery(self) -> bool:
        return self.whiten or self.dba_k > 0

    @property
    def changes_queries(self) -> bool:
        return self.qe_k > 0 or self.rerank or self.dedupe != "none"

    def label(self) -> str:
        """A short human name of the options that are on, e.g. ``"whiten-64 + αQE-2 + k-reciprocal"``."""
        parts = []
        if self.dba_k:
            parts.append(f"DBA-{self.dba_k}")
        if self.whiten:
            parts.append(f"whiten-{self.whiten_dim}" if self.whiten_dim else "whiten")
        if self.qe_k:
            parts.append(f"αQE-{self.qe_k}")
        if self.rerank:
            parts.append("k-reciprocal")
        if self.dedupe != "none":
            parts.append(f"dedupe-{self.dedupe}")
        return " + ".join(parts) or "none"


__all__ = ["GALLERY_FIELDS", "PostProcessConfig"]
