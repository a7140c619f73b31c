"""DeepFashion2 retrieval Acc@k on hand-made cases, and box IoU against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from clothret.datasets.records import ImageRecord, Item
from clothret.evaluation.boxes import iou_matrix
from clothret.evaluation.retrieval import item_outcomes, retrieval_accuracy
from clothret.index.results import QueryResult

ITEM0 = Item(category_id=1, style=1, bbox=(0.0, 0.0, 100.0, 100.0))
ITEM1 = Item(category_id=8, style=2, bbox=(100.0, 100.0, 200.0, 200.0))
ITEM_STYLE0 = Item(category_id=2, style=0, bbox=(0.0, 100.0, 100.0, 200.0))
QUERY = [ImageRecord("q1", "q1.jpg", "user", pair_id=1, items=(ITEM0, ITEM1, ITEM_STYLE0))]
GALLERY = [
    ImageRecord("g1", "g1.jpg", "shop", 1, (Item(1, 1, (10.0, 10.0, 60.0, 60.0)),)),  # positive of ITEM0
    ImageRecord("g2", "g2.jpg", "shop", 1, (Item(8, 2, (0.0, 0.0, 50.0, 50.0)),)),  # positive of ITEM1
    ImageRecord("g3", "g3.jpg", "shop", 2, (Item(1, 1, (10.0, 10.0, 60.0, 60.0)),)),  # other pair
    ImageRecord("g4", "g4.jpg", "user", 1, (Item(1, 1, (10.0, 10.0, 60.0, 60.0)),)),  # not a shop image
]
G1_BOX = (10.0, 10.0, 60.0, 60.0)


def result(box, score: float, category_id: int, gallery: list[tuple[str, tuple]], image_id: str = "q1"):
    return QueryResult(
        query_image_id=image_id,
        box=box,
        score=score,
        category_id=category_id,
        gallery_image_ids=[g for g, _ in gallery],
        gallery_boxes=np.asarray([b for _, b in gallery], dtype=np.float32).reshape(-1, 4),
        gallery_item_ids=[f"{g}_0" for g, _ in gallery],
        similarities=np.linspace(1.0, 0.5, len(gallery), dtype=np.float32),
    )


def outcome_of_item0(results):
    return item_outcomes(QUERY, GALLERY, results)[0]


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(2, 7, 2))
    a = np.concatenate([xy[0], xy[0] + rng.uniform(0, 50, size=(7, 2))], axis=1)
    b = np.concatenate([xy[1], xy[1] + rng.uniform(0, 50, size=(7, 2))], axis=1)[:5]
    expected = np.zeros((7, 5))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            expected[i, j] = inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 5)
    assert iou_matrix([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        iou_matrix(np.zeros((3, 3)), b)


def test_no_detection_is_a_miss_and_style0_items_are_excluded():
    acc = retrieval_accuracy(QUERY, GALLERY, [])
    assert acc["n_query_items"] == 2  # ITEM_STYLE0 is not counted
    assert acc["n_missed"] == 2
    assert all(isinstance(acc[f"acc@{k}"], float) and acc[f"acc@{k}"] == 0.0 for k in (1, 5, 10, 15, 20))
    outcomes = item_outcomes(QUERY, GALLERY, [])
    assert [(o.query_image_id, o.item_index, o.result, o.first_hit_rank) for o in outcomes] == [
        ("q1", 0, None, None),
        ("q1", 1, None, None),
    ]


def test_detection_on_a_style0_item_counts_for_nothing():
    on_style0 = result(ITEM_STYLE0.bbox, 0.9, 2, [("g1", G1_BOX)])
    acc = retrieval_accuracy(QUERY, GALLERY, [on_style0])
    assert acc["n_query_items"] == 2 and acc["n_missed"] == 2 and acc["acc@20"] == 0.0


def test_hit_at_rank_0_for_both_items():
    r0 = result(ITEM0.bbox, 0.9, 1, [("g1", G1_BOX)])
    r1 = result(ITEM1.bbox, 0.8, 8, [("g2", (0.0, 0.0, 50.0, 50.0))])
    acc = retrieval_accuracy(QUERY, GALLERY, [r0, r1])
    assert acc["acc@1"] == 1.0 and acc["n_missed"] == 0 and acc["hits_at"][1] == 2


def test_wrong_category_is_a_miss():
    wrong = result(ITEM0.bbox, 0.9, 2, [("g1", G1_BOX)])
    outcome = outcome_of_item0([wrong])
    assert outcome.result is None and outcome.first_hit_rank is None
    assert retrieval_accuracy(QUERY, GALLERY, [wrong])["n_missed"] == 2


def test_right_gallery_image_with_wrong_box_is_not_a_hit():
    # IoU of (10,10,60,60) with (35,10,85,60) is 1250 / 3750 = 0.33 < 0.5
    wrong_box = result(ITEM0.bbox, 0.9, 1, [("g1", (35.0, 10.0, 85.0, 60.0))])
    outcome = outcome_of_item0([wrong_box])
    assert outcome.result is wrong_box
    assert outcome.hits == (False,) and outcome.first_hit_rank is None
    # (10,10,60,60) vs (20,10,70,60): 2000 / 3000 = 0.67 >= 0.5
    ok_box = result(ITEM0.bbox, 0.9, 1, [("g1", (20.0, 10.0, 70.0, 60.0))])
    assert outcome_of_item0([ok_box]).first_hit_rank == 0


def test_other_pair_and_user_images_are_not_positives():
    r = result(ITEM0.bbox, 0.9, 1, [("g3", G1_BOX), ("g4", G1_BOX), ("g2", (0.0, 0.0, 50.0, 50.0))])
    assert outcome_of_item0([r]).hits == (False, False, False)  # g2 holds pair 1 but style 2


def test_hit_at_rank_7_counts_for_acc10_not_acc5():
    gallery = [("g3", G1_BOX)] * 7 + [("g1", G1_BOX)] + [("g3", G1_BOX)] * 12
    r = result(ITEM0.bbox, 0.9, 1, gallery)
    outcome = outcome_of_item0([r])
    assert outcome.first_hit_rank == 7 and outcome.hits[7] and sum(outcome.hits) == 1
    acc = retrieval_accuracy(QUERY, GALLERY, [r])
    assert acc["acc@1"] == 0.0 and acc["acc@5"] == 0.0
    assert acc["acc@10"] == 0.5 and acc["acc@15"] == 0.5 and acc["acc@20"] == 0.5
    assert acc["n_missed"] == 1  # ITEM1 had no detection


def test_two_detections_on_one_item_use_the_highest_score():
    hit = result((0.0, 0.0, 100.0, 90.0), 0.5, 1, [("g1", G1_BOX)])
    no_hit = result((0.0, 0.0, 90.0, 100.0), 0.9, 1, [("g3", G1_BOX)])
    outcome = outcome_of_item0([hit, no_hit])
    assert outcome.result is no_hit and outcome.first_hit_rank is None
    hit.score = 0.95
    outcome = outcome_of_item0([hit, no_hit])
    assert outcome.result is hit and outcome.first_hit_rank == 0


def test_detection_goes_to_the_item_with_the_highest_iou():
    # IoU with ITEM0 is 0.2, with ITEM_STYLE0 0.71: it is absorbed by the style-0 item, even with ITEM0's class.
    absorbed = result((0.0, 60.0, 100.0, 200.0), 0.9, 1, [("g1", G1_BOX)])
    assert outcome_of_item0([absorbed]).result is None
    # IoU with ITEM0 0.83, with ITEM_STYLE0 0.1: assigned to ITEM0.
    assigned = result((0.0, 0.0, 100.0, 120.0), 0.9, 1, [("g1", G1_BOX)])
    assert outcome_of_item0([assigned]).result is assigned
    # No overlap with any item: assigned to none.
    nowhere = result((300.0, 300.0, 350.0, 350.0), 0.9, 1, [("g1", G1_BOX)])
    assert retrieval_accuracy(QUERY, GALLERY, [nowhere])["n_missed"] == 2


def test_results_on_unknown_images_are_ignored_and_bad_ks_rejected():
    stray = result(ITEM0.bbox, 0.9, 1, [("g1", G1_BOX)], image_id="elsewhere")
    assert retrieval_accuracy(QUERY, GALLERY, [stray])["n_missed"] == 2
    with pytest.raises(ValueError, match="ks"):
        retrieval_accuracy(QUERY, GALLERY, [], ks=(0, 5))
