"""Non-maximum suppression per image of a batch (clothret.detection.nms) against torchvision's batched_nms, image
by image: every way it can run (torchvision's NMS per image, the dense NMS all images at once or a few at a
time, torchvision's calls where the dense one would not fit), long chains of suppression, and on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms, nms

from clothret.detection import nms as nms_module
from clothret.detection.nms import nms_per_image


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, size / 3, (n, 2))
    return torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)


@pytest.mark.parametrize(
    "dense, dense_budget, per_call",
    [(False, None, None), (True, None, None), (True, 350_000, None), (True, 100_000, None), (True, 0, None),
     (True, 0, 600)],
    ids=["per-image", "dense", "dense-two-images-at-a-time", "dense-and-calls", "one-call", "calls-of-600-boxes"],
)
def test_nms_per_image_is_batched_nms_image_by_image(dense, dense_budget, per_call, monkeypatch):
    """Every way: torchvision's NMS image by image (the CPU's); all images at once on their IoU matrices (the
    GPU's), or as many at a time as the budget allows; rounds too large for that in torchvision calls with
    offsets, of at most ``per_call`` boxes (an image with more gets a call of its own); and a mix, the first
    round too large for one image, the later ones not."""
    if dense_budget is not None:
        monkeypatch.setattr(nms_module, "NMS_DENSE_ELEMENTS", dense_budget)
    if per_call is not None:
        monkeypatch.setattr(nms_module, "NMS_BOXES_PER_CALL", per_call)
    rng = np.random.default_rng(3)
    counts = [0, 500, 37, 1200, 3]
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    perm = torch.from_numpy(rng.permutation(len(image_index)))  # rows of the images interleaved
    image_index = image_index[perm]
    boxes = _random_boxes(rng, len(image_index))
    scores = torch.from_numpy(rng.uniform(0, 1, len(image_index)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, len(image_index)))
    for iou, limit in ((0.5, 100), (0.1, 7), (0.9, 1000)):
        keep = nms_per_image(boxes, scores, labels, image_index, len(counts), iou, limit, dense=dense)
        assert torch.equal(image_index[keep], torch.sort(image_index[keep], stable=True).values)
        for i in range(len(counts)):
            rows = torch.nonzero(image_index == i).flatten()
            want = rows[batched_nms(boxes[rows], scores[rows], labels[rows], iou)[:limit]]
            got = keep[image_index[keep] == i]
            assert torch.equal(got, want), (i, iou, limit)


def test_dense_greedy_nms_follows_long_chains_of_suppression():
    """A row of boxes each overlapping the next (IoU 0.54): greedy NMS keeps every other one, a chain 300
    boxes long that takes as many rounds to settle; with padding rows and two groups beside it."""
    n = 300
    x = torch.arange(n, dtype=torch.float32) * 3
    chain = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
    rng = np.random.default_rng(0)
    scattered = _random_boxes(rng, n)
    boxes = torch.stack([chain, scattered])
    groups = torch.stack([torch.zeros(n, dtype=torch.int64), torch.from_numpy(rng.integers(0, 2, n))])
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 250:] = False  # padding
    keep = nms_module._greedy_keep(boxes, groups, valid, 0.5)
    scores = torch.linspace(1, 0, n)  # the rows are sorted by descending score
    assert torch.equal(keep[0].nonzero().flatten(), nms(chain, scores, 0.5))
    assert torch.equal(keep[0].nonzero().flatten(), torch.arange(0, n, 2))
    want = batched_nms(scattered[:250], scores[:250], groups[1, :250], 0.5)
    assert torch.equal(keep[1].nonzero().flatten(), torch.sort(want).values)


@pytest.mark.gpu
def test_dense_nms_on_the_gpu_is_torchvisions():
    """On CUDA (where it is the default): the kept boxes of torchvision's CUDA batched_nms, image by image. Whole
    pixel coordinates, so that both compute every IoU exactly alike (a compiler may fuse a multiply and an add
    in one kernel and not in the other: a different last bit could flip a box at the threshold)."""
    rng = np.random.default_rng(4)
    counts = [900, 0, 1500, 40] * 4
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).cuda()
    boxes = _random_boxes(rng, len(image_index)).round().cuda()
    scores = torch.from_numpy(rng.uniform(0, 1, len(image_index)).astype(np.float32)).cuda()
    labels = torch.from_numpy(rng.integers(0, 13, len(image_index))).cuda()
    for iou, limit in ((0.5, 100), (0.6, 300)):
        keep = nms_per_image(boxes, scores, labels, image_index, len(counts), iou, limit)
        for i in range(len(counts)):
            rows = torch.nonzero(image_index == i).flatten()
            want = rows[batched_nms(boxes[rows], scores[rows], labels[rows], iou)[:limit]]
            assert torch.equal(keep[image_index[keep] == i], want), (i, iou, limit)
