"""The gallery of a catalog without holding its features: which box of which segment is which index row.

:func:`scan_gallery` reads every live segment's per-image and per-box arrays except the features (about
1/10 of the bytes) and decides which boxes are live (the latest segment's entry of an image wins; deleted
images are left out), giving each live box its row. :func:`iter_feature_blocks` then streams the features
segment by segment in row order, so an index can be trained on a sample and filled block by block with
memory bounded by a few segments, whatever the catalogue's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zarr

from clothret.index.gallery import Gallery
from clothret.store.feature_store import open_segment, segment_url

logger = logging.getLogger(__name__)

READ_THREADS = 4
_ID_ARRAYS = ("image_ids", "item_ids", "box_image", "boxes", "scores", "categories")


@dataclass
class SegmentRows:
    """One segment's live boxes: ``keep`` (a mask over its boxes) and the row of its first live box."""

    segment_id: str
    url: str
    group_url: str
    keep: np.ndarray
    first_row: int

    @property
    def n_rows(self) -> int:
        return int(self.keep.sum())


@dataclass
class GalleryScan:
    """The rows of a gallery: per segment (catalog order) its live boxes; the id map of every row; and for
    each row its segment (position in ``segments``) and box number there (``row_segment``, ``row_box``)."""

    segments: list[SegmentRows]
    id_map: Gallery
    row_segment: np.ndarray  # (n,) int32
    row_box: np.ndarray  # (n,) int32
    dim: int
    n_images: int = 0  # images with a live box
    n_items: int = 0  # distinct items among them

    def __len__(self) -> int:
        return len(self.row_segment)

    @property
    def segment_ids(self) -> list[str]:
        return [s.segment_id for s in self.segments]


def _read_ids(url: str) -> tuple[zarr.Group, str, dict[str, np.ndarray]]:
    group, where = open_segment(url)
    return group, where, {name: group[name][:] for name in _ID_ARRAYS}


def _fixed_width(values: np.ndarray) -> np.ndarray:
    """Strings as a fixed-width unicode array (what the id map stores)."""
    if values.dtype.kind == "U":
        return values
    width = int(np.strings.str_len(values).max()) if len(values) else 1
    return values.astype(f"U{max(1, width)}")


def scan_gallery(
    store_url: str, version: str, segment_ids: Sequence[str], *, deleted_image_ids: Iterable[str] = (),
    threads: int = READ_THREADS,
) -> GalleryScan:
    """The live rows of the given committed segments (catalog order, oldest first), without features.

    Rows follow :func:`~clothret.index.gallery.gather_gallery`'s order exactly: segments in catalog order,
    boxes in segment order, an image's latest segment winning, deleted images left out.
    """
    if not segment_ids:
        raise ValueError(f"no committed segments to build a gallery from in {store_url} version {version}")
    urls = [segment_url(store_url, version, s) for s in segment_ids]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        read = list(pool.map(_read_ids, urls))
    seen = set(deleted_image_ids)
    keeps: list[np.ndarray] = [np.zeros(0, bool)] * len(urls)
    for i in range(len(urls) - 1, -1, -1):  # latest first: an image's latest entry wins
        arrays = read[i][2]
        image_ids = [str(v) for v in arrays["image_ids"]]
        live = np.fromiter((v not in seen for v in image_ids), bool, count=len(image_ids))
        keeps[i] = live[arrays["box_image"]] if len(arrays["box_image"]) else np.zeros(0, bool)
        seen.update(image_ids)
    segments, parts, first, dim, n_images, items = [], [], 0, None, 0, set()
    for i, (seg_id, url) in enumerate(zip(segment_ids, urls)):
        group, where, arrays = read[i]
        keep = keeps[i]
        dim = dim or int(group["features"].shape[1])
        segments.append(SegmentRows(seg_id, url, where, keep, first))
        first += int(keep.sum())
        box_image = arrays["box_image"][keep]
        shown = np.unique(box_image)
        n_images += len(shown)
        items.update(np.asarray(arrays["item_ids"])[shown].tolist())
        parts.append({
            "image_ids": _fixed_width(arrays["image_ids"])[box_image],
            "item_ids": _fixed_width(arrays["item_ids"])[box_image],
            "boxes": arrays["boxes"][keep], "categories": arrays["categories"][keep], "scores": arrays["scores"][keep],
            "row_segment": np.full(int(keep.sum()), i, np.int32),
            "row_box": np.flatnonzero(keep).astype(np.int32),
        })
    if first == 0:
        raise ValueError(f"the {len(segment_ids)} live segments of {store_url} version {version} hold no boxes")
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    id_map = Gallery(np.zeros((first, dim), np.float32), joined["image_ids"], joined["item_ids"], joined["boxes"],
                     joined["categories"], joined["scores"])
    logger.info("gallery of %d boxes from %d segments (scanned without features)", first, len(segment_ids))
    return GalleryScan(segments, id_map, joined["row_segment"], joined["row_box"], int(dim), n_images, len(items))


def _read_features(segment: SegmentRows) -> np.ndarray:
    if segment.n_rows == 0:
        return np.zeros((0, 0), np.float16)
    features = zarr.open_group(segment.group_url, mode="r")["features"][:]
    return features[segment.keep]


def iter_feature_blocks(scan: GalleryScan, *, prefetch: int = 2) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, float16 features)`` of each segment with live boxes, in row order; the next
    ``prefetch`` segments are read (and decompressed) in threads while the caller works on one."""
    todo = [s for s in scan.segments if s.n_rows]
    with ThreadPoolExecutor(max_workers=max(1, prefetch)) as pool:
        pending = [pool.submit(_read_features, s) for s in todo[:prefetch]]
        for i, segment in enumerate(todo):
            block = pending[i].result()
            pending[i] = None
            if i + prefetch < len(todo):
                pending.append(pool.submit(_read_features, todo[i + prefetch]))
            yield segment.first_row, block


def gather_rows(scan: GalleryScan, rows: np.ndarray) -> np.ndarray:
    """The features of the given rows (any order), float32, in the order given, in one streamed pass."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), scan.dim), np.float32)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for start, block in iter_feature_blocks(scan):
        lo, hi = np.searchsorted(sorted_rows, [start, start + len(block)])
        if hi > lo:
            out[order[lo:hi]] = block[sorted_rows[lo:hi] - start]
    return out
