"""Train an mmdetection detector through mmdetection's own runner on a split in the DeepFashion2 layout.

The split's annotations become a COCO file (13 categories; boxes also as box-shaped polygons so mask
heads such as Cascade Mask R-CNN's can train); the config's train loop becomes iteration based;
mmengine's runner resumes from the last checkpoint in the work folder. The result is written as
safetensors + model card (with the full config), ready for a model bundle.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from clothret.datasets.deepfashion2 import read_split
from clothret.datasets.coco import coco_detection_dict
from clothret.detection.mmdet_backend import MMDetDetector, detector_config, require_mmdet, save_mmdet_weights

logger = logging.getLogger(__name__)


class MMDetTrainConfig(BaseModel):
    """What to train and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config: str = Field("mmdet::atss/atss_r50_fpn_1x_coco.py", description="mmdetection config (mmdet:: = bundled)")
    overrides: dict = Field(default_factory=dict, description="dotted config keys to override")
    image_scale: tuple[int, int] | None = Field((512, 512), description="Resize scale in every pipeline (None: keep)")
    max_iters: int = Field(2000, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.01, gt=0)
    seed: int = 0


def _set_resize_scale(pipeline: list, scale: tuple[int, int]) -> None:
    for step in pipeline:
        if step.get("type") in ("Resize", "RandomResize", "RandomChoiceResize"):
            step.update(type="Resize", scale=scale, keep_ratio=True)
            for key in ("ratio_range", "scales", "resize_type"):
                step.pop(key, None)


def training_config(config: MMDetTrainConfig, annotation_file: str, work_dir: str):
    """The mmdetection config for an iteration-based run on one COCO file, without validation."""
    from clothret.detection.mmdet_backend import _dataset

    cfg = detector_config(config.config, overrides=config.overrides)
    dataset = _dataset(cfg.train_dataloader)
    dataset.update(data_root="", ann_file=annotation_file, data_prefix={"img": ""},
                   filter_cfg={"filter_empty_gt": True, "min_size": 1})
    if "RepeatDataset" in str(cfg.train_dataloader.dataset.get("type")):
        cfg.train_dataloader.dataset = dataset
    cfg.train_dataloader.update(batch_size=config.batch_size, num_workers=0, persistent_workers=False)
    if config.image_scale:
        _set_resize_scale(dataset["pipeline"], config.image_scale)
        _set_resize_scale(_dataset(cfg.test_dataloader)["pipeline"], config.image_scale)
    cfg.train_cfg = {"type": "IterBasedTrainLoop", "max_iters": config.max_iters, "val_interval": config.max_iters + 1}
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.optim_wrapper = {"type": "OptimWrapper",
                         "optimizer": {"type": "SGD", "lr": config.lr, "momentum": 0.9, "weight_decay": 1e-4},
                         "clip_grad": {"max_norm": 35, "norm_type": 2}}
    warmup = min(200, max(1, config.max_iters // 5))
    cfg.param_scheduler = [{"type": "LinearLR", "start_factor": 0.01, "by_epoch": False, "begin": 0, "end": warmup}]
    cfg.default_hooks.checkpoint = {"type": "CheckpointHook", "interval": max(1, config.max_iters // 4),
                                    "by_epoch": False, "max_keep_ckpts": 1}
    cfg.default_hooks.logger = {"type": "LoggerHook", "interval": max(1, min(50, config.max_iters // 10))}
    cfg.default_hooks.pop("visualization", None)
    cfg.work_dir = work_dir
    cfg.randomness = {"seed": config.seed}
    cfg.resume = any(Path(work_dir).glob("iter_*.pth"))  # mmengine resumes from the last checkpoint
    if cfg.resume:  # with a load_from (a starting checkpoint), mmengine would resume from that one instead
        cfg.load_from = None
    return cfg


@contextlib.contextmanager
def _unpickling() -> Iterator[None]:
    """While inside: ``torch.load`` unpickles instead of loading weights only."""
    name = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def unpickle_only_own_checkpoints(runner, work_dir: str) -> None:
    """Let ``runner`` resume from the checkpoints this code wrote into ``work_dir``, and unpickle nothing else.

    They hold the runner's logging state as pickled objects, which ``torch.load``'s weights-only default
    refuses. Only while the runner resumes from a file inside ``work_dir`` may torch unpickle; every other
    load of the run (the backbone's pretrained weights, a model-zoo checkpoint) stays weights-only.
    """
    resume, own = runner.resume, Path(work_dir).resolve()

    def resume_own(filename: str, *args, **kwargs):
        if own not in Path(filename).resolve().parents:
            return resume(filename, *args, **kwargs)
        with _unpickling():
            return resume(filename, *args, **kwargs)

    runner.resume = resume_own


def train_mmdet_detector(split_url: str, weights_url: str, config: MMDetTrainConfig, *, work_dir: str) -> str:
    """Train on every image of a split, write safetensors + card to ``weights_url``; returns its sha256."""
    require_mmdet()
    from mmengine.runner import Runner

    records = [r for r in read_split(split_url) if r.items]
    if not records:
        raise ValueError(f"split {split_url} has no annotated images to train a detector on")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    annotation_file = str(Path(work_dir) / "annotations.coco.json")
    Path(annotation_file).write_text(json.dumps(coco_detection_dict(records, image_sizes=True)))
    cfg = training_config(config, annotation_file, work_dir)
    runner = Runner.from_cfg(cfg)
    unpickle_only_own_checkpoints(runner, work_dir)
    runner.train()
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    model.eval()
    detector = MMDetDetector(model, name=Path(weights_url).stem)
    test_cfg = copy.deepcopy(cfg)
    test_cfg.train_dataloader = test_cfg.train_cfg = test_cfg.optim_wrapper = test_cfg.param_scheduler = None
    card = {"trained_on": split_url, "iterations": config.max_iters, "train_config": config.model_dump(mode="json")}
    digest = save_mmdet_weights(detector, test_cfg, weights_url, card=card)
    logger.info("trained %s for %d iterations on %d images: %s", config.config, config.max_iters, len(records), weights_url)
    return digest
