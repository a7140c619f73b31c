"""The gallery: every box of every committed segment, flattened into arrays for the index."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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

    def write_id_map(self, file) -> None:
        """Write the id map (everything but the features) as an .npz to a path or binary file object."""
        np.savez(
            file,
            image_ids=self.image_ids.astype(str, copy=False),
            item_ids=self.item_ids.astype(str, copy=False),
            boxes=self.boxes,
            categories=self.categories,
            scores=self.scores,
        )

    def to_bytes(self) -> bytes:
        """The id map (everything but the features) as an .npz, loadable without pickle."""
        buf = io.BytesIO()
        self.write_id_map(buf)
        return buf.getvalue()

    @classmethod
    def id_map_from_bytes(cls, data: bytes, dim: int) -> Gallery:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            n = len(z["image_ids"])
            return cls(np.zeros((n, dim), np.float32), z["image_ids"], z["item_ids"], z["boxes"], z["categories"], z["scores"])


def gather_gallery(
    store_url: str, version: str, segment_ids: Sequence[str], *, deleted_image_ids: Iterable[str] = ()
) -> Gallery:
    """Every box of the live entries of the given committed segments (oldest first).

    When an image appears in several segments the latest segment's entry is the live one; deleted
    image ids are left out.
    """
    seen = set(deleted_image_ids)
    parts: list[dict[str, np.ndarray]] = []
    for seg_id in reversed(segment_ids):
        seg = read_segment(segment_url(store_url, version, seg_id))
        image_ids = np.asarray(seg.image_ids, dtype=str)
        item_ids = np.asarray(seg.item_ids, dtype=str)
        live_images = np.array([i not in seen for i in seg.image_ids], dtype=bool)
        keep = live_images[seg.box_image]
        seen.update(seg.image_ids)
        parts.append({
            "features": seg.features.astype(np.float32)[keep],
            "image_ids": image_ids[seg.box_image][keep],
            "item_ids": item_ids[seg.box_image][keep],
            "boxes": seg.boxes[keep],
            "categories": seg.categories[keep],
            "scores": seg.scores[keep],
        })
    if not parts:
        raise ValueError(f"no committed segments to build a gallery from in {store_url} version {version}")
    parts.reverse()
    gallery = Gallery(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    if len(gallery) == 0:
        raise ValueError(f"the {len(segment_ids)} live segments of {store_url} version {version} hold no boxes")
    logger.info("gallery of %d boxes from %d segments", len(gallery), len(segment_ids))
    return gallery


