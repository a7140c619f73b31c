"""Read and write the DeepFashion2 layout: ``<split>/image/NNNNNN.jpg`` + ``<split>/annos/NNNNNN.json``.

An annotation file holds ``source`` ("user" or "shop"), ``pair_id`` and ``item1..itemN``, each with
``category_id`` (1-13), ``style`` and ``bounding_box`` ``[x1, y1, x2, y2]`` in pixels. Other keys of the
real data set (segmentation, landmarks, occlusion, ...) are ignored. Paths are fsspec URLs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import fsspec

from clothret.datasets.records import NUM_CATEGORIES, ImageRecord, Item

logger = logging.getLogger(__name__)

SOURCES = ("user", "shop")


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def parse_annotation(image_id: str, image_path: str, anno: dict) -> ImageRecord:
    """Build an :class:`ImageRecord` from one parsed annotation dict; errors name the bad field."""
    source = anno.get("source")
    if source not in SOURCES:
        raise ValueError(f"image {image_id}: 'source' must be one of {SOURCES}, got {source!r}")
    if "pair_id" not in anno:
        raise ValueError(f"image {image_id}: missing 'pair_id'")
    item_keys = sorted(
        (k for k in anno if k.startswith("item") and k[4:].isdigit()), key=lambda k: int(k[4:])
    )
    items = []
    for key in item_keys:
        raw = anno[key]
        try:
            category_id = int(raw["category_id"])
            style = int(raw.get("style", 0))
            x1, y1, x2, y2 = (float(v) for v in raw["bounding_box"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"image {image_id}: {key} is malformed ({exc!r})") from exc
        if not 1 <= category_id <= NUM_CATEGORIES:
            raise ValueError(f"image {image_id}: {key}.category_id must be 1..13, got {category_id}")
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"image {image_id}: {key}.bounding_box is empty: {[x1, y1, x2, y2]}")
        items.append(Item(category_id=category_id, style=style, bbox=(x1, y1, x2, y2)))
    return ImageRecord(
        image_id=image_id, path=image_path, source=source, pair_id=int(anno["pair_id"]), items=tuple(items)
    )


def read_split(split_url: str, *, source: str | None = None) -> list[ImageRecord]:
    """All annotated images of one split folder, sorted by image id; ``source`` filters user/shop."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or None, got {source!r}")
    fs, root = fsspec.core.url_to_fs(split_url)
    annos_dir = _join(root, "annos")
    if not fs.isdir(annos_dir):
        raise FileNotFoundError(f"{split_url} is not a DeepFashion2 split: no annos/ folder in it")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    records = []
    for anno_path in sorted(fs.glob(_join(annos_dir, "*.json"))):
        image_id = anno_path.rsplit("/", 1)[-1][: -len(".json")]
        with fs.open(anno_path, "r") as f:
            anno = json.load(f)
        if source is not None and anno.get("source") != source:
            continue
        image_path = prefix + _join(root, "image", f"{image_id}.jpg")
        records.append(parse_annotation(image_id, image_path, anno))
    logger.info("read %d annotated images from %s", len(records), split_url)
    return records


def annotation_dict(record: ImageRecord) -> dict:
    """The DeepFashion2 JSON form of a record (the inverse of :func:`parse_annotation`)."""
    anno: dict = {"source": record.source, "pair_id": record.pair_id}
    for i, item in enumerate(record.items, start=1):
        anno[f"item{i}"] = {
            "category_id": item.category_id,
            "style": item.style,
            "bounding_box": [round(v, 2) for v in item.bbox],
        }
    return anno


def write_annotations(split_url: str, records: Iterable[ImageRecord]) -> int:
    """Write ``annos/<image_id>.json`` for each record under a split folder; returns the count."""
    fs, root = fsspec.core.url_to_fs(split_url)
    fs.makedirs(_join(root, "annos"), exist_ok=True)
    n = 0
    for record in records:
        with fs.open(_join(root, "annos", f"{record.image_id}.json"), "w") as f:
            json.dump(annotation_dict(record), f)
        n += 1
    return n
