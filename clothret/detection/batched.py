"""Batched, device-resident inference of torchvision's FCOS, RetinaNet and Faster R-CNN.

torchvision's detectors convert, normalise and resize their inputs image by image, and their
post-processing loops over the images of a batch in Python. :func:`detect_resident` runs the same
networks on uint8 ``(3, H, W)`` images that are already on the model's device:

- images of equal size are converted, normalised and resized together (one ``interpolate`` per size),
  then padded into one batch (optionally ``channels_last``); the dense part runs under autocast when a
  dtype is given, the post-processing always in float32;
- the post-processing is batched: one top-k per feature level over the whole batch, then
  :func:`~clothret.detection.nms.nms_per_image`, non-maximum suppression for all images at once;
- the anchors of a batch shape are computed once and cached.

In float32 its boxes, scores and labels are torchvision's own up to float rounding
(tests/test_batched_detection.py compares them on seeded random models).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _setup_scales

from clothret.cuda_graphs import GraphedCalls
from clothret.detection.nms import counts_per_index, nms_per_image
from clothret.inference_copy import InferenceFPN, inference_group_norms, make_inference_copy

logger = logging.getLogger(__name__)

@dataclass
class ResidentDetections:
    """The detections of a batch, on the device: one row per box, rows grouped by image (ascending), each
    image's rows by descending score. ``labels`` are the model's internal labels."""

    boxes: Tensor  # (n, 4) float32 pixel x1, y1, x2, y2 of the original image
    scores: Tensor  # (n,) float32
    labels: Tensor  # (n,) int64
    image_index: Tensor  # (n,) int64
    num_images: int

    def to_host(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image ``(boxes, scores, labels)`` numpy arrays (float32, float32, int64), in one device-to-host
        copy and numpy views of it (no torch operation per image)."""
        packed = torch.cat(
            [self.boxes, self.scores[:, None], self.labels[:, None].float(), self.image_index[:, None].float()], dim=1
        ).cpu().numpy()
        labels = packed[:, 5].astype(np.int64)
        counts = np.bincount(packed[:, 6].astype(np.int64), minlength=self.num_images)
        ends = np.cumsum(counts)
        starts = ends - counts
        return [(packed[a:b, :4], packed[a:b, 4], labels[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]


@dataclass
class _Prepared:
    batch: Tensor  # (B, 3, Hp, Wp) normalised, resized, padded
    sizes: list[tuple[int, int]]  # resized (h, w) of each image
    original: list[tuple[int, int]]  # original (h, w) of each image
    dense: Tensor | None = None  # what the dense parts run on: ``batch``, or it with blank rows added

    def __post_init__(self) -> None:
        if self.dense is None:
            self.dense = self.batch

    def with_rows(self, rows: int | None) -> _Prepared:
        """The same batch, its dense input grown to ``rows`` images with blank (zero) ones: a compiled network
        then sees one batch shape, and blank rows change nothing in the real ones (every norm in eval mode
        is per image or fixed)."""
        extra = (rows or 0) - len(self.sizes)
        if extra <= 0:
            return self
        blank = self.batch.new_zeros((extra, *self.batch.shape[1:]))
        dense = torch.cat([self.batch, blank])
        if self.batch.is_contiguous(memory_format=torch.channels_last) and not self.batch.is_contiguous():
            dense = dense.contiguous(memory_format=torch.channels_last)
        return _Prepared(self.batch, self.sizes, self.original, dense)


# --------------------------------------------------------------------------------------------- input


def check_images(images: Sequence[Tensor]) -> None:
    """Every image must be a uint8 (3, H, W) tensor on one device; errors name the image index."""
    device = None
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise ValueError(f"image {i} must be a torch tensor, got {type(img).__name__}")
        if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"image {i} must have shape (3, H, W), got {tuple(img.shape)}")
        if img.dtype != torch.uint8:
            raise ValueError(f"image {i} must be uint8 RGB, got dtype {img.dtype}")
        if device is None:
            device = img.device
        elif img.device != device:
            raise ValueError(f"image {i} is on {img.device} but image 0 is on {device}: one device per batch")


def prepare_batch(images: Sequence[Tensor], transform: nn.Module, *, channels_last: bool = False) -> _Prepared:
    """What torchvision's ``GeneralizedRCNNTransform`` does in eval mode, with equal sizes batched.

    uint8 (3, H, W) images -> float in [0, 1] -> normalised -> resized (min_size / max_size, bilinear) ->
    padded to a multiple of ``size_divisible`` in one (B, 3, Hp, Wp) tensor.
    """
    device = images[0].device
    mean = torch.as_tensor(transform.image_mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(transform.image_std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((int(img.shape[1]), int(img.shape[2])), []).append(i)
    resized: list[tuple[list[int], Tensor]] = []  # each group's images, resized together (one size)
    for (h, w), members in groups.items():
        x = torch.stack([images[i] for i in members]).float().div_(255.0)
        x = (x - mean) / std
        if transform.fixed_size is not None:
            size, scale = [transform.fixed_size[1], transform.fixed_size[0]], None
        else:
            size, scale = None, min(float(transform.min_size[-1]) / min(h, w), float(transform.max_size) / max(h, w))
        x = F.interpolate(
            x, size=size, scale_factor=scale, mode="bilinear", recompute_scale_factor=True if scale else None,
            align_corners=False,
        )
        resized.append((members, x))
    sizes = [(0, 0)] * len(images)
    for members, x in resized:
        for i in members:
            sizes[i] = (int(x.shape[-2]), int(x.shape[-1]))
    stride = float(transform.size_divisible)
    height = int(-(-max(h for h, _ in sizes) // stride) * stride)
    width = int(-(-max(w for _, w in sizes) // stride) * stride)
    batch = resized[0][1].new_zeros((len(images), 3, height, width))
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    for members, x in resized:
        h, w = x.shape[-2:]
        if members == list(range(members[0], members[0] + len(members))):  # a batch cut by shape: one copy
            batch[members[0] : members[0] + len(members), :, :h, :w].copy_(x)
        else:
            for j, i in enumerate(members):
                batch[i, :, :h, :w].copy_(x[j])
    return _Prepared(batch, sizes, [(int(img.shape[1]), int(img.shape[2])) for img in images])


# --------------------------------------------------------------------------------------------- anchors


class AnchorCache:
    """The anchors of one generator for each batch shape and feature sizes, computed once in float32."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._cache: dict[tuple, Tensor] = {}

    def get(self, generator: nn.Module, image_shape: Sequence[int], feature_shapes: Sequence[Sequence[int]],
            device: torch.device) -> Tensor:
        key = (tuple(image_shape), tuple(tuple(s) for s in feature_shapes), str(device))
        anchors = self._cache.get(key)
        if anchors is None:
            generator.set_cell_anchors(torch.float32, device)
            strides = [
                [torch.tensor(image_shape[0] // g[0], dtype=torch.int64, device=device),
                 torch.tensor(image_shape[1] // g[1], dtype=torch.int64, device=device)]
                for g in feature_shapes
            ]
            anchors = torch.cat(generator.grid_anchors([list(g) for g in feature_shapes], strides))
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = anchors
        return anchors


# --------------------------------------------------------------------------------------------- boxes


def _clip(boxes: Tensor, limits: Tensor) -> Tensor:
    """Clip (..., 4) boxes to per-row ``limits`` (..., 2) = (height, width), like ``clip_boxes_to_image``."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), limits[..., 1:2])
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), limits[..., 0:1])
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _masked_rows(mask: Tensor, *tensors: Tensor) -> list[Tensor]:
    """``[t[mask] for t in tensors]`` (``mask`` over their leading dimensions) with one ``nonzero``: on a GPU
    one wait for the device instead of one per tensor."""
    index = mask.reshape(-1).nonzero().squeeze(1)
    return [t.reshape(-1, *t.shape[mask.dim():])[index] for t in tensors]


def _sizes(sizes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    return torch.tensor(sizes, dtype=torch.float32, device=device).reshape(-1, 2)


def _to_original(boxes: Tensor, image_index: Tensor, prepared: _Prepared) -> Tensor:
    """Boxes of the resized images -> boxes of the original images (torchvision's ``resize_boxes``)."""
    device = boxes.device
    ratio = _sizes(prepared.original, device) / _sizes(prepared.sizes, device)  # (B, 2): height, width
    r = ratio[image_index]
    return boxes * torch.stack((r[:, 1], r[:, 0], r[:, 1], r[:, 0]), dim=1)


def _finish(boxes, scores, labels, image_index, keep, prepared) -> ResidentDetections:
    boxes, image_index = boxes[keep], image_index[keep]
    return ResidentDetections(
        _to_original(boxes, image_index, prepared), scores[keep], labels[keep], image_index, len(prepared.sizes)
    )


# --------------------------------------------------------------------------------------------- one-stage


def _one_stage(model: FCOS | RetinaNet, prepared: _Prepared, anchors: AnchorCache, parts: DenseParts,
               amp: Callable) -> ResidentDetections:
    with amp():
        features, outputs = parts.front(prepared.dense)
    batch = prepared.batch
    outputs = {name: value[: len(batch)] for name, value in outputs.items()}  # blank rows off
    anchor_boxes = anchors.get(
        model.anchor_generator, batch.shape[-2:], [f.shape[-2:] for f in features], batch.device
    )
    hw = [f.shape[-2] * f.shape[-1] for f in features]
    per_level = [n * (outputs["cls_logits"].shape[1] // sum(hw)) for n in hw]
    logits = outputs["cls_logits"].float()
    regression = outputs["bbox_regression"].float()
    centerness = outputs["bbox_ctrness"].float() if isinstance(model, FCOS) else None
    num_images, _, num_classes = logits.shape
    limits = _sizes(prepared.sizes, batch.device)[:, None, :]  # (B, 1, 2)
    if centerness is not None:
        class_scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))
    else:
        class_scores = torch.sigmoid(logits)
    top_scores, top_idx = [], []  # each level's best (anchor, class) pairs, as indices over all levels
    start = 0
    for n in per_level:
        level_scores = class_scores[:, start : start + n].flatten(1)
        level_top, level_idx = level_scores.topk(min(model.topk_candidates, level_scores.shape[1]), dim=1)
        top_scores.append(level_top)
        top_idx.append(level_idx + start * num_classes)
        start += n
    scores, flat_idx = torch.cat(top_scores, 1), torch.cat(top_idx, 1)
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels = flat_idx % num_classes
    codes = regression.gather(1, anchor_idx[..., None].expand(-1, -1, 4))
    picked_anchors = anchor_boxes[anchor_idx]
    if isinstance(model, FCOS):  # both decodings work box by box: all levels at once
        boxes = model.box_coder.decode(codes, picked_anchors)
    else:
        boxes = model.box_coder.decode_single(codes.reshape(-1, 4), picked_anchors.reshape(-1, 4)).view(codes.shape)
    boxes = _clip(boxes, limits)
    image_index = torch.arange(num_images, device=batch.device)[:, None].expand_as(scores)
    valid = scores > model.score_thresh
    boxes, scores, labels, image_index = _masked_rows(valid, boxes, scores, labels, image_index)
    keep = nms_per_image(boxes, scores, labels, image_index, num_images, model.nms_thresh, model.detections_per_img)
    return _finish(boxes, scores, labels, image_index, keep, prepared)


# --------------------------------------------------------------------------------------------- two-stage


def _proposals(model: FasterRCNN, feature_shapes: list[Sequence[int]], objectness: list[Tensor], deltas: list[Tensor],
               prepared: _Prepared, anchors: AnchorCache) -> tuple[Tensor, Tensor]:
    """The RPN's proposals (torchvision's ``RegionProposalNetwork`` in eval mode, batched) from its head's
    outputs: ``(boxes, image_index)``, rows grouped by image."""
    rpn = model.rpn
    batch = prepared.batch
    objectness = [o[: len(batch)] for o in objectness]  # blank rows off
    deltas = [d[: len(batch)] for d in deltas]
    anchor_boxes = anchors.get(rpn.anchor_generator, batch.shape[-2:], feature_shapes, batch.device)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers([o.float() for o in objectness], [d.float() for d in deltas])
    num_images = batch.shape[0]
    objectness = objectness.reshape(num_images, -1)
    levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=batch.device) for i, n in enumerate(per_level)])
    top_idx = rpn._get_top_n_idx(objectness, per_level)
    rows = torch.arange(num_images, device=batch.device)[:, None]
    scores = torch.sigmoid(objectness[rows, top_idx])
    levels = levels[top_idx]
    # decoding works box by box: only the anchors each level's top-n picked (torchvision decodes all of them)
    picked = deltas.view(num_images, -1, 4)[rows, top_idx].reshape(-1, 4)
    proposals = rpn.box_coder.decode_single(picked, anchor_boxes[top_idx].reshape(-1, 4)).view(*top_idx.shape, 4)
    boxes = _clip(proposals, _sizes(prepared.sizes, batch.device)[:, None, :])
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    valid = (widths >= rpn.min_size) & (heights >= rpn.min_size) & (scores >= rpn.score_thresh)
    boxes, scores, levels, image_index = _masked_rows(valid, boxes, scores, levels, rows.expand_as(scores))
    keep = nms_per_image(boxes, scores, levels, image_index, num_images, rpn.nms_thresh, rpn.post_nms_top_n())
    return boxes[keep], image_index[keep]


def _pool_rois(pooler: nn.Module, features: dict[str, Tensor], boxes: Tensor, image_index: Tensor,
               image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor | None]:
    """``pooler(features, boxes per image, image_sizes)`` for boxes of all images at once (rows grouped by
    image): torchvision's ``MultiScaleRoIAlign`` with each level's boxes found by one sort, one wait for the
    device where torchvision waits once per level and converts every image's boxes on its own.

    Returns the pooled features and ``order``: row ``i`` pools box ``order[i]`` (``None``: the boxes' own
    order). The rows stay in level order, written straight into one tensor: putting them back in the boxes'
    order would be one more pass over the largest tensor of the box head (~400 MB for 16 images in bf16),
    where the head's outputs (a few MB) can be put back instead."""
    if not isinstance(pooler, MultiScaleRoIAlign):
        counts = counts_per_index(image_index, len(image_sizes)).tolist()
        return pooler(features, list(boxes.split(counts)), image_sizes), None
    maps = [value for name, value in features.items() if name in pooler.featmap_names]
    if pooler.scales is None or pooler.map_levels is None:
        pooler.scales, pooler.map_levels = _setup_scales(maps, image_sizes, pooler.canonical_scale,
                                                         pooler.canonical_level)
    rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], dim=1)
    pool = {"output_size": pooler.output_size, "sampling_ratio": pooler.sampling_ratio}
    if len(maps) == 1:
        return roi_align(maps[0], rois, spatial_scale=pooler.scales[0], **pool), None
    level = pooler.map_levels([boxes])
    order = torch.argsort(level, stable=True)
    counts = counts_per_index(level, len(maps)).tolist()
    out = torch.empty((len(rois), maps[0].shape[1], *pooler.output_size), dtype=maps[0].dtype, device=boxes.device)
    start = 0
    for fmap, scale, part in zip(maps, pooler.scales, rois[order].split(counts)):
        if len(part):
            # roi_align runs in float32 on NCHW maps: one copy makes a bf16 channels-last map both (autocast's
            # cast and the kernel's own .contiguous() would be two passes over the largest map of the network)
            out[start : start + len(part)] = roi_align(
                fmap.to(torch.float32, memory_format=torch.contiguous_format), part, spatial_scale=scale, **pool)
        start += len(part)
    return out, order


def _in_box_order(order: Tensor | None, *rows: Tensor) -> list[Tensor]:
    """Rows computed in ``order`` (see :func:`_pool_rois`) put back in the boxes' own order."""
    if order is None:
        return list(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return [r[inverse] for r in rows]


def _two_stage(model: FasterRCNN, prepared: _Prepared, anchors: AnchorCache, parts: DenseParts,
               amp: Callable) -> ResidentDetections:
    heads = model.roi_heads
    with amp():
        features, objectness, deltas = parts.front(prepared.dense)
    # blank rows, if any, are never pooled: no proposal names them
    proposals, image_index = _proposals(model, [f.shape[-2:] for f in features.values()], objectness, deltas,
                                        prepared, anchors)
    with amp():
        pooled, order = _pool_rois(heads.box_roi_pool, features, proposals, image_index, prepared.sizes)
        class_logits, box_regression = _in_box_order(order, *heads.box_predictor(parts.box_head(pooled)))
    num_images = len(prepared.sizes)
    device = prepared.batch.device
    boxes = heads.box_coder.decode(box_regression.float(), [proposals])  # (R, C, 4)
    scores = F.softmax(class_logits.float(), -1)
    num_classes = scores.shape[-1]
    boxes = _clip(boxes, _sizes(prepared.sizes, device)[image_index][:, None, :])
    labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(scores)
    image_index = image_index[:, None].expand_as(scores)
    boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
    labels, image_index = labels[:, 1:].reshape(-1), image_index[:, 1:].reshape(-1)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (scores > heads.score_thresh) & (widths >= 1e-2) & (heights >= 1e-2)
    boxes, scores, labels, image_index = _masked_rows(valid, boxes, scores, labels, image_index)
    keep = nms_per_image(boxes, scores, labels, image_index, num_images, heads.nms_thresh, heads.detections_per_img)
    return _finish(boxes, scores, labels, image_index, keep, prepared)


# --------------------------------------------------------------------------------------------- entry


@dataclass
class DenseParts:
    """The parts of a detector that run on feature maps, possibly compiled; by default the model's own."""

    backbone: Callable
    head: Callable | None = None  # FCOS / RetinaNet
    rpn_head: Callable | None = None  # Faster R-CNN
    box_head: Callable | None = None  # Faster R-CNN
    graphs: GraphedCalls | None = None  # :meth:`front` through CUDA graphs

    def front(self, batch: Tensor) -> tuple:
        """Everything before the post-processing: ``(feature maps, head outputs)`` for FCOS and RetinaNet,
        ``(feature maps, objectness, box deltas)`` for Faster R-CNN (its box head runs later, on the
        proposals). Through CUDA graphs, the tensors are valid until the next call (:mod:`clothret.cuda_graphs`)."""
        return self.graphs(batch) if self.graphs is not None else self._front(batch)

    def _front(self, batch: Tensor) -> tuple:
        features = self.backbone(batch)
        if self.head is not None:
            levels = list(features.values())
            return levels, self.head(levels)
        objectness, deltas = self.rpn_head(list(features.values()))
        return features, objectness, deltas

    @classmethod
    def of(
        cls,
        model: nn.Module,
        wrap: Callable[[nn.Module], Callable] = lambda m: m,
        *,
        fold_norms: bool = False,
        fuse_convs: bool = True,
        memory_format: torch.memory_format = torch.contiguous_format,
        cuda_graphs: bool = False,
    ) -> DenseParts:
        """The parts of ``model``, each passed through ``wrap`` (e.g. ``torch.compile``) but Faster R-CNN's box
        head, whose input (the proposals) changes size from batch to batch.

        ``fold_norms`` runs inference copies instead (:mod:`clothret.inference_copy`): the trunk's batch
        norms folded into its convolutions, GroupNorms kept in the autocast dtype, with ``fuse_convs`` the
        convolutions' ReLUs and residual adds fused into them, in ``memory_format``. The model itself is not
        changed. ``cuda_graphs`` runs :meth:`front` through :class:`~clothret.cuda_graphs.GraphedCalls` (on
        CUDA; elsewhere it changes nothing).
        """
        if not isinstance(model, (FasterRCNN, FCOS, RetinaNet)):
            raise ValueError(
                f"batched inference supports FCOS, RetinaNet and FasterRCNN models, got {type(model).__name__}"
            )

        def part(module: nn.Module, *, trunk: bool = False, wrapped: bool = True) -> Callable:
            if fold_norms:
                new = _inference_backbone if trunk else make_inference_copy
                module = new(module, fuse_convs=fuse_convs)
                module.to(memory_format=memory_format)
            return wrap(module) if wrapped else module

        if isinstance(model, FasterRCNN):  # the box head sees a varying number of proposals: never wrapped
            parts = cls(part(model.backbone, trunk=True), rpn_head=part(model.rpn.head),
                        box_head=part(model.roi_heads.box_head, wrapped=False))
        else:
            parts = cls(part(model.backbone, trunk=True), head=part(model.head))
        if cuda_graphs:
            parts.graphs = GraphedCalls(parts._front, name=f"{type(model).__name__} backbone and heads")
        return parts


def _inference_backbone(backbone: nn.Module, *, fuse_convs: bool) -> nn.Module:
    """An inference copy of a backbone with an FPN: the trunk (``body``) through
    :func:`~clothret.inference_copy.make_inference_copy` (the FPN's forward is not traceable), the FPN an
    :class:`~clothret.inference_copy.InferenceFPN`."""
    memo = {}
    if hasattr(backbone, "body"):
        memo[id(backbone.body)] = make_inference_copy(backbone.body, fuse_convs=fuse_convs)
    new = copy.deepcopy(backbone, memo).eval()  # the rest copied, the trunk's copy put in
    inference_group_norms(new)
    if type(getattr(new, "fpn", None)) is FeaturePyramidNetwork:
        InferenceFPN.make(new.fpn)
    return new


def detect_resident(
    model: nn.Module,
    images: Sequence[Tensor],
    *,
    anchors: AnchorCache,
    parts: DenseParts | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    pad_to: int | None = None,
) -> ResidentDetections:
    """Detections of ``model`` (in eval mode) on uint8 (3, H, W) images on its device, batched.

    ``autocast_dtype`` (bf16 / fp16, or None for float32) runs the backbone and heads under autocast;
    the post-processing is float32 either way. ``pad_to``: the backbone and heads run on at least this many
    images, blank ones added (what compiled parts and CUDA graphs need: one batch shape); the results are the
    same. Parts with CUDA graphs: one call at a time (:class:`~clothret.cuda_graphs.GraphedCalls`).
    """
    check_images(images)
    parts = parts or DenseParts.of(model)
    if not images:
        empty = torch.zeros(0, dtype=torch.int64)
        return ResidentDetections(torch.zeros((0, 4)), torch.zeros(0), empty, empty, 0)
    device = images[0].device

    def amp():
        return torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)

    with torch.inference_mode():
        prepared = prepare_batch(images, model.transform, channels_last=channels_last).with_rows(pad_to)
        if isinstance(model, FasterRCNN):
            return _two_stage(model, prepared, anchors, parts, amp)
        return _one_stage(model, prepared, anchors, parts, amp)


__all__ = [
    "AnchorCache",
    "DenseParts",
    "ResidentDetections",
    "check_images",
    "detect_resident",
    "prepare_batch",
]
