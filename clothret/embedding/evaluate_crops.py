"""Retrieval accuracy of an embedder on ground-truth crops, and a colour-histogram baseline embedder.

Gallery = the crops of shop items with ``style > 0``; queries = user items whose ``(pair_id, style)`` is
in the gallery. A query hits at k when one of its k most similar gallery crops has its key. No detector
is involved, so this is an upper bound of what the full pipeline reaches with that embedder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from clothret.datasets.records import ImageRecord
from clothret.embedding.crops import GtCrop, gt_crops

logger = logging.getLogger(__name__)


class CropEmbedder(Protocol):
    """Anything with ``embed(crops) -> (n, dim)`` l2-normalised float32, ``dim`` and ``name``."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class ColourHistogramEmbedder:
    """A joint RGB histogram (``bins``^3), square-rooted and l2-normalised: the no-learning baseline."""

    def __init__(self, bins: int = 8, *, name: str = "colour-histogram") -> None:
        if not 2 <= bins <= 64:
            raise ValueError(f"bins must be in 2..64, got {bins}")
        self.bins = bins
        self.name = name

    @property
    def dim(self) -> int:
        return self.bins**3

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        for i, crop in enumerate(crops):
            arr = np.asarray(crop)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.size == 0:
                raise ValueError(f"crop {i} must be non-empty (H, W, 3) uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
            q = (arr.reshape(-1, 3).astype(np.int64) * self.bins) >> 8
            codes = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]
            hist = np.sqrt(np.bincount(codes, minlength=self.dim).astype(np.float32))
            out[i] = hist / max(float(np.linalg.norm(hist)), 1e-12)
        return out


def _chance(num_gallery: int, num_relevant: np.ndarray, k: int) -> float:
    """Mean chance that k random gallery crops include one of a query's relevant crops."""
    k = min(k, num_gallery)
    miss = [math.comb(num_gallery - m, k) / math.comb(num_gallery, k) for m in num_relevant.tolist()]
    return float(1.0 - np.mean(miss))


def split_crops(records: Sequence[ImageRecord]) -> tuple[list[GtCrop], list[GtCrop]]:
    """A split's gallery (shop) crops and its query (street) crops whose key is in the gallery."""
    gallery = gt_crops(records, sources=("shop",))
    gallery_keys = {c.key for c in gallery}
    return gallery, [c for c in gt_crops(records, sources=("user",)) if c.key in gallery_keys]


def crop_retrieval_accuracy(
    embedder: CropEmbedder, records: Sequence[ImageRecord], ks: Sequence[int] = (1, 10)
) -> dict:
    """Item-level Acc@k on a split's ground-truth crops, plus counts, chance levels and embedding speed."""
    return crops_retrieval_accuracy(embedder, *split_crops(records), ks=ks)


def crops_retrieval_accuracy(
    embedder: CropEmbedder, gallery: Sequence[GtCrop], queries: Sequence[GtCrop], ks: Sequence[int] = (1, 10)
) -> dict:
    """:func:`crop_retrieval_accuracy` on crops cut once (:func:`split_crops`), e.g. for several embedders."""
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    gallery_keys = {c.key for c in gallery}
    queries = [c for c in queries if c.key in gallery_keys]
    if not gallery or not queries:
        raise ValueError(f"need shop items and matchable user items; got {len(gallery)} gallery, {len(queries)} queries")
    t0 = time.perf_counter()
    g = embedder.embed([c.pixels for c in gallery])
    q = embedder.embed([c.pixels for c in queries])
    seconds = time.perf_counter() - t0
    key_index = {k: i for i, k in enumerate(sorted(gallery_keys))}
    g_lab = np.array([key_index[c.key] for c in gallery])
    q_lab = np.array([key_index[c.key] for c in queries])
    kmax = min(max(ks), len(gallery))
    sim = q @ g.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
    hits = g_lab[top] == q_lab[:, None]
    relevant = np.bincount(g_lab, minlength=len(key_index))[q_lab]
    result: dict = {"embedder": embedder.name, "num_queries": len(queries), "num_gallery": len(gallery)}
    for k in ks:
        result[f"acc@{k}"] = float(hits[:, : min(k, kmax)].any(axis=1).mean())
    for k in ks:
        result[f"chance@{k}"] = _chance(len(gallery), relevant, k)
    result["embed_images_per_second"] = round((len(gallery) + len(queries)) / max(seconds, 1e-9), 1)
    logger.info("%s: %s", embedder.name, {k: v for k, v in result.items() if k.startswith("acc")})
    return result


__all__ = ["ColourHistogramEmbedder", "CropEmbedder", "crop_retrieval_accuracy", "crops_retrieval_accuracy", "split_crops"]
