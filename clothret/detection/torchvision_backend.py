"""torchvision detectors (FCOS, RetinaNet, Faster R-CNN) on small FPN backbones, built from random init.

A :class:`TorchvisionDetectorConfig` names an architecture and a backbone from two registries of
keyword-only builders; :func:`build_detector_model` turns it into an ``nn.Module`` without downloading
anything. :class:`TorchvisionDetector` runs a model on RGB uint8 images and returns DeepFashion2 category
ids 1-13: :meth:`~TorchvisionDetector.detect` on numpy images through torchvision's own forward,
:meth:`~TorchvisionDetector.detect_resident` on images already on the device, batched end to end
(:mod:`clothret.detection.batched`). Weights are a safetensors file plus a model card holding ``kind`` and ``config``, so
:meth:`TorchvisionDetector.from_weights` can rebuild the exact model.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from clothret.datasets.records import NUM_CATEGORIES
from clothret.detection import batched
from clothret.detection.batched import AnchorCache, DenseParts
from clothret.detection.types import Detections
from clothret.inference_copy import CopySettings, MadeFrom
from clothret.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

CARD_KIND = "torchvision-detector"
"""The ``kind`` a detector's model card holds."""

Norm = Literal["batch", "group", "none"]


# --------------------------------------------------------------------------------------------- config


