"""Load a published index and search it with the features of query detections."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from clothret.detection.types import Detections
from clothret.index.gallery import Gallery, read_bytes
from clothret.index.publish import build_url, current_build, read_build_manifest
from clothret.index.results import QueryResult

logger = logging.getLogger(__name__)


@dataclass
class SearchIndex:
    """A published build in memory: the FAISS index, its id map and its manifest."""

    index: faiss.Index
    gallery: Gallery
    manifest: dict

    @classmethod
    def load(cls, index_root: str, build_id: str | None = None) -> SearchIndex:
        """Load the current build (or a named one) of an index root."""
        build_id = build_id or current_build(index_root)
        if build_id is None:
            raise FileNotFoundError(f"no index published under {index_root}: run a catalogue refresh first")
        base = build_url(index_root, build_id)
        index = faiss.deserialize_index(np.frombuffer(read_bytes(f"{base}/index.faiss"), dtype=np.uint8))
        gallery = Gallery.id_map_from_bytes(read_bytes(f"{base}/idmap.npz"), index.d)
        manifest = read_build_manifest(index_root, build_id)
        logger.info("loaded index build %s (%d vectors)", build_id, index.ntotal)
        return cls(index, gallery, manifest)

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k similarities and gallery rows for (q, dim) features; rows are -1 where fewer exist."""
        if features.ndim != 2 or features.shape[1] != self.index.d:
            raise ValueError(f"query features must be (q, {self.index.d}), got {features.shape}")
        if len(features) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return self.index.search(np.ascontiguousarray(features, dtype=np.float32), k)

    def query_results(
        self, image_id: str, detections: Detections, features: np.ndarray, *, k: int = 20
    ) -> list[QueryResult]:
        """One :class:`QueryResult` per detection of a query image, its top-k gallery boxes ranked."""
        sims, rows = self.search(features, k)
        out = []
        for j in range(len(detections)):
            valid = rows[j] >= 0
            r = rows[j][valid]
            out.append(
                QueryResult(
                    query_image_id=image_id,
                    box=tuple(float(v) for v in detections.boxes[j]),
                    score=float(detections.scores[j]),
                    category_id=int(detections.labels[j]),
                    gallery_image_ids=[str(v) for v in self.gallery.image_ids[r]],
                    gallery_boxes=self.gallery.boxes[r],
                    gallery_item_ids=[str(v) for v in self.gallery.item_ids[r]],
                    similarities=sims[j][valid],
                )
            )
        return out


def top_items(result: QueryResult, n: int) -> list[tuple[str, str, float, np.ndarray]]:
    """The best ``n`` distinct shop items of a result: (item id, image id, similarity, box), best box per item."""
    seen: set[str] = set()
    out = []
    for item, image, sim, box in zip(
        result.gallery_item_ids, result.gallery_image_ids, result.similarities, result.gallery_boxes
    ):
        if item in seen:
            continue
        seen.add(item)
        out.append((item, image, float(sim), box))
        if len(out) == n:
            break
    return out


def flatten(results: Sequence[Sequence[QueryResult]]) -> list[QueryResult]:
    return [r for per_image in results for r in per_image]
