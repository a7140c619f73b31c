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
    # No overlap with any item: np.argmax of an all-zero row is the first item (ITEM0, category 1).
    nowhere = result((300.0, 300.0, 350.0, 350.0), 0.9, 1, [("g1", G1_BOX)])
    assert outcome_of_item0([nowhere]).result is nowhere
    assert retrieval_accuracy(QUERY, GALLERY, [nowhere])["n_missed"] == 1


# Street image 000404 of a demo run, by hand: one item; a detection of its category far away from it with
# the best score, and a weaker one on the item whose gallery list finds the shop item at rank 12.
ONE_ITEM = Item(category_id=1, style=1, bbox=(40.0, 40.0, 140.0, 160.0))
QUERY_404 = [ImageRecord("000404", "000404.jpg", "user", pair_id=1, items=(ONE_ITEM,))]
RANK12 = [("g3", G1_BOX)] * 11 + [("g1", G1_BOX)] + [("g3", G1_BOX)] * 8


def test_one_item_owns_every_detection_even_without_overlap():
    """The official rule: argmax over the image's items even at IoU 0, so the far-off detection with the
    best score speaks for the item (a miss at every k); dropping IoU-0 detections would give a hit at 12."""
    far = result((150.0, 0.0, 190.0, 30.0), 0.95, 1, [("g3", G1_BOX)] * 20, image_id="000404")
    on_item = result((42.0, 38.0, 138.0, 158.0), 0.60, 1, RANK12, image_id="000404")
    assert iou_matrix([far.box], [ONE_ITEM.bbox])[0, 0] == 0.0
    (outcome,) = item_outcomes(QUERY_404, GALLERY, [far, on_item])
    assert outcome.result is far and outcome.first_hit_rank is None
    acc = retrieval_accuracy(QUERY_404, GALLERY, [far, on_item])
    assert acc["acc@15"] == 0.0 and acc["acc@20"] == 0.0 and acc["n_missed"] == 0
    # Once the far-off detection scores lower, the one on the item speaks for it: a hit at rank 12.
    far.score = 0.5
    (outcome,) = item_outcomes(QUERY_404, GALLERY, [far, on_item])
    assert outcome.result is on_item and outcome.first_hit_rank == 11
    acc = retrieval_accuracy(QUERY_404, GALLERY, [far, on_item])
    assert acc["acc@10"] == 0.0 and acc["acc@15"] == 1.0 and acc["acc@20"] == 1.0


def test_a_detection_overlapping_no_item_goes_to_the_first_item_and_ties_to_the_earlier_one():
    first = Item(category_id=1, style=1, bbox=(0.0, 0.0, 50.0, 50.0))
    second = Item(category_id=1, style=1, bbox=(100.0, 0.0, 150.0, 50.0))
    query = [ImageRecord("q2", "q2.jpg", "user", pair_id=1, items=(first, second))]
    nowhere = result((0.0, 200.0, 50.0, 250.0), 0.9, 1, [("g1", G1_BOX)], image_id="q2")
    between = result((50.0, 0.0, 100.0, 50.0), 0.8, 1, [("g1", G1_BOX)], image_id="q2")  # touches both: IoU 0, 0
    straddle = result((25.0, 0.0, 125.0, 50.0), 0.7, 1, [("g1", G1_BOX)], image_id="q2")  # IoU 1/3 with both
    outcomes = item_outcomes(query, GALLERY, [straddle, between, nowhere])
    assert outcomes[0].result is nowhere  # all three belong to the first item; the best score speaks for it
    assert outcomes[1].result is None
    assert outcomes[0].first_hit_rank == 0


def test_results_on_unknown_images_are_ignored_and_bad_ks_rejected():
    stray = result(ITEM0.bbox, 0.9, 1, [("g1", G1_BOX)], image_id="elsewhere")
    assert retrieval_accuracy(QUERY, GALLERY, [stray])["n_missed"] == 2
    with pytest.raises(ValueError, match="ks"):
        retrieval_accuracy(QUERY, GALLERY, [], ks=(0, 5))
