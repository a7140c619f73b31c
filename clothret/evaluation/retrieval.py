"""DeepFashion2 clothes-retrieval Acc@k.

The protocol of the DeepFashion2 retrieval challenge, as its official scoring code
(``deepfashion2_api/PythonAPI/deepfashion2_retrieval_test.py`` in switchablenorms/DeepFashion2) computes it:

- Every street (query) item with ``style > 0`` counts once in the denominator; an item without a usable
  detection counts as a failure (as does every item of an image without any detection).
- Each query detection is assigned to one ground-truth item of its own image: ``np.argmax`` over its IoU
  with every item of the image (any style, no threshold). The argmax is taken even when every IoU is 0, so
  a detection that overlaps nothing still belongs to an item: with one item in the image, every detection
  of the image belongs to it; with several items all at IoU 0 (or tied), to the first one in annotation
  order, since ``np.argmax`` returns the first maximum.
- Per ground-truth item with ``style > 0``, the assigned detections whose predicted category equals the
  item's are kept, and the one with the highest detection score is used (the first in submission order on
  a tie). A far-off detection of the right category with the best score therefore speaks for the item,
  even when a weaker detection on the item itself would have found it.
- Its ranked gallery list is a hit at ``k`` when some rank ``r < k`` (0-based) is a gallery image holding a
  positive shop item (same ``pair_id`` and ``style``) and the returned box has IoU >= 0.5 with that item.
- IoU is pycocotools' box IoU: widths are ``x2 - x1`` (no ``+ 1``), see :func:`clothret.evaluation.boxes.iou_matrix`.

:func:`item_outcomes` gives the per-item outcome (used by the HTML report); :func:`retrieval_accuracy`
aggregates it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clothret.datasets.records import ImageRecord, Item
from clothret.evaluation.boxes import iou_matrix
from clothret.index.results import QueryResult

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 15, 20)
GALLERY_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class ItemOutcome:
    """How one query item (``style > 0``) fared.

    ``result`` is the chosen detection (``None``: missed). ``hits[r]`` says whether rank ``r`` (0-based) of
    its gallery list is a positive; ``first_hit_rank`` is the first such rank, or ``None``.
    """

    query_image_id: str
    item_index: int
    item: Item
    pair_id: int
    result: QueryResult | None
    hits: tuple[bool, ...]
    first_hit_rank: int | None
    n_positive_images: int

    @property
    def missed(self) -> bool:
        """True when no detection of the right category was assigned to the item."""
        return self.result is None

    def hit_at(self, k: int) -> bool:
        """True when a positive is among the first ``k`` ranks."""
        return self.first_hit_rank is not None and self.first_hit_rank < k


def _index_by_id(records: Sequence[ImageRecord], name: str) -> dict[str, ImageRecord]:
    by_id: dict[str, ImageRecord] = {}
    for record in records:
        if record.image_id in by_id:
            raise ValueError(f"{name} holds image id {record.image_id!r} more than once")
        by_id[record.image_id] = record
    return by_id


def _positive_boxes(gallery_records: Sequence[ImageRecord]) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """``(pair_id, style) -> gallery image id -> (p, 4)`` boxes of its matchable shop items."""
    lists: dict[tuple[int, int], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    n_skipped = 0
    for record in gallery_records:
        if record.source != "shop":
            n_skipped += 1
            continue
        for item, key in zip(record.items, record.match_keys()):
            if key is not None:
                lists[key][record.image_id].append(item.bbox)
    if n_skipped:
        logger.warning("ignored %d gallery records whose source is not 'shop'", n_skipped)
    return {
        key: {image_id: np.asarray(boxes, dtype=np.float64) for image_id, boxes in per_image.items()}
        for key, per_image in lists.items()
    }


def _assign_detections(
    query_by_id: dict[str, ImageRecord], results: Sequence[QueryResult]
) -> dict[tuple[str, int], list[QueryResult]]:
    """``(query image id, item index) -> detections`` assigned to that item: the argmax of IoU over the
    image's items, also when every IoU is 0 (the first item then), as the official scoring does."""
    per_image: dict[str, list[QueryResult]] = defaultdict(list)
    n_unknown = 0
    for result in results:
        if result.query_image_id in query_by_id:
            per_image[result.query_image_id].append(result)
        else:
            n_unknown += 1
    if n_unknown:
        logger.warning("ignored %d query results whose query_image_id is not in query_records", n_unknown)

    assigned: dict[tuple[str, int], list[QueryResult]] = defaultdict(list)
    for image_id, image_results in per_image.items():
        items = query_by_id[image_id].items
        if not items:
            continue
        ious = iou_matrix(
            np.asarray([r.box for r in image_results], dtype=np.float64),
            np.asarray([it.bbox for it in items], dtype=np.float64),
        )
        for result, j in zip(image_results, ious.argmax(axis=1)):
            assigned[(image_id, int(j))].append(result)
    return assigned


