"""Search with post-processing: a :class:`~clothret.index.search.SearchIndex` whose ``search`` applies
α-query expansion, k-reciprocal re-ranking and per-image de-duplication, in the space the index searches.

    index = load_index(index_url)                               # the build's own settings
    index = load_index(index_url, postprocess={"rerank": True})  # the build's, with re-ranking on
    results, failures = search_images(models, index, images)

A build made with gallery-side options (whitening, DBA) answers them by itself: its index is an
``IndexPreTransform`` that whitens each query, and its vectors are the augmented ones. Asking a build made
without them for gallery-side options rebuilds an exact in-memory index from the build's vectors (fine for
evaluation-sized galleries; set them on the build for a large catalogue).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np

from clothret.index.search import SearchIndex
from clothret.rerank.config import GALLERY_FIELDS, PostProcessConfig
from clothret.rerank.expansion import alpha_query_expansion
from clothret.rerank.gallery import manifest_entry, postprocess_gallery
from clothret.rerank.k_reciprocal import k_reciprocal_rerank
from clothret.rerank.vectors import GalleryVectors, apply_transforms, split_pretransform
from clothret.rerank.whitening import with_pretransform

logger = logging.getLogger(__name__)

MANIFEST_KEY = "postprocess"
"""A build manifest's entry holding the post-processing it was made with (and its query-side defaults)."""


def dedupe_by_image(
    similarities: np.ndarray, rows: np.ndarray, image_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first (best) row per gallery image in each ranked list, cut to ``k``; -1 pads short lists."""
    out_rows = np.full((len(rows), k), -1, dtype=np.int64)
    out_sims = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, (row_sims, row_rows) in enumerate(zip(similarities, rows)):
        seen: set[str] = set()
        j = 0
        for s, r in zip(row_sims, row_rows):
            if r < 0:
                break
            image = str(image_ids[r])
            if image in seen:
                continue
            seen.add(image)
            out_rows[i, j], out_sims[i, j] = r, s
            j += 1
            if j == k:
                break
    return out_sims, out_rows


def _pad(similarities: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[1] >= k:
        return similarities[:, :k], rows[:, :k]
    extra = k - rows.shape[1]
    return (
        np.pad(similarities, ((0, 0), (0, extra)), constant_values=-np.inf),
        np.pad(rows, ((0, 0), (0, extra)), constant_values=-1),
    )


@dataclass
class PostProcessedIndex(SearchIndex):
    """A search index whose :meth:`search` applies the query-side options of ``options``."""

    options: PostProcessConfig = field(default_factory=PostProcessConfig)

    def __post_init__(self) -> None:
        self._transforms, self._inner = split_pretransform(self.index)
        needs_vectors = self.options.qe_k > 0 or self.options.rerank
        self._vectors = GalleryVectors(self.index) if needs_vectors else None
        if self.options.dedupe == "image" and len(self.gallery):
            self._max_boxes = int(np.unique(self.gallery.image_ids, return_counts=True)[1].max())
        else:
            self._max_boxes = 1

    def candidates(self, k: int) -> int:
        """How many neighbours one search fetches for a top-``k`` answer."""
        o = self.options
        n = k
        if o.qe_k or o.rerank:
            n = max(n, o.candidates, o.qe_k)
        if o.dedupe == "image":
            n = max(n, k * self._max_boxes)  # enough rows for k distinct images
        return max(1, min(n, int(self.index.ntotal)))

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and gallery rows after post-processing; rows are -1 where fewer exist.

        Scores are inner products in the searched space, or ``1 - distance`` after re-ranking.
        """
        if features.ndim != 2 or features.shape[1] != self.index.d:
            raise ValueError(f"query features must be (q, {self.index.d}), got {features.shape}")
        if len(features) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        o = self.options
        n = self.candidates(k)
        queries = apply_transforms(self._transforms, features)
        sims, rows = self._inner.search(queries, n)
        if o.qe_k:
            queries = alpha_query_expansion(queries, self._vectors, rows, sims, k=o.qe_k, alpha=o.qe_alpha)
            sims, rows = self._inner.search(np.ascontiguousarray(queries), n)
        if o.rerank:
            sims, rows = k_reciprocal_rerank(queries, self._vectors, rows, k1=o.k1, k2=o.k2, lambda_value=o.lambda_value)
        if o.dedupe == "image":
            return dedupe_by_image(sims, rows, self.gallery.image_ids, k)
        return _pad(sims, rows, k)


def build_settings(manifest: dict) -> PostProcessConfig:
    """The post-processing a build was made with (all off for a build without any)."""
    return PostProcessConfig.model_validate(manifest.get(MANIFEST_KEY, {}).get("config", {}))


def search_options(index: SearchIndex) -> PostProcessConfig:
    """The post-processing ``index`` searches with (its build's when it is a plain :class:`SearchIndex`)."""
    return index.options if isinstance(index, PostProcessedIndex) else build_settings(index.manifest)


def resolve_options(manifest: dict, postprocess: PostProcessConfig | dict | None) -> PostProcessConfig:
    """The options to search a build with: its own; a dict overrides some of them; a config replaces them."""
    if isinstance(postprocess, PostProcessConfig):
        return postprocess
    base = build_settings(manifest)
    if not postprocess:
        return base
    return PostProcessConfig.model_validate({**base.model_dump(), **postprocess})


def with_postprocessing(index: SearchIndex, options: PostProcessConfig) -> SearchIndex:
    """``index`` searched with ``options``: itself when everything is off, else a :class:`PostProcessedIndex`.

    Gallery-side options other than the build's rebuild an exact in-memory index from the build's vectors;
    a build that already changed its gallery vectors cannot give the original ones back (``ValueError``).
    """
    built = build_settings(index.manifest)
    wanted = options.gallery_side()
    if wanted != built.gallery_side():
        if built.changes_gallery:
            raise ValueError(
                f"build {index.manifest.get('build_id')} holds gallery vectors made with {built.gallery_side()}; "
                f"search it with the same gallery-side settings ({', '.join(GALLERY_FIELDS)}) or use a build "
                "made without them"
            )
        logger.warning(
            "gallery-side post-processing (%s) is not part of build %s: building an exact in-memory index of its "
            "%d vectors", options.label(), index.manifest.get("build_id"), index.index.ntotal,
        )
        vectors, transforms, figures = postprocess_gallery(GalleryVectors(index.index).all(), options)
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        manifest = {**index.manifest, MANIFEST_KEY: manifest_entry(options, figures)}
        index = SearchIndex(with_pretransform(flat, transforms), index.gallery, manifest, "memory")
    if options == PostProcessConfig():
        return index
    return PostProcessedIndex(index.index, index.gallery, index.manifest, index.load_mode, options)


def load_index(
    index_root: str, build_id: str | None = None, *, postprocess: PostProcessConfig | dict | None = None, **load_kw
) -> SearchIndex:
    """Load a build (default: the serving one) searched with its post-processing settings, or others
    (see :func:`resolve_options`); ``load_kw`` go to :meth:`SearchIndex.load`."""
    index = SearchIndex.load(index_root, build_id, **load_kw)
    options = resolve_options(index.manifest, postprocess)
    return with_postprocessing(index, options)


__all__ = [
    "MANIFEST_KEY",
    "PostProcessedIndex",
    "build_settings",
    "dedupe_by_image",
    "load_index",
    "resolve_options",
    "search_options",
    "with_postprocessing",
]
