"""The vectors a FAISS index searches, by row, and the transform it applies to queries.

A build whose gallery was whitened is an ``IndexPreTransform``: its inner index holds the whitened
vectors and its transform chain maps a query into that space. Query expansion and re-ranking work in the
searched space, so they need both. Flat and HNSW indexes give their vectors back exactly; IVF indexes get
a direct map first; IVF-PQ gives its decoded (approximate) vectors.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)


def split_pretransform(index: faiss.Index) -> tuple[list[faiss.VectorTransform], faiss.Index]:
    """``(transforms, inner index)`` of an ``IndexPreTransform``; ``([], index)`` for any other index."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return [], index
    transforms = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
    return transforms, faiss.downcast_index(index.index)


def apply_transforms(transforms: list[faiss.VectorTransform], x: np.ndarray) -> np.ndarray:
    """``x`` (n, d) through a transform chain, as float32."""
    out = np.ascontiguousarray(x, dtype=np.float32)
    for transform in transforms:
        out = transform.apply(out)
    return out


class GalleryVectors:
    """Row -> vector of an index (after its pre-transform): ``vectors[rows]`` is (len(rows), d) float32."""

    def __init__(self, index: faiss.Index) -> None:
        _, inner = split_pretransform(index)
        ivf = faiss.try_extract_index_ivf(inner)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()
        self.index = inner

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __getitem__(self, rows) -> np.ndarray:
        keys = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(keys) and (keys.min() < 0 or keys.max() >= len(self)):
            raise IndexError(f"gallery rows must be in 0..{len(self) - 1}, got {keys.min()}..{keys.max()}")
        if len(keys) == 0:
            return np.zeros((0, self.dim), np.float32)
        try:
            return np.asarray(self.index.reconstruct_batch(keys), dtype=np.float32)
        except RuntimeError as exc:
            reason = (str(exc).splitlines() or [""])[0]
            raise ValueError(
                f"the {type(self.index).__name__} index cannot give its vectors back ({reason}): query expansion and "
                "re-ranking need a flat, HNSW or IVF index"
            ) from exc

    def all(self, block_rows: int = 65536) -> np.ndarray:
        """Every vector, (n, d) float32."""
        n = len(self)
        return np.concatenate([self[np.arange(s, min(n, s + block_rows))] for s in range(0, n, block_rows)] or
                              [np.zeros((0, self.dim), np.float32)])


__all__ = ["GalleryVectors", "apply_transforms", "split_pretransform"]
