"""Batched, device-resident detection (clothret.detection.batched) against torchvision's own forward, on the CPU:
the same boxes, scores and labels on seeded random models, and few host operations per batch (NMS: test_nms.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clothret.detection.batched import AnchorCache, _in_box_order, _pool_rois, detect_resident
from clothret.detection.torchvision_backend import (
    ARCHITECTURES,
    TorchvisionDetector,
    TorchvisionDetectorConfig,
    build_detector_model,
)
from clothret.op_count import OpCounter

TINY = {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 64, "max_size": 96}
SHAPES = [(60, 80), (72, 48), (60, 80), (100, 90), (60, 80), (33, 47)]  # three of one size: resized together


pytestmark = pytest.mark.usefixtures("at_most_two_torch_threads")


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in SHAPES]


def _sorted(boxes, scores, labels):
    """Rows by descending score, ties by coordinates and label (equal scores may come in either order)."""
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    order = np.lexsort((labels, boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    return boxes[order], scores[order], labels[order]


def _assert_same(expected, got, *, atol=1e-4):
    """The same detections per image. At the ``detections_per_img`` cut, boxes of exactly equal score (random
    models make some) may be kept in either implementation: there only the scores must agree."""
    assert len(expected) == len(got)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert len(e) == len(g), f"image {i}: {len(e)} boxes expected, got {len(g)}"
        eb, es, el = _sorted(e.boxes, e.scores, e.labels)
        gb, gs, gl = _sorted(g.boxes, g.scores, g.labels)
        np.testing.assert_allclose(gs, es, atol=atol, err_msg=f"image {i}")
        above = es > es.min() + atol if len(es) else es.astype(bool)
        np.testing.assert_allclose(gb[above], eb[above], atol=atol, err_msg=f"image {i}")
        np.testing.assert_array_equal(gl[above], el[above], err_msg=f"image {i}")


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize(
    "settings",
    [
        {"score_thresh": 0.0, "detections_per_img": 100},  # every candidate counts: long NMS inputs
        {"score_thresh": 0.0, "detections_per_img": 30, "nms_thresh": 0.05},  # heavy suppression: the prefix grows
        {"score_thresh": None, "detections_per_img": 100},  # a threshold amid the scores: some candidates drop
    ],
    ids=["thresh0", "suppress", "thresh-mid"],
)
def test_batched_detection_is_torchvisions(architecture, settings):
    torch.manual_seed(0)
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY, **{**settings, "score_thresh": 0.0})
    detector = TorchvisionDetector(build_detector_model(config), config, name=architecture)
    images = _images()
    if settings["score_thresh"] is None:  # random models score in a narrow band: cut it in the middle
        middle = float(np.median(np.concatenate([d.scores for d in detector.detect(images)])))
        model = detector.model.roi_heads if architecture == "faster_rcnn" else detector.model
        model.score_thresh = middle
    expected = detector.detect(images)  # torchvision's forward, image by image
    got = detector.detect_resident([torch.from_numpy(img).permute(2, 0, 1) for img in images])
    assert sum(len(d) for d in expected) > 0
    _assert_same(expected, got)


def test_faster_rcnn_pools_its_proposals_on_every_level_as_torchvision():
    """With proposals of every size (800 px images, anchors up to 512 px, each level's best proposals kept) the
    box head runs on rows in level order, and its outputs must go back to their proposals (on the small
    images above every proposal pools on the first level)."""
    torch.manual_seed(0)
    config = TorchvisionDetectorConfig(architecture="faster_rcnn", **{**TINY, "min_size": 800, "max_size": 1066},
                                       min_level=2, max_level=6, anchor_scale=2.0, score_thresh=0.0)
    detector = TorchvisionDetector(build_detector_model(config), config, name="faster_rcnn")
    detector.model.rpn._post_nms_top_n["testing"] = 4000
    images = [np.random.default_rng(i).integers(0, 256, size=(600, 800, 3), dtype=np.uint8) for i in range(2)]
    levels = []
    pooler = detector.model.roi_heads.box_roi_pool
    hook = pooler.register_forward_hook(lambda m, args, out: levels.append(m.map_levels(args[1])))
    expected = detector.detect(images)
    hook.remove()
    assert len(set(torch.cat(levels).tolist())) == 4
    _assert_same(expected, detector.detect_resident([torch.from_numpy(img).permute(2, 0, 1) for img in images]))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_channels_last_keeps_the_best_boxes(architecture):
    """channels-last changes the convolutions' summation order: the leading boxes stay put."""
    torch.manual_seed(1)
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY, score_thresh=0.0, detections_per_img=20)
    detector = TorchvisionDetector(build_detector_model(config), config)
    images = [torch.from_numpy(img).permute(2, 0, 1) for img in _images(1)]
    plain = detector.detect_resident(images)
    detector.configure(channels_last=True)
    assert detector.model.backbone.body["0"][0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = detector.detect_resident(images)
    for p, f in zip(plain, fast):
        np.testing.assert_allclose(f.scores[:5], p.scores[:5], atol=1e-4)
        np.testing.assert_allclose(f.boxes[:5], p.boxes[:5], atol=1e-2)


def test_resident_detections_on_an_empty_batch_and_bad_images():
    torch.manual_seed(0)
    config = TorchvisionDetectorConfig(**TINY)
    detector = TorchvisionDetector(build_detector_model(config), config)
    assert detector.detect_resident([]) == []
    with pytest.raises(ValueError, match=r"image 1 must be uint8"):
        detector.detect_resident([torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match=r"image 0 must have shape \(3, H, W\)"):
        detector.detect_resident([torch.zeros(8, 8, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="FCOS, RetinaNet and FasterRCNN"):
        detect_resident(torch.nn.Linear(2, 2), [torch.zeros(3, 8, 8, dtype=torch.uint8)], anchors=AnchorCache())


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_blank_rows_added_for_a_compiled_batch_shape_change_nothing(architecture):
    """``pad_to`` (what compiled parts use so that a short batch has the full batch's shape) leaves the real
    images' detections as they were: GroupNorm heads normalise per image, batch norms are fixed."""
    torch.manual_seed(2)
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY, score_thresh=0.0, detections_per_img=30)
    model = build_detector_model(config).eval()
    images = [torch.from_numpy(img).permute(2, 0, 1) for img in _images(2)[:3]]
    plain = detect_resident(model, images, anchors=AnchorCache()).to_host()
    padded = detect_resident(model, images, anchors=AnchorCache(), pad_to=8, channels_last=True).to_host()
    assert len(padded) == len(plain) == 3
    for (pb, ps, pl), (qb, qs, ql) in zip(plain, padded):
        assert len(qb) == len(pb)
        torch.testing.assert_close(qs[:10], ps[:10], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(qb[:10], pb[:10], rtol=1e-3, atol=1e-2)


def test_compiled_parts_see_one_batch_shape_and_give_the_eager_detections():
    """With ``compile`` on, a short last batch is filled up to the batch size, so each part compiles once per
    image size instead of once per batch length; the detections are the eager ones."""
    from torch._dynamo.utils import counters

    torch.manual_seed(3)
    config = TorchvisionDetectorConfig(architecture="retinanet", **TINY, head_convs=1, score_thresh=0.0,
                                       detections_per_img=20)
    detector = TorchvisionDetector(build_detector_model(config), config, batch_size=4)
    images = [torch.from_numpy(img).permute(2, 0, 1) for img in _images(3) if img.shape[:2] == (60, 80)] * 2
    eager = detector.detect_resident(images)  # 6 images: a batch of 4, then one of 2
    torch._dynamo.reset()
    counters.clear()
    detector.configure(compile="default")
    compiled = detector.detect_resident(images)
    compiled_again = detector.detect_resident(images[:3])
    assert counters["stats"]["unique_graphs"] == 2  # the backbone and the head, once each
    for e, c in zip(eager + eager[:3], compiled + compiled_again):
        np.testing.assert_allclose(c.scores, e.scores, atol=1e-4)
        np.testing.assert_allclose(c.boxes, e.boxes, atol=1e-2)


@pytest.mark.parametrize("architecture, nms_stages", [("fcos", 1), ("retinanet", 1), ("faster_rcnn", 2)])
def test_post_processing_does_not_work_image_by_image(architecture, nms_stages):
    """Host operations per batch hardly grow with its images (each costs a GPU launch or a wait): on the CPU
    only the non-maximum suppression runs per image (one ``nms`` call and its slices, ~4 operations, one of
    them a wait), on a GPU images share calls. Before batching the conversion, pooling and hand-over, each
    image cost 26-39 operations; and no ``bincount``, which on CUDA waits for the device twice."""
    torch.manual_seed(0)
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY, score_thresh=0.0)
    detector = TorchvisionDetector(build_detector_model(config), config, batch_size=16)
    counts = []
    for n in (4, 8):
        images = [torch.from_numpy(img).permute(2, 0, 1) for img in _images(n)][:1] * n  # one size: one group
        detector.detect_resident(images)  # anchors cached, copies made
        with torch.inference_mode(), OpCounter() as counter:
            found = detector.detect_resident(images)
        assert len(found) == n and all(len(d) for d in found)
        assert counter.by_name["aten.bincount.default"] == 0
        counts.append(counter)
    per_image = (counts[1].ops - counts[0].ops) / 4
    assert per_image <= 5 * nms_stages, f"{per_image} per image ({counts[0].ops} for 4 images, {counts[1].ops} for 8)"
    assert counts[1].waits - counts[0].waits == 4 * nms_stages  # the CPU's nms call per image
    assert counts[0].waits - 4 * nms_stages <= 4 * nms_stages, counts[0].waits  # the rest: a few per stage


def test_rois_of_all_levels_are_pooled_as_torchvisions_pooler_pools_them():
    """Boxes from 8 to 560 px fall on all four levels: the rows come in level order, each the pooler's own row
    for its box, and the head's outputs go back to the boxes' order."""
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    sizes = [(640, 576), (608, 640)]
    features = {str(i): torch.randn(2, 8, 640 // 4 // 2**i, 640 // 4 // 2**i) for i in range(4)}
    per_image = []
    for h, w in sizes:
        side = torch.exp(torch.empty(40).uniform_(np.log(8), np.log(560)))
        x1, y1 = torch.rand(40) * (w - side).clamp(min=1), torch.rand(40) * (h - side).clamp(min=1)
        per_image.append(torch.stack([x1, y1, x1 + side, y1 + side], dim=1))
    pooler = MultiScaleRoIAlign(list(features), output_size=7, sampling_ratio=2)
    want = pooler(features, per_image, sizes)
    boxes, image_index = torch.cat(per_image), torch.arange(2).repeat_interleave(40)
    got, order = _pool_rois(MultiScaleRoIAlign(list(features), output_size=7, sampling_ratio=2), features, boxes,
                            image_index, sizes)
    levels = pooler.map_levels([boxes])
    assert len(set(levels.tolist())) == 4 and not torch.equal(order, torch.arange(len(boxes)))
    torch.testing.assert_close(got, want[order])
    (back,) = _in_box_order(order, got.flatten(1))
    torch.testing.assert_close(back, want.flatten(1))
