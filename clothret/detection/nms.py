"""Non-maximum suppression for every image of a batch at once (:func:`nms_per_image`).

Each image's candidates are decided from its best-scoring ones only, as many as decide its first ``limit``
kept boxes: greedy NMS keeps or drops a box by looking at higher-scoring boxes only, so this is exact. On a
GPU the candidates of all images go into one (images x n x n) IoU layout, where greedy NMS's own rule is
applied to every box at once until it settles (:func:`_greedy_keep`): torchvision's CUDA NMS ends in a
kernel that walks the boxes one by one in a single thread block. On the CPU torchvision's ``nms`` runs
image by image, where it is fast. Counts per image avoid ``bincount``, which on CUDA reads its input's
minimum and maximum back first (:func:`counts_per_index`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

_FIRST_PREFIX = 4
""":func:`nms_per_image` first looks at the best ``_FIRST_PREFIX * limit`` candidates of each image."""
_MIN_PREFIX = 64
NMS_DENSE_ELEMENTS = 1 << 24
"""The dense NMS (:func:`_greedy_keep`) holds a few (images x candidates x candidates) tensors: ~270 MB at
this many elements. It takes as many images at a time as fit; where one image's candidates alone would
not, torchvision's ``nms`` runs instead."""
NMS_BOXES_PER_CALL = 16384
"""Images share an NMS call (on the GPU) up to this many boxes: a call's work grows with the square of its
boxes (an n x n/64 word mask, which one thread block then walks), so Faster R-CNN's proposals of 16 images in
one call (~64,000 boxes) cost 2 ms of one block, a quarter of that in calls of at most 16,384."""


def counts_per_index(index: Tensor, n: int) -> Tensor:
    """``torch.bincount(index, minlength=n)`` for ``index`` in ``[0, n)``, without waiting for the device
    (bincount on CUDA reads the largest index back first to size its output)."""
    return torch.zeros(n, dtype=torch.int64, device=index.device).index_add_(0, index, torch.ones_like(index))


def _grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, image_index: Tensor, num_images: int,
                 iou_threshold: float, one_call: bool) -> Tensor:
    """Indices of the boxes NMS keeps, boxes of different images or groups never suppressing each other.

    Each (image, group) gets its own tile of the plane: x is offset by the image, y by the group, which keeps
    the offsets (and float rounding) far smaller than one offset per (image, group) pair would. With
    ``one_call`` consecutive images share a call up to :data:`NMS_BOXES_PER_CALL` boxes; without (the CPU's
    way, where NMS costs grow with all boxes times the kept ones) each image runs alone.
    """
    span = boxes.max().clamp(min=0) + 1
    shifted = boxes.clone()
    shifted[:, 1::2] += (groups.to(boxes.dtype) * span)[:, None]
    shifted[:, 0::2] += (image_index.to(boxes.dtype) * span)[:, None]
    cap = NMS_BOXES_PER_CALL if one_call else 0
    keep, start, end = [], 0, 0
    for count in counts_per_index(image_index, num_images).tolist():  # image_index is grouped by image
        if end > start and end - start + count > cap:
            keep.append(nms(shifted[start:end], scores[start:end], iou_threshold) + start)
            start = end
        end += count
    if end > start:
        keep.append(nms(shifted[start:end], scores[start:end], iou_threshold) + start)
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64, device=boxes.device)


def _iou_matrix(boxes: Tensor) -> Tensor:
    """(B, n, n) IoUs of each row's (B, n, 4) boxes with one another, computed as torchvision's NMS does."""
    x1, y1, x2, y2 = (c[:, :, None] for c in boxes.unbind(-1))  # (B, n, 1): against (B, 1, n) transposed
    area = (x2 - x1) * (y2 - y1)
    inter = (torch.minimum(x2, x2.mT) - torch.maximum(x1, x1.mT)).clamp_(min=0)
    inter *= (torch.minimum(y2, y2.mT) - torch.maximum(y1, y1.mT)).clamp_(min=0)
    return inter / (area + area.mT - inter)


