"""COCO-style detection AP (pycocotools) on hand-built boxes."""

from __future__ import annotations

import pytest

from clothret.datasets.records import ImageRecord, Item
from clothret.detection.types import Detections
from clothret.evaluation.detection_ap import detection_ap


def rec(image_id: str, *items: tuple[int, tuple[float, float, float, float]]) -> ImageRecord:
    return ImageRecord(image_id, f"{image_id}.jpg", "user", 1, tuple(Item(c, 1, box) for c, box in items))


def det(boxes, scores, labels) -> Detections:
    return Detections(boxes, scores, labels)


RECORDS = [
    rec("a", (1, (10, 10, 50, 60)), (7, (60, 10, 90, 40))),
    rec("b", (1, (0, 0, 30, 30))),
    rec("c"),  # an image without items: its detections are false positives
]


def test_perfect_predictions_score_one():
    preds = [det([[10, 10, 50, 60], [60, 10, 90, 40]], [0.9, 0.8], [1, 7]), det([[0, 0, 30, 30]], [0.7], [1]), Detections.empty()]
    out = detection_ap(RECORDS, preds)
    assert (out["ap"], out["ap50"], out["ap75"]) == (1.0, 1.0, 1.0)
    assert (out["n_images"], out["n_items"], out["n_detections"]) == (3, 3, 3)


def test_wrong_category_scores_zero():
    preds = [det([[10, 10, 50, 60], [60, 10, 90, 40]], [0.9, 0.8], [2, 2]), det([[0, 0, 30, 30]], [0.7], [2]), Detections.empty()]
    assert detection_ap(RECORDS, preds)["ap50"] == 0.0


def test_no_detections_score_zero():
    assert detection_ap(RECORDS, [Detections.empty()] * 3) == {
        "ap": 0.0, "ap50": 0.0, "ap75": 0.0, "n_images": 3, "n_items": 3, "n_detections": 0,
    }


@pytest.mark.parametrize(("shift", "ap50", "ap75"), [(25.0, 1.0, 0.0), (45.0, 0.0, 0.0), (5.0, 1.0, 1.0)])
def test_shifted_box_around_iou_thresholds(shift, ap50, ap75):
    # IoU of [0, 0, 100, 100] with the box moved right by s is (100 - s) / (100 + s): 0.6 for 25, 0.38 for 45, 0.90 for 5
    records = [rec("a", (3, (0, 0, 100, 100)))]
    out = detection_ap(records, [det([[shift, 0, 100 + shift, 100]], [0.9], [3])])
    assert (out["ap50"], out["ap75"]) == pytest.approx((ap50, ap75))


def test_ranking_matters_101_point_interpolation():
    records = [rec("a", (3, (0, 0, 100, 100)))]
    fp_first = [det([[150, 150, 190, 190], [0, 0, 100, 100]], [0.9, 0.8], [3, 3])]
    assert detection_ap(records, fp_first)["ap50"] == pytest.approx(0.5)  # precision 1/2 at recall 1
    tp_first = [det([[150, 150, 190, 190], [0, 0, 100, 100]], [0.8, 0.9], [3, 3])]
    assert detection_ap(records, tp_first)["ap50"] == pytest.approx(1.0)
    two = [rec("a", (3, (0, 0, 100, 100)), (3, (120, 0, 200, 100)))]
    half = detection_ap(two, [det([[0, 0, 100, 100]], [0.9], [3])])["ap50"]
    assert half == pytest.approx(51 / 101)  # recall 0.5 at precision 1: recall points 0, 0.01, ..., 0.5


def test_false_positives_of_a_category_without_ground_truth_do_not_count():
    preds = [det([[10, 10, 50, 60], [60, 10, 90, 40]], [0.9, 0.8], [1, 7]), det([[0, 0, 30, 30]], [0.7], [1]),
             det([[0, 0, 10, 10]], [0.99], [13])]
    assert detection_ap(RECORDS, preds)["ap"] == 1.0  # COCO: a category is scored only where it has ground truth


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="2 detections for 3 records"):
        detection_ap(RECORDS, [Detections.empty()] * 2)
    with pytest.raises(ValueError, match="no items"):
        detection_ap([rec("c")], [Detections.empty()])
    with pytest.raises(ValueError, match=r"detections\[0\] must be Detections"):
        detection_ap(RECORDS[:1], [[1, 2, 3]])
