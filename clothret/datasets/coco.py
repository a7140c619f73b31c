"""DeepFashion2 records as a COCO detection data set (13 categories), for pycocotools and mmdetection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from clothret.datasets.records import CATEGORIES, ImageRecord


def coco_detection_dict(
    records: Sequence[ImageRecord],
    *,
    file_name: Callable[[ImageRecord], str] = lambda r: r.path,
    image_sizes: bool = False,
) -> dict:
    """Images (ids 1..n in record order), one annotation per item (pixel box as ``x, y, w, h`` and as a
    box-shaped polygon, so mask heads can train) and the 13 categories. ``image_sizes`` reads each
    image's width and height (mmdetection needs them; pycocotools does not)."""
    images, annotations = [], []
    for i, record in enumerate(records, start=1):
        image = {"id": i, "file_name": file_name(record)}
        if image_sizes:
            from PIL import Image

            with Image.open(record.path) as img:
                image["width"], image["height"] = img.size
        images.append(image)
        for item in record.items:
            x1, y1, x2, y2 = (float(v) for v in item.bbox)
            w, h = max(0.0, x2 - x1), max(0.0, y2 - y1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": int(item.category_id),
                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            })
    categories = [{"id": i, "name": name} for i, name in enumerate(CATEGORIES, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}