def _rank_hits(result: QueryResult, positives: dict[str, np.ndarray]) -> tuple[bool, ...]:
    """Per rank of ``result``'s gallery list: a positive image and a box with IoU >= 0.5 to a positive item."""
    boxes = np.asarray(result.gallery_boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(result.gallery_image_ids):
        raise ValueError(
            f"query result on image {result.query_image_id!r} has {len(result.gallery_image_ids)} "
            f"gallery image ids but {len(boxes)} gallery boxes"
        )
    hits = []
    for image_id, box in zip(result.gallery_image_ids, boxes):
        item_boxes = positives.get(image_id)
        hit = item_boxes is not None and bool(
            (iou_matrix(box[None, :], item_boxes) >= GALLERY_IOU_THRESHOLD).any()
        )
        hits.append(hit)
    return tuple(hits)


def item_outcomes(
    query_records: Sequence[ImageRecord],
    gallery_records: Sequence[ImageRecord],
    results: Sequence[QueryResult],
) -> list[ItemOutcome]:
    """One :class:`ItemOutcome` per query item with ``style > 0``, in record then item order."""
    query_by_id = _index_by_id(query_records, "query_records")
    positives = _positive_boxes(gallery_records)
    assigned = _assign_detections(query_by_id, results)

    outcomes = []
    for record in query_records:
        for index, (item, key) in enumerate(zip(record.items, record.match_keys())):
            if key is None:
                continue
            candidates = [r for r in assigned.get((record.image_id, index), []) if r.category_id == item.category_id]
            chosen = max(candidates, key=lambda r: r.score) if candidates else None
            item_positives = positives.get(key, {})
            hits = _rank_hits(chosen, item_positives) if chosen is not None else ()
            first = hits.index(True) if True in hits else None
            outcomes.append(
                ItemOutcome(
                    query_image_id=record.image_id,
                    item_index=index,
                    item=item,
                    pair_id=record.pair_id,
                    result=chosen,
                    hits=hits,
                    first_hit_rank=first,
                    n_positive_images=len(item_positives),
                )
            )
    return outcomes


def accuracy_from_outcomes(outcomes: Sequence[ItemOutcome], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Acc@k over per-item outcomes; see :func:`retrieval_accuracy` for the returned dict."""
    ks = tuple(ks)
    bad = [k for k in ks if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1]
    if not ks or bad:
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    n = len(outcomes)
    hits_at = {int(k): sum(o.hit_at(int(k)) for o in outcomes) for k in ks}
    if n == 0:
        logger.warning("no query items with style > 0: every Acc@k is reported as 0.0")
    summary: dict = {f"acc@{k}": (hits_at[k] / n if n else 0.0) for k in hits_at}
    summary.update(
        n_query_items=n,
        n_missed=sum(o.missed for o in outcomes),
        n_without_positive=sum(o.n_positive_images == 0 for o in outcomes),
        hits_at=hits_at,
    )
    return summary


def retrieval_accuracy(
    query_records: Sequence[ImageRecord],
    gallery_records: Sequence[ImageRecord],
    results: Sequence[QueryResult],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """DeepFashion2 retrieval Acc@k.

    Returns ``{"acc@1": float, ..., "n_query_items": int, "n_missed": int, "n_without_positive": int,
    "hits_at": {k: int}}``: ``n_missed`` items had no detection of their category, ``n_without_positive``
    had no matching shop item in the gallery (both still count in the denominator).
    """
    summary = accuracy_from_outcomes(item_outcomes(query_records, gallery_records, results), ks)
    logger.info(
        "retrieval accuracy over %d query items: %s",
        summary["n_query_items"],
        ", ".join(f"acc@{k}={summary[f'acc@{k}']:.4f}" for k in summary["hits_at"]),
    )
    return summary