def _greedy_keep(boxes: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Which boxes greedy NMS keeps in each row of (B, n) candidates sorted by descending score, every row at
    once: (B, n) bool. Boxes of different ``groups`` never suppress each other; rows where ``valid`` is false
    (padding) are neither kept nor suppress.

    Greedy NMS keeps a box when no kept box before it overlaps it by more than ``iou_threshold``. Starting
    from "all kept" and applying that rule to every box at once settles on exactly greedy NMS's answer after
    as many rounds as the longest chain of suppressions (Cluster-NMS, Zheng et al. 2021) -- a handful in
    practice; it is checked after 2, 4, 8, ... rounds. torchvision's CUDA NMS instead walks the boxes one by
    one in a single thread block (~0.5 us a box: 3 ms for a batch's 6,400 candidates).
    """
    n = boxes.shape[1]
    suppresses = _iou_matrix(boxes) > iou_threshold  # [b, j, i]: j would suppress i
    suppresses &= torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu_(1)  # only higher scores
    suppresses &= groups[:, :, None] == groups[:, None, :]
    suppresses &= valid[:, :, None]
    keep, rounds = valid, 2
    while True:
        for _ in range(rounds - 1):
            keep = valid & ~(suppresses & keep[:, :, None]).any(dim=1)
        settled = valid & ~(suppresses & keep[:, :, None]).any(dim=1)
        if torch.equal(settled, keep):
            return keep
        keep, rounds = settled, rounds * 2


def _dense_round(boxes: Tensor, groups: Tensor, order: Tensor, image_sorted: Tensor, rank: Tensor, images: Tensor,
                 num_images: int, n: int, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Greedy NMS of the best ``n`` candidates of each of ``images`` (:func:`_greedy_keep` on an (images, n)
    layout of them; as many images at once as :data:`NMS_DENSE_ELEMENTS` allows): the kept rows, grouped by
    image and by descending score, and how many each image kept."""
    step = max(1, NMS_DENSE_ELEMENTS // (n * n))
    if len(images) > step:
        parts = [_dense_round(boxes, groups, order, image_sorted, rank, images[i : i + step], num_images, n,
                              iou_threshold) for i in range(0, len(images), step)]
        return torch.cat([kept for kept, _ in parts]), torch.cat([count for _, count in parts])
    b, device = len(images), boxes.device
    position = torch.full((num_images,), -1, dtype=torch.int64, device=device)
    position[images] = torch.arange(b, device=device)
    row_position = position[image_sorted]
    slot = torch.where((row_position >= 0) & (rank < n), row_position * n + rank, b * n)  # b * n: not taken
    ids = torch.full((b * n + 1,), -1, dtype=torch.int64, device=device).scatter_(0, slot, order)[:-1].view(b, n)
    valid = ids >= 0
    rows = ids.clamp(min=0)
    keep = _greedy_keep(boxes[rows], groups[rows], valid, iou_threshold)
    return ids[keep], keep.sum(dim=1)


def _by_image_then_score(scores: Tensor, image_index: Tensor) -> Tensor:
    """An ordering of the rows: by image ascending, then by score descending (stable)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[torch.argsort(image_index[order], stable=True)]


def _rank_in_image(image_sorted: Tensor, num_images: int) -> Tensor:
    """For rows sorted by image, each row's position within its image."""
    counts = counts_per_index(image_sorted, num_images)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(image_sorted), device=image_sorted.device) - starts[image_sorted]


def nms_per_image(
    boxes: Tensor, scores: Tensor, groups: Tensor, image_index: Tensor, num_images: int, iou_threshold: float,
    limit: int, *, dense: bool | None = None,
) -> Tensor:
    """torchvision's ``batched_nms(...)[:limit]`` of every image of a batch, in one go.

    ``groups`` (labels or levels) and ``image_index`` are int64 per box. Returns indices into the boxes,
    grouped by image (ascending) and by descending score within an image, at most ``limit`` per image.
    Greedy NMS keeps or drops a box by looking at higher-scoring boxes only, so NMS over each image's best
    ``m`` candidates decides those exactly; ``m`` grows (x4) only for images where fewer than ``limit`` of
    them survive. ``dense`` (default: off the CPU) runs the NMS of all images at once on their IoU matrices
    (:func:`_greedy_keep`; torchvision's calls, of up to :data:`NMS_BOXES_PER_CALL` boxes, where one image's
    would exceed :data:`NMS_DENSE_ELEMENTS`); otherwise torchvision's ``nms`` runs image by image.
    """
    device = boxes.device
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    if dense is None:
        dense = device.type != "cpu"
    order = _by_image_then_score(scores, image_index)
    image_sorted = image_index[order]
    rank = _rank_in_image(image_sorted, num_images)
    per_image = counts_per_index(image_sorted, num_images)
    images = torch.arange(num_images, device=device)  # the images still to decide
    prefix = max(_FIRST_PREFIX * limit, _MIN_PREFIX)
    parts = []
    while True:
        if dense and prefix * prefix <= NMS_DENSE_ELEMENTS:
            kept, kept_per_image = _dense_round(boxes, groups, order, image_sorted, rank, images, num_images, prefix,
                                                iou_threshold)
        else:
            deciding = torch.zeros(num_images, dtype=torch.bool, device=device)
            deciding[images] = True
            candidates = order[(rank < prefix) & deciding[image_sorted]]
            kept = candidates[
                _grouped_nms(boxes[candidates], scores[candidates], groups[candidates], image_index[candidates],
                             num_images, iou_threshold, one_call=dense)
            ]
            kept_per_image = counts_per_index(image_index[kept], num_images)[images]
        more = (kept_per_image < limit) & (per_image[images] > prefix)
        if not bool(more.any()):  # the usual case: every image decided, no mask to apply (one wait fewer)
            parts.append(kept)
            break
        undecided = torch.zeros(num_images, dtype=torch.bool, device=device)
        undecided[images[more]] = True
        parts.append(kept[~undecided[image_index[kept]]])
        images, prefix = images[more], prefix * 4
    kept = torch.cat(parts)
    kept = kept[_by_image_then_score(scores[kept], image_index[kept])]
    return kept[_rank_in_image(image_index[kept], num_images) < limit]


__all__ = ["NMS_BOXES_PER_CALL", "NMS_DENSE_ELEMENTS", "counts_per_index", "nms_per_image"]
