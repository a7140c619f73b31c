"""mmdetection detectors (the paper's ATSS, Cascade Mask R-CNN, CenterNet, RetinaNet) behind the
:class:`~clothret.detection.types.Detector` protocol, through mmdetection's own config files,
``init_detector`` and ``inference_detector``.

mmdetection is optional (``make mmdet``); without it this module still imports and every entry point
raises one :class:`ImportError` saying how to install it.

Weights: a model-zoo (or any mmdetection) checkpoint loads with :meth:`MMDetDetector.from_checkpoint`;
:func:`save_mmdet_weights` turns any loaded detector into a safetensors file whose model card holds
the full mmdetection config, which is what a model bundle names (backend ``mmdet``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothret.datasets.records import CATEGORIES
from clothret.detection.types import Detections

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "mmdetection is not installed: run `make mmdet` (builds mmcv against the installed torch once, "
    "about 15 min on 2 cores, then installs mmdet 3.3 and mmengine)"
)

PAPER_CONFIGS: dict[str, str] = {
    "atss": "mmdet::atss/atss_r50_fpn_1x_coco.py",
    "cascade_mask_rcnn": "mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py",
    "centernet": "mmdet::centernet/centernet-update_r50_fpn_8xb8-amp-lsj-200e_coco.py",
    "retinanet_r101": "mmdet::retinanet/retinanet_r101_fpn_1x_coco.py",
    "retinanet_x101": "mmdet::retinanet/retinanet_x101-64x4d_fpn_1x_coco.py",
}
"""The five detectors of the paper, as mmdetection's bundled configs (``mmdet::`` = inside the package)."""


def require_mmdet() -> None:
    """Raise one clear ``ImportError`` when mmdetection, mmcv (with ops) or mmengine is missing."""
    try:
        import mmcv.ops  # noqa: F401 - the compiled ops the detectors need
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc


def mmdet_available() -> bool:
    try:
        require_mmdet()
    except ImportError:
        return False
    return True


def config_path(config: str) -> str:
    """A config file path; ``mmdet::dir/file.py`` names a config bundled with mmdetection."""
    if not config.startswith("mmdet::"):
        return config
    require_mmdet()
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / config.removeprefix("mmdet::")
    if not path.exists():
        raise FileNotFoundError(f"mmdetection has no bundled config {config!r} (looked for {path})")
    return str(path)


def _set_num_classes(node: Any, num_classes: int, *, parent: str = "") -> None:
    """Set every ``num_classes`` of the model's heads (all cascade stages, mask heads), not the RPN's."""
    if isinstance(node, Mapping):
        if "rpn" in parent:
            return
        for key, value in node.items():
            if key == "num_classes":
                node[key] = num_classes
            else:
                _set_num_classes(value, num_classes, parent=key)
    elif isinstance(node, list):
        for value in node:
            _set_num_classes(value, num_classes, parent=parent)


def detector_config(config: str, *, num_classes: int = len(CATEGORIES), overrides: dict | None = None):
    """An mmdetection ``Config`` for our 13 categories, with no backbone download at build time."""
    require_mmdet()
    from mmengine.config import Config

    cfg = Config.fromfile(config_path(config))
    _set_num_classes(cfg.model, num_classes)
    if "init_cfg" in cfg.model.get("backbone", {}):
        cfg.model.backbone.init_cfg = None  # nothing can be downloaded: random init unless weights are loaded
    if overrides:
        cfg.merge_from_dict(overrides)
    classes = tuple(CATEGORIES) if num_classes == len(CATEGORIES) else tuple(f"class{i}" for i in range(num_classes))
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(split) and cfg[split].get("dataset"):
            _dataset(cfg[split])["metainfo"] = {"classes": classes}
    return cfg


def _dataset(loader_cfg) -> dict:
    """The innermost dataset config of a dataloader (through wrappers such as RepeatDataset)."""
    dataset = loader_cfg["dataset"]
    while "dataset" in dataset:
        dataset = dataset["dataset"]
    return dataset


class MMDetDetector:
    """An mmdetection detector: RGB images in, pixel boxes + scores + categories 1-13 out."""

    def __init__(self, model, *, name: str, score_threshold: float = 0.05) -> None:
        self.model = model
        self.name = name
        self.score_threshold = score_threshold

    @classmethod
    def from_checkpoint(
        cls, config: str, checkpoint: str | None, *, name: str, device: str = "cpu",
        num_classes: int = len(CATEGORIES), overrides: dict | None = None, score_threshold: float = 0.05,
    ) -> MMDetDetector:
        """Build from a config and load a checkpoint through mmdetection's ``init_detector``
        (``checkpoint=None``: random init)."""
        require_mmdet()
        from mmdet.apis import init_detector

        cfg = detector_config(config, num_classes=num_classes, overrides=overrides)
        model = init_detector(cfg, checkpoint, device=device)
        return cls(model, name=name, score_threshold=score_threshold)

    @classmethod
    def from_weights(cls, weights_url: str, *, name: str, device: str = "cpu") -> MMDetDetector:
        """Load safetensors weights whose model card holds the mmdetection config (the bundle loader)."""
        require_mmdet()
        from mmdet.apis import init_detector
        from mmengine.config import Config

        from clothret.weights import load_weights

        state, card = load_weights(weights_url)
        if card.get("backend") != "mmdet" or "mmdet_config" not in card:
            raise ValueError(f"{weights_url} is not an mmdetection detector's weights (card backend {card.get('backend')!r})")
        with warnings.catch_warnings():  # "checkpoint is None, use COCO classes": the classes are set below
            warnings.simplefilter("ignore", UserWarning)
            model = init_detector(Config.fromstring(card["mmdet_config"], ".py"), None, device=device)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_url} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.dataset_meta = {"classes": tuple(card.get("classes", CATEGORIES))}
        return cls(model, name=name, score_threshold=float(card.get("score_threshold", 0.05)))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in RGB uint8 images (mmdetection's array inputs are BGR: converted here)."""
        if not images:
            return []
        from mmdet.apis import inference_detector

        bgr = [np.ascontiguousarray(np.asarray(img)[..., ::-1]) for img in images]
        out = []
        for sample in inference_detector(self.model, bgr):
            pred = sample.pred_instances
            scores = pred.scores.detach().cpu().numpy()
            keep = scores >= self.score_threshold
            out.append(
                Detections(
                    pred.bboxes.detach().cpu().numpy()[keep],
                    scores[keep],
                    pred.labels.detach().cpu().numpy()[keep] + 1,  # mmdetection labels are 0-based
                )
            )
        return out


def save_mmdet_weights(detector: MMDetDetector, config, weights_url: str, *, card: dict | None = None) -> str:
    """Write a detector's weights as safetensors with a card holding its full mmdetection config."""
    from clothret.weights import save_weights

    full_card = {
        "backend": "mmdet",
        "mmdet_config": config.pretty_text,
        "classes": list(CATEGORIES),
        "score_threshold": detector.score_threshold,
        **(card or {}),
    }
    return save_weights(detector.model.state_dict(), weights_url, _jsonable(full_card))


def _jsonable(value: Any) -> Any:
    """Config dicts hold tuples and numpy scalars; make them plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