class TorchvisionDetectorConfig(BaseModel):
    """Architecture, backbone, widths and pre/post-processing of one torchvision detector.

    The defaults are the configuration that trains from random init on the synthetic street-to-shop
    data in about two minutes on two CPU cores (see ``bench/detector_quality.py``).
    ``min_level``/``max_level`` are the FPN levels (level ``l`` has stride ``2**l``); levels above the
    backbone's last stage (5) come from extra FPN blocks. ``anchor_scale`` multiplies every level's anchor
    size (FCOS: the stride; RetinaNet and Faster R-CNN: 4x the stride): below 1 sends objects to coarser
    levels, which suits small input images. ``class_ce_weight`` adds a softmax cross-entropy over the
    categories at foreground locations to FCOS' and RetinaNet's sigmoid focal loss: focal loss barely
    pushes down a wrong category that scores moderately on an object, so without it the top-scoring
    box of an object is often of a look-alike category.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = "fcos"
    backbone: str = "resnet18"
    fpn_channels: int = Field(64, ge=8, le=512)
    head_convs: int = Field(2, ge=0, le=4)
    backbone_norm: Norm = "batch"
    head_norm: Norm = "group"
    anchor_scale: float = Field(1.0, gt=0.0)
    class_ce_weight: float = Field(0.0, ge=0.0)
    min_level: int = Field(3, ge=2, le=4)
    max_level: int = Field(5, ge=4, le=7)
    min_size: int = Field(128, ge=32)
    max_size: int = Field(256, ge=32)
    num_classes: int = Field(NUM_CATEGORIES, ge=1)
    score_thresh: float = Field(0.05, ge=0.0, le=1.0)
    nms_thresh: float = Field(0.6, gt=0.0, le=1.0)
    detections_per_img: int = Field(100, ge=1)
    topk_candidates: int = Field(1000, ge=1)
    roi_head_dim: int = Field(256, ge=16)

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; valid: {sorted(ARCHITECTURES)}")
        return value

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}; valid: {sorted(BACKBONES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TorchvisionDetectorConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        if self.max_level < self.min_level:
            raise ValueError(f"max_level ({self.max_level}) must be >= min_level ({self.min_level})")
        if self.head_norm == "group" and self.fpn_channels % _groups(self.fpn_channels) != 0:
            raise ValueError(f"fpn_channels={self.fpn_channels} cannot be split into GroupNorm groups")
        return self

    @property
    def levels(self) -> tuple[int, ...]:
        """The FPN levels the heads see, e.g. ``(3, 4, 5)``."""
        return tuple(range(self.min_level, self.max_level + 1))


def _groups(channels: int) -> int:
    """GroupNorm group count: 32 when it divides ``channels``, else the largest power of two that does."""
    return math.gcd(32, channels)


def _norm_layer(norm: Norm) -> Callable[[int], nn.Module] | None:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda channels: nn.GroupNorm(_groups(channels), channels)
    return None


# --------------------------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class _Stages:
    """A classification trunk cut into stages: the module, the names of its children ending each level."""

    body: nn.Module
    level_layers: dict[int, str]
    level_channels: dict[int, int]


def _resnet_stages(name: str) -> Callable[..., _Stages]:
    def build(*, norm: Norm) -> _Stages:
        layer = _norm_layer(norm) or nn.Identity
        net = torchvision.models.get_model(name, weights=None, norm_layer=layer)
        channels = {f"layer{i}": getattr(net, f"layer{i}")[-1] for i in range(1, 5)}
        widths = {}
        for lname, block in channels.items():
            last_conv = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
            widths[lname] = last_conv.out_channels
        layers = {2: "layer1", 3: "layer2", 4: "layer3", 5: "layer4"}
        return _Stages(net, layers, {lv: widths[n] for lv, n in layers.items()})

    return build


def _features_stages(name: str) -> Callable[..., _Stages]:
    """Trunks with a ``features`` Sequential (MobileNet, EfficientNet): the last block of each stride."""

    def build(*, norm: Norm) -> _Stages:
        layer = _norm_layer(norm) or nn.Identity
        net = torchvision.models.get_model(name, weights=None, norm_layer=layer)
        features = net.features
        x = torch.zeros(1, 3, 64, 64)
        layers: dict[int, str] = {}
        widths: dict[int, int] = {}
        with torch.no_grad():
            features.eval()
            for idx, block in enumerate(features):
                x = block(x)
                level = round(math.log2(64 / x.shape[-1]))
                if 2 <= level <= 5:
                    layers[level] = str(idx)
                    widths[level] = int(x.shape[1])
        features.train()
        return _Stages(features, layers, widths)

    return build


BACKBONES: dict[str, Callable[..., _Stages]] = {
    "resnet18": _resnet_stages("resnet18"),
    "resnet34": _resnet_stages("resnet34"),
    "resnet50": _resnet_stages("resnet50"),
    "mobilenet_v2": _features_stages("mobilenet_v2"),
    "mobilenet_v3_small": _features_stages("mobilenet_v3_small"),
    "mobilenet_v3_large": _features_stages("mobilenet_v3_large"),
    "efficientnet_b0": _features_stages("efficientnet_b0"),
}
"""Backbone name -> keyword-only builder of its stages (random init, never downloads)."""


def build_fpn_backbone(config: TorchvisionDetectorConfig) -> BackboneWithFPN:
    """The config's trunk with an FPN of ``fpn_channels`` over levels ``min_level..max_level``."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; valid: {sorted(BACKBONES)}")
    stages = BACKBONES[config.backbone](norm=config.backbone_norm)
    trunk_levels = [lv for lv in config.levels if lv <= 5]
    return_layers = {stages.level_layers[lv]: str(i) for i, lv in enumerate(trunk_levels)}
    in_channels = [stages.level_channels[lv] for lv in trunk_levels]
    extra_levels = config.max_level - 5
    extra: nn.Module | None
    if extra_levels <= 0:
        extra = _NoExtraLevel()
    elif extra_levels == 1:
        extra = LastLevelMaxPool()
    else:
        extra = LastLevelP6P7(config.fpn_channels, config.fpn_channels)
    # IntermediateLayerGetter keeps the trunk's children up to the last returned one (no classifier).
    return BackboneWithFPN(stages.body, return_layers, in_channels, config.fpn_channels, extra_blocks=extra)


class _NoExtraLevel(LastLevelMaxPool):
    """An FPN extra block that adds nothing (the heads see only the trunk's levels)."""

    def forward(self, x, y, names):  # type: ignore[override]
        return x, names


# --------------------------------------------------------------------------------------------- architectures


def _level_names(config: TorchvisionDetectorConfig) -> list[str]:
    names = [str(i) for i, lv in enumerate(config.levels) if lv <= 5]
    extra = config.max_level - 5
    if extra == 1:
        names.append("pool")
    elif extra == 2:
        names += ["p6", "p7"]
    return names


