"""PCA whitening learned on the gallery, with or without dimension reduction.

``learn_pca_whitening(gallery)`` centres the gallery, takes the eigenvectors of its covariance (largest
eigenvalue first) and scales each by ``(eigenvalue + shrinkage x mean eigenvalue) ** -0.5``, keeping the
first ``dim`` of them. :func:`apply_whitening` maps any vectors (gallery and queries alike) through it and
l2-normalises the result, so inner products stay cosine similarities. :func:`whitening_transform` is the same
map as a FAISS vector-transform chain, so an ``IndexPreTransform`` stored with an index build applies it to
every query it is asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

logger = logging.getLogger(__name__)

_RELATIVE_FLOOR = 1e-9
"""Eigenvalues below this fraction of the largest are left out: their directions hold no gallery variance."""


@dataclass(frozen=True)
class PCAWhitening:
    """``whiten(x) = normalise(projection @ (x - mean))``; ``projection`` is (dim, d_in) float32."""

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray

    @property
    def d_in(self) -> int:
        return int(self.projection.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.projection.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "projection": self.projection, "eigenvalues": self.eigenvalues}


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean, eigenvalues (largest first), eigenvectors of the covariance, and how many are usable."""
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    usable = int((eigenvalues > _RELATIVE_FLOOR * max(float(eigenvalues[0]), 1e-30)).sum())
    return mean, eigenvalues, eigenvectors, usable


def whitening_rank(gallery: np.ndarray) -> int:
    """How many dimensions whitening can keep: the gallery's directions of non-zero variance."""
    return _eigen(_as_matrix(gallery, "gallery").astype(np.float64))[3]


def learn_pca_whitening(gallery: np.ndarray, *, dim: int | None = None, shrinkage: float = 0.0) -> PCAWhitening:
    """Learn PCA whitening on (n, d) gallery vectors, keeping ``dim`` dimensions (default: all it can).

    The kept dimensions are at most the number of eigenvalues above ``1e-9`` x the largest (a gallery of
    ``n`` vectors spans at most ``n - 1`` directions around its mean); asking for more raises ``ValueError``.
    ``shrinkage`` > 0 adds that multiple of the mean eigenvalue to each before the inverse square root, which
    damps the weakest directions (0: plain whitening).
    """
    x = _as_matrix(gallery, "gallery").astype(np.float64)
    n, d = x.shape
    if shrinkage < 0 or not np.isfinite(shrinkage):
        raise ValueError(f"shrinkage must be a finite number >= 0, got {shrinkage}")
    mean, eigenvalues, eigenvectors, usable = _eigen(x)
    if usable == 0:
        raise ValueError(f"the {n} gallery vectors are all equal: there is nothing to whiten")
    if dim is None:
        dim = usable
    if not 1 <= dim <= usable:
        raise ValueError(
            f"whitening dim must be in 1..{usable} (the gallery of {n} vectors in {d} dimensions has {usable} "
            f"directions of non-zero variance), got {dim}"
        )
    kept = eigenvalues[:dim]
    scale = (kept + shrinkage * float(eigenvalues[:usable].mean())) ** -0.5
    projection = (eigenvectors[:, :dim] * scale).T
    logger.info("PCA whitening learned on %d vectors: %d -> %d dimensions (shrinkage %s)", n, d, dim, shrinkage)
    return PCAWhitening(mean.astype(np.float32), projection.astype(np.float32), kept.astype(np.float32))


def apply_whitening(x: np.ndarray, whitening: PCAWhitening) -> np.ndarray:
    """(n, d_in) vectors -> (n, d_out) whitened, l2-normalised float32 vectors."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != whitening.d_in:
        raise ValueError(f"vectors must be (n, {whitening.d_in}) to whiten, got shape {arr.shape}")
    y = (arr - whitening.mean) @ whitening.projection.T
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def whitening_transform(whitening: PCAWhitening) -> list[faiss.VectorTransform]:
    """The FAISS transforms (affine map, then l2 normalisation) that compute :func:`apply_whitening`."""
    linear = faiss.LinearTransform(whitening.d_in, whitening.d_out, True)
    faiss.copy_array_to_vector(np.ascontiguousarray(whitening.projection, dtype=np.float32).ravel(), linear.A)
    bias = -(whitening.projection @ whitening.mean).astype(np.float32)
    faiss.copy_array_to_vector(bias, linear.b)
    linear.is_trained = True
    return [linear, faiss.NormalizationTransform(whitening.d_out, 2.0)]


def with_pretransform(index: faiss.Index, transforms: list[faiss.VectorTransform]) -> faiss.Index:
    """``index`` (over already transformed vectors) behind the given transforms, as one self-owned index.

    The result answers queries in the original space; it round-trips through FAISS serialisation so it
    owns its parts (no Python object has to outlive it).
    """
    if not transforms:
        return index
    if transforms[-1].d_out != index.d:
        raise ValueError(f"the transforms end in {transforms[-1].d_out} dimensions but the index has {index.d}")
    wrapped = faiss.IndexPreTransform(transforms[-1], index)
    for transform in reversed(transforms[:-1]):
        wrapped.prepend_transform(transform)
    return faiss.deserialize_index(faiss.serialize_index(wrapped))


__all__ = [
    "PCAWhitening",
    "apply_whitening",
    "learn_pca_whitening",
    "whitening_rank",
    "whitening_transform",
    "with_pretransform",
]
