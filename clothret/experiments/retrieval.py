"""Detection-aware retrieval on a validation split, in memory: fused detections of every image, their crops
embedded once per embedder, then any combination of embedders (concatenated) and post-processing searched
through the same code as a served build (:class:`~clothret.index.search.SearchIndex` and
:func:`~clothret.rerank.search.with_postprocessing`) and scored with the official DeepFashion2 rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from clothret.datasets.catalogue import shop_item_id
from clothret.datasets.records import ImageRecord
from clothret.detection.crops import crop_boxes
from clothret.detection.types import Detections
from clothret.embedding.evaluate_crops import CropEmbedder
from clothret.evaluation.retrieval import ItemOutcome, accuracy_from_outcomes, item_outcomes
from clothret.index.gallery import Gallery
from clothret.index.results import QueryResult
from clothret.index.search import SearchIndex
from clothret.rerank.config import PostProcessConfig
from clothret.rerank.gallery import manifest_entry, postprocess_gallery
from clothret.rerank.search import MANIFEST_KEY, with_postprocessing
from clothret.rerank.whitening import with_pretransform

logger = logging.getLogger(__name__)

PLOT_KS: tuple[int, ...] = tuple(range(1, 21))
"""Acc@k is computed for every k from 1 to 20 (the submission's list length)."""


@dataclass
class ImageBoxes:
    """One image's fused detections and, per embedder name, one feature row per box."""

    record: ImageRecord
    detections: Detections
    features: dict[str, np.ndarray]

    def combined(self, names: Sequence[str]) -> np.ndarray:
        """The named embedders' features concatenated and l2-normalised (a bundle's embedders are)."""
        feats = np.concatenate([self.features[n] for n in names], axis=1).astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def embed_boxes(
    records: Sequence[ImageRecord], images: Sequence[np.ndarray], detections: Sequence[Detections],
    embedders: dict[str, CropEmbedder],
) -> list[ImageBoxes]:
    """Crop every fused box of every image once and embed the crops with each embedder."""
    if not len(records) == len(images) == len(detections):
        raise ValueError(f"records, images and detections differ in length: {len(records)}, {len(images)}, {len(detections)}")
    crops = [c for image, dets in zip(images, detections) for c in crop_boxes(image, dets.boxes)]
    per_embedder = {}
    for name, embedder in embedders.items():
        t0 = time.perf_counter()
        per_embedder[name] = embedder.embed(crops) if crops else np.zeros((0, embedder.dim), np.float32)
        logger.info("embedded %d boxes with %s in %.1f s", len(crops), name, time.perf_counter() - t0)
    out, start = [], 0
    for record, dets in zip(records, detections):
        stop = start + len(dets)
        out.append(ImageBoxes(record, dets, {n: f[start:stop] for n, f in per_embedder.items()}))
        start = stop
    return out


def make_gallery(shop: Sequence[ImageBoxes], names: Sequence[str], *, max_boxes_per_image: int | None = None) -> Gallery:
    """The gallery of the shop images' boxes (features of ``names`` concatenated); with
    ``max_boxes_per_image`` only each image's best-scoring boxes (the paper's box-count reduction)."""
    parts: dict[str, list] = {k: [] for k in ("features", "image_ids", "item_ids", "boxes", "categories", "scores")}
    for image in shop:
        dets = image.detections
        keep = np.argsort(-dets.scores, kind="stable")
        if max_boxes_per_image is not None:
            keep = keep[:max_boxes_per_image]
        if len(keep) == 0:
            continue
        parts["features"].append(image.combined(names)[keep])
        parts["image_ids"].append(np.full(len(keep), image.record.image_id))
        parts["item_ids"].append(np.full(len(keep), shop_item_id(image.record)))
        parts["boxes"].append(dets.boxes[keep].astype(np.float32))
        parts["categories"].append(dets.labels[keep].astype(np.int16))
        parts["scores"].append(dets.scores[keep].astype(np.float32))
    if not parts["features"]:
        raise ValueError("no shop image has a detected box: the gallery would be empty")
    return Gallery(**{k: np.concatenate(v) for k, v in parts.items()})


@dataclass
class RetrievalRun:
    """Acc@k (k = 1..20) of one configuration, its per-item outcomes and results, and its timings."""

    name: str
    scores: dict
    outcomes: list[ItemOutcome]
    results: list[QueryResult]
    search_ms_per_query: float
    n_gallery_boxes: int


def search_gallery(
    name: str,
    queries: Sequence[ImageBoxes],
    gallery_records: Sequence[ImageRecord],
    gallery: Gallery,
    names: Sequence[str],
    options: PostProcessConfig | None = None,
    *,
    k: int = 20,
) -> RetrievalRun:
    """Search every query box in an exact index of ``gallery`` made and searched with ``options`` (as a build
    with those settings is); score the official Acc@k."""
    options = options or PostProcessConfig()
    vectors, transforms, figures = postprocess_gallery(gallery.features, options)  # as a build with these settings
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    manifest = {"build_id": name, "model_version": "experiment", MANIFEST_KEY: manifest_entry(options, figures)}
    index = with_postprocessing(SearchIndex(with_pretransform(flat, transforms), gallery, manifest), options)
    results: list[QueryResult] = []
    n_boxes = 0
    t0 = time.perf_counter()
    for image in queries:
        if len(image.detections):
            results.extend(index.query_results(image.record.image_id, image.detections, image.combined(names), k=k))
            n_boxes += len(image.detections)
    ms = 1000.0 * (time.perf_counter() - t0) / max(1, n_boxes)
    outcomes = item_outcomes([q.record for q in queries], gallery_records, results)
    scores = accuracy_from_outcomes(outcomes, PLOT_KS)
    return RetrievalRun(name, scores, outcomes, results, round(ms, 3), len(gallery))


__all__ = ["PLOT_KS", "ImageBoxes", "RetrievalRun", "embed_boxes", "make_gallery", "search_gallery"]
