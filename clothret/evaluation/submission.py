"""The DeepFashion2 retrieval challenge's submission file: a JSON list, one entry per query detection.

Each entry is ``{"query_image_id", "query_bbox": [x1, y1, x2, y2], "query_cls", "query_score",
"gallery_image_id": [20 ids], "gallery_bbox": [[x1, y1, x2, y2] x 20]}``. The challenge uses integer image
ids, so ids are written as ints when every id in the file is made of digits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import fsspec
import numpy as np

from clothret.index.results import QueryResult

logger = logging.getLogger(__name__)

SUBMISSION_TOP_K = 20
_KEYS = ("query_image_id", "query_bbox", "query_cls", "query_score", "gallery_image_id", "gallery_bbox")


def _is_digits(image_id: str) -> bool:
    return image_id.isascii() and image_id.isdigit()


def _box(box) -> list[float]:
    return [round(float(v), 2) for v in box]


def submission_entries(results: Sequence[QueryResult], top_k: int = SUBMISSION_TOP_K) -> list[dict]:
    """The submission entries of ``results``, each gallery list cut to ``top_k`` ranks."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    all_ids = [r.query_image_id for r in results] + [g for r in results for g in r.gallery_image_ids[:top_k]]
    as_int = all(_is_digits(str(i)) for i in all_ids)
    if not as_int:
        logger.info("some image ids are not all digits: writing every image id as a string")
    convert = int if as_int else str

    entries = []
    n_short = 0
    for r in results:
        boxes = np.asarray(r.gallery_boxes, dtype=np.float64).reshape(-1, 4)[:top_k]
        ids = list(r.gallery_image_ids[:top_k])
        if len(ids) != len(boxes):
            raise ValueError(
                f"query result on image {r.query_image_id!r} has {len(r.gallery_image_ids)} gallery image ids "
                f"but {len(r.gallery_boxes)} gallery boxes"
            )
        n_short += len(ids) < top_k
        entries.append(
            {
                "query_image_id": convert(r.query_image_id),
                "query_bbox": _box(r.box),
                "query_cls": int(r.category_id),
                "query_score": float(r.score),
                "gallery_image_id": [convert(g) for g in ids],
                "gallery_bbox": [_box(b) for b in boxes],
            }
        )
    if n_short:
        logger.warning("%d query results have fewer than %d gallery entries", n_short, top_k)
    return entries


def write_submission(results: Sequence[QueryResult], url: str, top_k: int = SUBMISSION_TOP_K) -> int:
    """Write ``results`` as a challenge submission JSON file at fsspec ``url``; returns the entry count."""
    entries = submission_entries(results, top_k)
    with fsspec.open(url, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    logger.info("wrote %d submission entries to %s", len(entries), url)
    return len(entries)


def _image_id(value, id_width: int | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:0{id_width}d}" if id_width else str(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"image ids must be ints or strings, got {value!r}")


def read_submission(url: str, *, id_width: int | None = None) -> list[QueryResult]:
    """Read a submission file back into :class:`QueryResult` objects.

    Integer image ids become strings, zero-padded to ``id_width`` digits when given (DeepFashion2 file
    names use 6). The format holds no gallery item ids or similarities: those come back as ``""`` and NaN.
    """
    with fsspec.open(url, "r", encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{url}: a submission must be a JSON list, got {type(entries).__name__}")
    results = []
    for i, entry in enumerate(entries):
        missing = [k for k in _KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"{url}: entry {i} lacks {missing}; every entry needs {list(_KEYS)}")
        try:
            ids = [_image_id(g, id_width) for g in entry["gallery_image_id"]]
            boxes = np.asarray(entry["gallery_bbox"], dtype=np.float32).reshape(-1, 4)
            x1, y1, x2, y2 = (float(v) for v in entry["query_bbox"])
            result = QueryResult(
                query_image_id=_image_id(entry["query_image_id"], id_width),
                box=(x1, y1, x2, y2),
                score=float(entry["query_score"]),
                category_id=int(entry["query_cls"]),
                gallery_image_ids=ids,
                gallery_boxes=boxes,
                gallery_item_ids=[""] * len(ids),
                similarities=np.full(len(ids), np.nan, dtype=np.float32),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{url}: entry {i} is malformed ({exc})") from exc
        if len(boxes) != len(ids):
            raise ValueError(f"{url}: entry {i} has {len(ids)} gallery image ids but {len(boxes)} gallery boxes")
        results.append(result)
    logger.info("read %d submission entries from %s", len(results), url)
    return results
