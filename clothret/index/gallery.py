"""The gallery: every box of every committed segment, flattened into arrays for the index."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np

from clothret.store.feature_store import read_segment, segment_url

logger = logging.getLogger(__name__)


@dataclass
class Gallery:
    """Row ``r`` of the index is box ``boxes[r]`` of image ``image_ids[r]``, showing item ``item_ids[r]``."""

    features: np.ndarray  # (n, dim) float32
    image_ids: np.ndarray  # (n,) str
    item_ids: np.ndarray  # (n,) str
    boxes: np.ndarray  # (n, 4) float32
    categories: np.ndarray  # (n,) int16
    scores: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.features)

    def to_bytes(self) -> bytes:
        """The id map (everything but the features) as an .npz, loadable without pickle."""
        buf = io.BytesIO()
        np.savez(
            buf,
            image_ids=self.image_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            boxes=self.boxes,
            categories=self.categories,
            scores=self.scores,
        )
        return buf.getvalue()

    @classmethod
    def id_map_from_bytes(cls, data: bytes, dim: int) -> Gallery:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            n = len(z["image_ids"])
            return cls(np.zeros((n, dim), np.float32), z["image_ids"], z["item_ids"], z["boxes"], z["categories"], z["scores"])


def gather_gallery(
    store_url: str, version: str, segment_ids: Sequence[str], *, deleted_image_ids: frozenset[str] = frozenset()
) -> Gallery:
    """Read every box of the given committed segments, leaving out deleted images."""
    parts: dict[str, list] = {k: [] for k in ("features", "image_ids", "item_ids", "boxes", "categories", "scores")}
    for seg_id in segment_ids:
        seg = read_segment(segment_url(store_url, version, seg_id))
        image_ids = np.asarray(seg.image_ids, dtype=str)
        item_ids = np.asarray(seg.item_ids, dtype=str)
        keep = ~np.isin(image_ids[seg.box_image], list(deleted_image_ids)) if deleted_image_ids else slice(None)
        parts["features"].append(seg.features.astype(np.float32)[keep])
        parts["image_ids"].append(image_ids[seg.box_image][keep])
        parts["item_ids"].append(item_ids[seg.box_image][keep])
        parts["boxes"].append(seg.boxes[keep])
        parts["categories"].append(seg.categories[keep])
        parts["scores"].append(seg.scores[keep])
    if not parts["features"]:
        raise ValueError(f"no committed segments to build a gallery from in {store_url} version {version}")
    gallery = Gallery(**{k: np.concatenate(v) for k, v in parts.items()})
    logger.info("gallery of %d boxes from %d segments", len(gallery), len(segment_ids))
    return gallery


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()
