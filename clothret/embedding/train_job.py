"""Train one embedder on a data set in the DeepFashion2 layout: the CLI's and the flow's job.

``data_url`` is a split folder (``image/`` + ``annos/``) or a data set root holding ``train/``; every item
with ``style > 0`` of every image (street and shop) is a training sample, its identity ``(pair_id, style)``.
The weights and their JSON model card go to ``weights_url``. With ``bundle_url`` the job also writes a model
bundle: ``base_bundle_url``'s detectors and fusion with the new embedder in place of its embedders
(``bundle_mode="replace"``) or beside them (``"add"``, the paper's concatenation) — a new model version,
ready for a backfill and a promote.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clothret.datasets.deepfashion2 import read_split
from clothret.detection.train_job import resolve_split
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.training import EmbedderTrainConfig, train_embedder
from clothret.models import EmbedderEntry, absolute_url, load_bundle, save_bundle
from clothret.weights import card_url

logger = logging.getLogger(__name__)


class TrainEmbedderJob(BaseModel):
    """Which data, which embedder, how to train it, where the weights (and optionally a new bundle) go."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data_url: str = Field(description="a split in the DeepFashion2 layout (image/ + annos/), or a root holding train/")
    weights_url: str = Field(description="where the .safetensors weights go; the JSON model card is written beside")
    name: str | None = Field(None, description="the embedder's name in the model card and bundle (default: from its config)")
    model: EmbedderConfig = Field(
        default_factory=EmbedderConfig, description="timm backbone, CGD descriptors (G, M, S), dim, input size"
    )
    train: EmbedderTrainConfig = Field(
        default_factory=EmbedderTrainConfig, description="steps or epochs, P x K batches, lr, the four losses' weights"
    )
    base_bundle_url: str | None = Field(None, description="bundle whose detectors and fusion the new bundle keeps")
    bundle_url: str | None = Field(None, description="where to write the new bundle (needs base_bundle_url)")
    bundle_mode: Literal["replace", "add"] = Field(
        "replace", description="replace the base bundle's embedders, or add the new one beside them (concatenated)"
    )

    @field_validator("weights_url")
    @classmethod
    def _safetensors(cls, value: str) -> str:
        card_url(value)  # raises ValueError unless it ends with .safetensors
        return value

    @model_validator(mode="after")
    def _bundle_pair(self) -> TrainEmbedderJob:
        if self.bundle_url and not self.base_bundle_url:
            raise ValueError("bundle_url needs base_bundle_url: the bundle whose detectors and fusion to keep")
        return self

    def embedder_name(self) -> str:
        return self.name or f"{self.model.backbone}-{self.model.descriptors}-{self.model.dim}"


def write_bundle_with_embedder(
    base_bundle_url: str, bundle_url: str, weights_url: str, name: str, *, mode: str = "replace"
) -> str:
    """Write ``base_bundle_url``'s bundle with the embedder at ``weights_url`` replacing its embedders or added
    to them; weights paths become absolute. Returns the new bundle's model version."""
    if mode not in ("replace", "add"):
        raise ValueError(f"bundle mode must be 'replace' or 'add', got {mode!r}")
    base = load_bundle(base_bundle_url)
    entry = EmbedderEntry(name=name, weights=absolute_url(weights_url))
    if mode == "add" and name in {e.name for e in base.embedders}:
        raise ValueError(f"bundle {base_bundle_url} has an embedder named {name!r} already: pick another name")
    embedders = [*base.embedders, entry] if mode == "add" else [entry]
    bundle = base.model_copy(update={"embedders": embedders})
    save_bundle(bundle, bundle_url)
    version = bundle.version()
    logger.info("wrote bundle %s (model version %s): %s embedder %s", bundle_url, version, mode, name)
    return version


def run_train_embedder_job(job: TrainEmbedderJob, *, progress: bool = True) -> dict:
    """Train ``job.model`` on ``job.data_url``; returns the training metrics, the split and, when a bundle
    was written, its URL and model version."""
    split = resolve_split(job.data_url)
    records = read_split(split)
    if not records:
        raise ValueError(f"split {split} has no annotated images to train on")
    name = job.embedder_name()
    logger.info("training embedder %s on %s: %d images", name, split, len(records))
    metrics = train_embedder(
        records, model_config=job.model, train_config=job.train, weights_url=job.weights_url, name=name,
        progress=progress,
    )
    out = {**metrics, "name": name, "split_url": split, "n_images": len(records)}
    if job.bundle_url and job.base_bundle_url:
        out["bundle_url"] = job.bundle_url
        out["model_version"] = write_bundle_with_embedder(
            job.base_bundle_url, job.bundle_url, job.weights_url, name, mode=job.bundle_mode
        )
    return out


__all__ = ["TrainEmbedderJob", "run_train_embedder_job", "write_bundle_with_embedder"]