def _foreground_ce(
    targets: list[dict[str, torch.Tensor]], cls_logits: torch.Tensor, matched_idxs: list[torch.Tensor]
) -> torch.Tensor:
    """Mean softmax cross-entropy over the categories at the locations matched to an object."""
    logits, labels = [], []
    for i, (target, matched) in enumerate(zip(targets, matched_idxs)):
        fg = matched >= 0
        if bool(fg.any()):
            logits.append(cls_logits[i][fg])
            labels.append(target["labels"][matched[fg]])
    if not logits:
        return cls_logits.sum() * 0.0
    return nn.functional.cross_entropy(torch.cat(logits).float(), torch.cat(labels))


class _ForegroundCE:
    """Mixin for torchvision's FCOS and RetinaNet heads: an optional foreground cross-entropy term."""

    def __init__(self, *args, class_ce_weight: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_ce_weight = class_ce_weight

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # type: ignore[override]
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.class_ce_weight > 0:
            ce = _foreground_ce(targets, head_outputs["cls_logits"], matched_idxs)
            losses["classification_ce"] = self.class_ce_weight * ce
        return losses


class _FCOSHead(_ForegroundCE, FCOSHead):
    """torchvision's FCOS head plus an optional foreground cross-entropy term."""


class _RetinaNetHead(_ForegroundCE, RetinaNetHead):
    """torchvision's RetinaNet head plus an optional foreground cross-entropy term."""


def _trim_convs(head: nn.Module, n: int) -> None:
    """Keep the first ``n`` conv blocks of a RetinaNet sub-head's tower."""
    head.conv = nn.Sequential(*list(head.conv.children())[:n])


def _build_fcos(config: TorchvisionDetectorConfig) -> nn.Module:
    backbone = build_fpn_backbone(config)
    sizes = tuple((config.anchor_scale * 2**lv,) for lv in config.levels)
    anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
    head = _FCOSHead(
        config.fpn_channels, 1, config.num_classes, num_convs=config.head_convs, class_ce_weight=config.class_ce_weight
    )
    norm = _norm_layer(config.head_norm)
    if config.head_norm != "group":  # FCOSHead hard-codes GroupNorm(32); rebuild the towers.
        for tower in (head.classification_head, head.regression_head):
            blocks = []
            for m in tower.conv.children():
                if isinstance(m, nn.GroupNorm):
                    m = norm(config.fpn_channels) if norm else nn.Identity()
                blocks.append(m)
            tower.conv = nn.Sequential(*blocks)
    elif _groups(config.fpn_channels) != 32:
        for tower in (head.classification_head, head.regression_head):
            tower.conv = nn.Sequential(
                *[norm(config.fpn_channels) if isinstance(m, nn.GroupNorm) else m for m in tower.conv.children()]
            )
    return FCOS(
        backbone,
        num_classes=config.num_classes,
        min_size=config.min_size,
        max_size=config.max_size,
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=1.5 / config.anchor_scale,  # 1.5 strides whatever the anchor size
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
        topk_candidates=config.topk_candidates,
    )


def _build_retinanet(config: TorchvisionDetectorConfig) -> nn.Module:
    backbone = build_fpn_backbone(config)
    sizes = tuple(
        tuple(config.anchor_scale * 4 * 2**lv * 2 ** (k / 3) for k in range(3)) for lv in config.levels
    )
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = _RetinaNetHead(
        config.fpn_channels, anchors.num_anchors_per_location()[0], config.num_classes,
        norm_layer=_norm_layer(config.head_norm), class_ce_weight=config.class_ce_weight,
    )
    _trim_convs(head.classification_head, config.head_convs)
    _trim_convs(head.regression_head, config.head_convs)
    return RetinaNet(
        backbone,
        num_classes=config.num_classes,
        min_size=config.min_size,
        max_size=config.max_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
        topk_candidates=config.topk_candidates,
    )


def _build_faster_rcnn(config: TorchvisionDetectorConfig) -> nn.Module:
    backbone = build_fpn_backbone(config)
    names = _level_names(config)
    levels = list(config.levels)
    sizes = tuple((config.anchor_scale * 4 * 2**lv,) for lv in levels)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    roi_names = [n for n, lv in zip(names, levels) if lv <= 5]
    pool = MultiScaleRoIAlign(featmap_names=roi_names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(config.fpn_channels * 7 * 7, config.roi_head_dim)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=config.min_size,
        max_size=config.max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_roi_pool=pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(config.roi_head_dim, config.num_classes + 1),
        box_score_thresh=config.score_thresh,
        box_nms_thresh=config.nms_thresh,
        box_detections_per_img=config.detections_per_img,
        box_batch_size_per_image=128,
    )


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture and how its internal labels map to category ids.

    ``label_offset`` is added to an internal label to get the category id (FCOS and RetinaNet predict
    ``0..num_classes-1``; Faster R-CNN reserves 0 for the background).
    """

    build: Callable[[TorchvisionDetectorConfig], nn.Module]
    label_offset: int


ARCHITECTURES: dict[str, Architecture] = {
    "fcos": Architecture(_build_fcos, label_offset=1),
    "retinanet": Architecture(_build_retinanet, label_offset=1),
    "faster_rcnn": Architecture(_build_faster_rcnn, label_offset=0),
}
"""Architecture name -> builder and label mapping."""


def build_detector_model(config: TorchvisionDetectorConfig) -> nn.Module:
    """A randomly initialised detector for ``config`` (no pretrained weights are ever downloaded)."""
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.architecture!r}; valid: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[config.architecture].build(config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("built %s/%s detector: %.2f M parameters", config.architecture, config.backbone, n_params / 1e6)
    return model


def category_ids_to_labels(category_ids: torch.Tensor, config: TorchvisionDetectorConfig) -> torch.Tensor:
    """DeepFashion2 category ids (1-based) -> the model's internal training labels."""
    return category_ids.to(torch.int64) - ARCHITECTURES[config.architecture].label_offset


def labels_to_category_ids(labels: torch.Tensor | np.ndarray, config: TorchvisionDetectorConfig
                           ) -> torch.Tensor | np.ndarray:
    """The model's internal labels -> DeepFashion2 category ids (1-based), as a tensor or numpy array like
    ``labels``."""
    offset = ARCHITECTURES[config.architecture].label_offset
    if isinstance(labels, np.ndarray):
        return labels.astype(np.int64) + offset
    return labels.to(torch.int64) + offset


# --------------------------------------------------------------------------------------------- images


def image_to_tensor(image: np.ndarray, *, index: int = 0) -> torch.Tensor:
    """An (H, W, 3) uint8 RGB array -> a (3, H, W) float tensor in [0, 1]; errors name the image index."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index} must be uint8 RGB, got dtype {image.dtype}")
    return torch.tensor(image).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------------------------- detector


class TorchvisionDetector:
    """A torchvision detection model behind the :class:`~clothret.detection.types.Detector` protocol."""

    def __init__(
        self,
        model: nn.Module,
        config: TorchvisionDetectorConfig,
        *,
        name: str = "torchvision",
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.config = config
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = model.to(self.device).eval()
        self._anchors = AnchorCache()
        self._parts: DenseParts | None = None
        self._made: MadeFrom | None = None  # what the parts were made from
        self._lock = threading.Lock()  # one batch at a time through the parts

    def configure(self, *, channels_last: bool = False, compile: str = "off", fold_norms: bool = True,
                  fuse_convs: bool = True, cuda_graphs: bool = False) -> None:
        """How :meth:`detect_resident` runs the network: weights in ``channels_last`` memory format, the
        backbone and heads through ``torch.compile`` (``compile`` is a mode such as ``"default"`` or
        ``"reduce-overhead"``, or ``"off"``) or, with ``cuda_graphs``, through CUDA graphs
        (:mod:`clothret.cuda_graphs`), and with ``fold_norms`` on an inference copy whose batch norms are
        folded into the convolutions and, with ``fuse_convs``, whose convolutions run with their ReLU and
        residual add in one kernel (:mod:`clothret.inference_copy`). Calling it again with the same settings
        does nothing unless the model's weights changed since."""
        self._configure(CopySettings(channels_last, compile, fold_norms, fuse_convs, cuda_graphs))

    def _configure(self, settings: CopySettings) -> None:
        if self._made is not None and self._made.still(settings, self.model):
            return
        fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        compile = settings.compile
        wrap = (lambda m: m) if compile == "off" else (lambda m: torch.compile(m, mode=compile, dynamic=False))
        self._parts = DenseParts.of(self.model, wrap, fold_norms=settings.fold_norms, fuse_convs=settings.fuse_convs,
                                    memory_format=fmt, cuda_graphs=settings.cuda_graphs)
        if compile != "off":
            logger.info("detector %s: backbone and heads compiled (mode %s)", self.name, compile)
        self._made = MadeFrom.now(settings, self.model)

    @classmethod
    def from_weights(cls, weights_url: str, *, name: str | None = None, device: str = "cpu") -> TorchvisionDetector:
        """Rebuild a detector from a safetensors file and its model card (strict state-dict load)."""
        state, card = load_weights(weights_url)
        if card.get("kind") != CARD_KIND:
            raise ValueError(f"{weights_url}: model card kind is {card.get('kind')!r}, expected {CARD_KIND!r}")
        if "config" not in card:
            raise ValueError(f"{weights_url}: model card has no 'config'")
        config = TorchvisionDetectorConfig.model_validate(card["config"])
        model = build_detector_model(config)
        model.load_state_dict(state, strict=True)
        if name is None:
            name = card.get("name") or weights_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors")
        logger.info("loaded detector %s (%s/%s) from %s", name, config.architecture, config.backbone, weights_url)
        return cls(model, config, name=name, device=device)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per (H, W, 3) uint8 RGB image: pixel boxes, scores, category ids 1-13."""
        tensors = [image_to_tensor(img, index=i) for i, img in enumerate(images)]
        out: list[Detections] = []
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(tensors), self.batch_size):
                batch = [t.to(self.device) for t in tensors[start : start + self.batch_size]]
                for pred in self.model(batch):
                    labels = labels_to_category_ids(pred["labels"], self.config)
                    out.append(
                        Detections(
                            pred["boxes"].float().cpu().numpy(),
                            pred["scores"].float().cpu().numpy(),
                            labels.cpu().numpy(),
                        )
                    )
        return out

    def detect_resident(
        self, images: Sequence[torch.Tensor], *, autocast_dtype: torch.dtype | None = None
    ) -> list[Detections]:
        """:meth:`detect` for uint8 (3, H, W) tensors already on :attr:`device`, batched on the device
        (:mod:`clothret.detection.batched`); ``autocast_dtype`` runs the network under autocast."""
        if not images:
            return []
        out: list[Detections] = []
        with self._lock:  # CUDA graphs' outputs are read until the detections reach the host
            self.model.eval()
            settings = self._made.settings if self._made is not None else CopySettings()
            self._configure(settings)  # the same settings: remade only if the weights changed
            for start in range(0, len(images), self.batch_size):
                found = batched.detect_resident(
                    self.model, images[start : start + self.batch_size], anchors=self._anchors, parts=self._parts,
                    autocast_dtype=autocast_dtype, channels_last=settings.channels_last,
                    pad_to=self.batch_size if settings.fixed_batch else None,  # one batch shape per image size
                )
                out.extend(_to_detections(found.to_host(), self.config))
        return out


def _to_detections(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], config) -> list[Detections]:
    return [Detections(boxes, scores, labels_to_category_ids(labels, config)) for boxes, scores, labels in parts]


def save_detector(
    model: nn.Module, config: TorchvisionDetectorConfig, weights_url: str, extra_card: dict | None = None
) -> str:
    """Write a detector's weights and model card (``kind``, ``config`` plus ``extra_card``); returns the sha256."""
    extra = dict(extra_card or {})
    clash = sorted({"kind", "config", "sha256", "format"} & extra.keys())
    if clash:
        raise ValueError(f"extra_card may not set the reserved keys {clash}")
    card = {"kind": CARD_KIND, "config": config.model_dump(mode="json"), **extra}
    return save_weights(OrderedDict(model.state_dict()), weights_url, card)


__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "CARD_KIND",
    "TorchvisionDetector",
    "TorchvisionDetectorConfig",
    "build_detector_model",
    "build_fpn_backbone",
    "category_ids_to_labels",
    "image_to_tensor",
    "labels_to_category_ids",
    "save_detector",
]
