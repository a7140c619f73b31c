"""Train one torchvision detector on a data set in the DeepFashion2 layout: the CLI's and the flow's job.

``data_url`` is a split folder (``image/`` + ``annos/``) or a data set root holding ``train/``; every item
of every image (street and shop) is a training target. The weights and their JSON model card go to
``weights_url`` (any fsspec URL); the resumable checkpoint sits beside them until training ends.
"""

from __future__ import annotations

import logging

import fsspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clothret.datasets.deepfashion2 import read_split
from clothret.detection.torchvision_backend import TorchvisionDetectorConfig
from clothret.detection.training import DetectorTrainConfig, train_detector
from clothret.weights import card_url

logger = logging.getLogger(__name__)


class TrainDetectorJob(BaseModel):
    """Which data, which detector, how to train it, and where the weights go."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data_url: str = Field(description="a split in the DeepFashion2 layout (image/ + annos/), or a root holding train/")
    weights_url: str = Field(description="where the .safetensors weights go; the JSON model card is written beside")
    model: TorchvisionDetectorConfig = Field(
        default_factory=TorchvisionDetectorConfig, description="architecture (fcos, retinanet, faster_rcnn), backbone, sizes"
    )
    train: DetectorTrainConfig = Field(
        default_factory=DetectorTrainConfig, description="steps or epochs, batch, lr, device (default auto)"
    )
    resume: bool = Field(True, description="continue from the checkpoint beside weights_url when there is one")

    @field_validator("weights_url")
    @classmethod
    def _safetensors(cls, value: str) -> str:
        card_url(value)  # raises ValueError unless it ends with .safetensors
        return value


def resolve_split(data_url: str) -> str:
    """``data_url`` when it is a split (has ``annos/``), else ``data_url/train`` when that is one."""
    fs, root = fsspec.core.url_to_fs(data_url)
    base = data_url.rstrip("/")
    if fs.isdir(f"{root.rstrip('/')}/annos"):
        return base
    if fs.isdir(f"{root.rstrip('/')}/train/annos"):
        return f"{base}/train"
    raise FileNotFoundError(
        f"{data_url} is neither a DeepFashion2 split (image/ + annos/) nor a data set root with train/annos/"
    )


def run_train_job(job: TrainDetectorJob, *, progress: bool = True) -> dict:
    """Train ``job.model`` on ``job.data_url``; returns the training metrics plus the split and weights URLs."""
    split = resolve_split(job.data_url)
    records = read_split(split)
    if not records:
        raise ValueError(f"split {split} has no annotated images to train on")
    n_items = sum(len(r.items) for r in records)
    logger.info(
        "training %s/%s on %s: %d images, %d items", job.model.architecture, job.model.backbone, split, len(records), n_items
    )
    metrics = train_detector(
        records, model_config=job.model, train_config=job.train, weights_url=job.weights_url,
        progress=progress, resume=job.resume,
    )
    return {**metrics, "split_url": split, "weights_url": job.weights_url, "n_images": len(records), "n_items": n_items}


__all__ = ["TrainDetectorJob", "resolve_split", "run_train_job"]
