"""Weighted boxes fusion, pixel <-> normalised conversion and crops, on hand-built boxes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from clothret.detection.crops import crop_boxes
from clothret.detection.fusion import CONF_TYPES, FusionConfig, fuse_batch, fuse_detections, to_normalized, to_pixels
from clothret.detection.types import Detections

SIZE = (200, 100)  # width, height
CFG = FusionConfig(score_prefilter=0.0, min_box_size=0.0)


def det(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32), np.asarray(scores), np.asarray(labels))


def test_two_agreeing_detectors_give_one_weighted_box():
    a = det([[20, 10, 100, 60]], [0.9], [3])
    b = det([[24, 14, 104, 64]], [0.6], [3])
    out = fuse_detections([a, b], image_size=SIZE, weights=[2.0, 1.0], config=CFG)
    assert len(out) == 1
    wa, wb = 0.9 * 2.0, 0.6 * 1.0  # coordinates are weighted by score * detector weight
    expected = (wa * np.array([20, 10, 100, 60]) + wb * np.array([24, 14, 104, 64])) / (wa + wb)
    np.testing.assert_allclose(out.boxes[0], expected, atol=1e-3)
    # "avg": the weight-averaged score of the cluster
    assert out.scores[0] == pytest.approx((0.9 * 2 + 0.6 * 1) / 3, abs=1e-6)
    assert out.labels.tolist() == [3]
    assert out.labels.dtype == np.int64


def test_disagreeing_detectors_keep_both_with_scores_scaled_by_weight():
    a = det([[20, 10, 100, 60]], [0.9], [3])
    b = det([[20, 10, 100, 60]], [0.6], [5])  # same place, other category: not merged
    c = det([[150, 50, 190, 95]], [0.8], [3])  # same category, no overlap
    out = fuse_detections([a, b], image_size=SIZE, weights=[2.0, 1.0], config=CFG)
    assert out.labels.tolist() == [3, 5]
    assert out.scores.tolist() == pytest.approx([0.6, 0.2])
    out = fuse_detections([a, c], image_size=SIZE, config=CFG)
    assert len(out) == 2
    np.testing.assert_allclose(out.scores, [0.45, 0.4], atol=1e-6)  # sorted by score; each / 2 detectors
    np.testing.assert_allclose(out.boxes, [[20, 10, 100, 60], [150, 50, 190, 95]], atol=1e-3)


def test_conf_type_max():
    a = det([[20, 10, 100, 60]], [0.9], [1])
    b = det([[22, 10, 100, 60]], [0.5], [1])
    out = fuse_detections([a, b], image_size=SIZE, config=CFG.model_copy(update={"conf_type": "max"}))
    assert out.scores.tolist() == pytest.approx([0.9])


def test_round_trip_and_clipping():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, size=(50, 2, 2)) * np.array([200, 100])
    boxes = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
    norm = to_normalized(boxes, SIZE)
    assert norm.min() >= 0 and norm.max() <= 1
    np.testing.assert_allclose(to_pixels(norm, SIZE), boxes, atol=1e-9)
    np.testing.assert_allclose(to_normalized([[-10, -5, 250, 120]], SIZE), [[0, 0, 1, 1]])
    assert to_normalized(np.zeros((0, 4)), SIZE).shape == (0, 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: to_normalized([[10, 10, 5, 20]], SIZE), "x2 < x1"),
        (lambda: to_normalized([[1, 2, 3]], SIZE), "shape"),
        (lambda: to_normalized([[0, 0, np.nan, 1]], SIZE), "non-finite"),
        (lambda: to_normalized([[0, 0, 1, 1]], (0, 10)), "image_size"),
        (lambda: to_pixels([[0, 0, 1.5, 1]], SIZE), r"\[0, 1\]"),
    ],
)
def test_conversion_errors_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_inputs():
    empty = Detections.empty()
    assert len(fuse_detections([empty], image_size=SIZE, config=CFG)) == 0
    assert len(fuse_detections([empty, empty, empty], image_size=SIZE, config=CFG)) == 0
    one = det([[20, 10, 100, 60]], [0.7], [2])
    out = fuse_detections([empty, one], image_size=SIZE, config=CFG)  # only one detector found boxes
    assert out.labels.tolist() == [2]
    assert out.scores.tolist() == pytest.approx([0.35])
    assert fuse_batch([[empty, one], [one, empty]], image_sizes=[SIZE, SIZE], config=CFG)[1].labels.tolist() == [2]


def test_one_detector_runs_wbf_and_merges_its_own_overlaps():
    one = det([[20, 10, 100, 60], [21, 10, 101, 60], [150, 50, 190, 95]], [0.8, 0.4, 0.3], [1, 1, 1])
    out = fuse_detections([one], image_size=SIZE, config=CFG)
    assert len(out) == 2
    assert out.scores[0] == pytest.approx(0.6)  # mean of 0.8 and 0.4
    np.testing.assert_allclose(out.boxes[0], [20 + 1 / 3, 10, 100 + 1 / 3, 60], atol=1e-3)


def test_prefilter_max_boxes_and_min_size():
    boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(10)] + [[0, 50, 100, 51]]
    one = det(boxes, np.linspace(0.95, 0.05, 11), [1] * 11)
    assert len(fuse_detections([one], image_size=SIZE, config=CFG)) == 11
    cfg = FusionConfig(score_prefilter=0.45, min_box_size=0.0)
    out = fuse_detections([one], image_size=SIZE, config=cfg)
    assert out.scores.min() >= 0.45 and len(out) == 6
    out = fuse_detections([one], image_size=SIZE, config=cfg.model_copy(update={"max_boxes_per_image": 3}))
    assert out.scores.tolist() == pytest.approx([0.95, 0.86, 0.77])
    out = fuse_detections([one], image_size=SIZE, config=FusionConfig(score_prefilter=0.0, min_box_size=2.0))
    assert len(out) == 10 and (out.boxes[:, 3] - out.boxes[:, 1]).min() >= 2.0


def test_input_validation():
    one = det([[20, 10, 100, 60]], [0.7], [2])
    with pytest.raises(ValueError, match="at least one detector"):
        fuse_detections([], image_size=SIZE)
    with pytest.raises(ValueError, match="weights has 1 entries but there are 2"):
        fuse_detections([one, one], image_size=SIZE, weights=[1.0])
    with pytest.raises(ValueError, match="positive"):
        fuse_detections([one], image_size=SIZE, weights=[0.0])
    with pytest.raises(ValueError, match="scores must lie"):
        fuse_detections([det([[20, 10, 100, 60]], [1.5], [2])], image_size=SIZE)
    with pytest.raises(ValueError, match="labels"):
        fuse_detections([det([[20, 10, 100, 60]], [0.5], [0])], image_size=SIZE)
    with pytest.raises(ValidationError, match="box_and_model_avg"):
        FusionConfig(conf_type="mean")
    assert set(CONF_TYPES) >= {"avg", "max"}


def test_crop_boxes_clips_pads_and_keeps_one_pixel():
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    crops = crop_boxes(image, np.array([[2, 3, 6, 8], [-5, -5, 100, 100], [30, 30, 40, 40], [4.2, 4.2, 4.2, 4.2]]))
    assert [c.shape for c in crops] == [(5, 4, 3), (10, 20, 3), (1, 1, 3), (1, 1, 3)]
    np.testing.assert_array_equal(crops[0], image[3:8, 2:6])
    np.testing.assert_array_equal(crops[2], image[9:10, 19:20])
    padded = crop_boxes(image, np.array([[4, 4, 8, 6]]), pad=0.5)
    assert padded[0].shape == (4, 8, 3)  # 2 px each side in x, 1 px in y
    assert crop_boxes(image, np.zeros((0, 4))) == []
    assert crop_boxes(image[..., 0], np.array([[0, 0, 2, 2]]))[0].shape == (2, 2)
    with pytest.raises(ValueError, match="pad"):
        crop_boxes(image, np.array([[0, 0, 2, 2]]), pad=-1)
    with pytest.raises(ValueError, match="shape"):
        crop_boxes(image, np.array([0, 0, 2, 2]))


# What ensemble-boxes 1.0.9 does to the score of a box found by only some detectors (pinned, since the
# retrieval gallery's box ranking depends on it): with weights w and a cluster of boxes with scores s_i from
# detectors d_i, "avg" gives sum(s_i * w_di) / sum(w) (a box found by one of two equal detectors: half its
# score), "max" gives max(s_i * w_di) / max(w), "box_and_model_avg" and "absent_model_aware_avg" give
# sum(s_i * w_di) / sum(w) here too when each detector has one box in the cluster.
@pytest.mark.parametrize(
    ("conf_type", "agreeing", "alone"),
    [
        ("avg", (0.9 * 2 + 0.6) / 3, 0.8 * 1 / 3),
        ("max", 0.9 * 2 / 2, 0.8 * 1 / 2),
        ("box_and_model_avg", (0.9 * 2 + 0.6) / 3, 0.8 * 1 / 3),
        ("absent_model_aware_avg", (0.9 * 2 + 0.6) / 3, 0.8 * 1 / 3),
    ],
)
def test_partial_detections_scores_per_conf_type(conf_type, agreeing, alone):
    a = det([[20, 10, 100, 60]], [0.9], [3])
    b = det([[22, 12, 102, 62], [150, 50, 190, 95]], [0.6, 0.8], [3, 4])  # the second box only b finds
    out = fuse_detections([a, b], image_size=SIZE, weights=[2.0, 1.0], config=CFG.model_copy(update={"conf_type": conf_type}))
    by_label = dict(zip(out.labels.tolist(), out.scores.tolist()))
    assert by_label == pytest.approx({3: agreeing, 4: alone}, abs=1e-6)
    np.testing.assert_allclose(out.boxes[out.labels == 4][0], [150, 50, 190, 95], atol=1e-3)  # kept as it was


def test_three_detectors_one_missing():
    a = det([[20, 10, 100, 60]], [0.9], [1])
    b = det([[20, 10, 100, 60]], [0.6], [1])
    out = fuse_detections([a, b, Detections.empty()], image_size=SIZE, config=CFG)
    assert len(out) == 1 and out.scores[0] == pytest.approx((0.9 + 0.6) / 3, abs=1e-6)  # the absent one counts as 0
    np.testing.assert_allclose(out.boxes[0], [20, 10, 100, 60], atol=1e-3)


def test_iou_thr_decides_whether_boxes_merge():
    a = det([[0, 0, 100, 100]], [0.8], [1])
    b = det([[0, 0, 100, 60]], [0.8], [1])  # IoU 0.6 with a
    assert len(fuse_detections([a, b], image_size=(200, 200), config=CFG.model_copy(update={"iou_thr": 0.55}))) == 1
    assert len(fuse_detections([a, b], image_size=(200, 200), config=CFG.model_copy(update={"iou_thr": 0.65}))) == 2


def test_skip_box_thr_and_prefilter_use_the_raw_score():
    a = det([[20, 10, 100, 60]], [0.3], [1])
    b = det([[150, 50, 190, 95]], [0.5], [2])
    for cfg in (CFG.model_copy(update={"skip_box_thr": 0.4}), CFG.model_copy(update={"score_prefilter": 0.4})):
        out = fuse_detections([a, b], image_size=SIZE, weights=[3.0, 1.0], config=cfg)
        assert out.labels.tolist() == [2]  # a's 0.3 is dropped although 0.3 * weight 3 > 0.4
        assert out.scores.tolist() == pytest.approx([0.5 / 4])


def test_min_box_size_drops_small_boxes_before_and_after_fusion():
    big = det([[20, 10, 100, 60]], [0.9], [1])
    thin = det([[20, 10, 100, 13]], [0.9], [1])  # 80 x 3 px: dropped before fusion, so it cannot shrink big
    out = fuse_detections([big, thin], image_size=SIZE, config=CFG.model_copy(update={"min_box_size": 4.0}))
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], [20, 10, 100, 60], atol=1e-3)
    assert out.scores[0] == pytest.approx(0.45)
    assert len(fuse_detections([thin], image_size=SIZE, config=CFG.model_copy(update={"min_box_size": 4.0}))) == 0
    assert len(fuse_detections([thin], image_size=SIZE, config=CFG.model_copy(update={"min_box_size": 3.0}))) == 1


def test_cap_keeps_the_best_fused_boxes_per_image():
    rng = np.random.default_rng(0)
    per_detector = []
    for d in range(3):
        boxes = [[30 * i + d, 5 + d, 30 * i + 25 + d, 40 + d] for i in range(6)]  # 6 objects, 3 detectors agree
        per_detector.append(det(boxes, rng.uniform(0.2, 1.0, 6), [1 + i % 2 for i in range(6)]))
    full = fuse_detections(per_detector, image_size=SIZE, config=CFG)
    assert len(full) == 6
    for cap in (1, 3, 6):
        capped = fuse_detections(per_detector, image_size=SIZE, config=CFG.model_copy(update={"max_boxes_per_image": cap}))
        np.testing.assert_allclose(capped.scores, full.scores[:cap])
        np.testing.assert_allclose(capped.boxes, full.boxes[:cap])
    assert np.all(np.diff(full.scores) <= 0)


def test_an_exit_inside_ensemble_boxes_becomes_an_error(capsys):
    """ensemble-boxes calls exit() on inputs it rejects; a worker process must not end because of it. The
    settings check refuses an unknown conf_type first, so the real library's exit is reached here only by
    building the settings unchecked."""
    from clothret.detection import fusion

    unchecked = FusionConfig.model_construct(**{**FusionConfig().model_dump(), "conf_type": "bogus"})
    dets = Detections(np.array([[10, 10, 50, 60]]), np.array([0.9]), np.array([3]))
    with pytest.raises(RuntimeError, match="ensemble-boxes rejected the fusion inputs \\(conf_type 'bogus'\\)"):
        fusion.fuse_detections([dets], image_size=(100, 100), config=unchecked)
    assert "Unknown conf_type: bogus" in capsys.readouterr().out  # what ensemble-boxes printed before exit()
    with pytest.raises(ValidationError, match="unknown conf_type 'bogus'"):
        FusionConfig(conf_type="bogus")
