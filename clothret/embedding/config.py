"""The frozen configuration of one embedder: backbone, CGD descriptors, output size and preprocessing.

It is stored in the model card beside the weights, so :meth:`Embedder.from_weights` can rebuild the
network exactly. The defaults are the small network the demo trains from scratch on the CPU in ~2 minutes
(see ``bench/embedder_quality.py``): a narrow ResNet-10-T (channels 32-256, 1.3 M parameters) at 48x48 px,
GeM + MAC -> 128 dimensions. On the synthetic data it beat a narrow ResNet-18 at equal time, and 48 px
with more steps beat 64 px with fewer.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

import timm
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clothret.embedding.pooling import validate_descriptors

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbedderConfig(BaseModel):
    """One embedder: ``timm`` backbone features -> CGD head (each descriptor -> linear -> l2; concat -> l2).

    ``descriptors`` is a string of letters from ``"G"`` (GeM), ``"M"`` (MAC), ``"S"`` (SPoC); each gets
    ``dim / len(descriptors)`` output dimensions. ``backbone_kwargs`` go to ``timm.create_model`` (e.g.
    ``{"channels": [32, 64, 128, 256]}`` for a narrow ResNet). ``pretrained`` with a ``pretrained_file``
    loads ImageNet weights from that local file through timm; ``pretrained`` without a file lets timm
    fetch them from its hub.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: str = "resnet10t"
    backbone_kwargs: dict[str, Any] = Field(default_factory=lambda: {"channels": [32, 64, 128, 256], "stem_width": 16})
    pretrained: bool = False
    pretrained_file: str | None = None
    descriptors: str = "GM"
    dim: int = Field(default=128, ge=2)
    input_size: int = Field(default=48, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    gem_p: float = Field(default=3.0, gt=0)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if not timm.is_model(value):
            close = difflib.get_close_matches(value, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; close matches: {close}" if close else ""
            raise ValueError(f"unknown timm backbone {value!r} (valid: any name in timm.list_models(){hint})")
        return value

    @field_validator("descriptors")
    @classmethod
    def _known_descriptors(cls, value: str) -> str:
        return validate_descriptors(value)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in value):
            raise ValueError(f"std must be > 0 per channel, got {value}")
        return value

    @model_validator(mode="after")
    def _dim_splits(self) -> EmbedderConfig:
        if self.dim % len(self.descriptors):
            raise ValueError(
                f"dim ({self.dim}) must be divisible by the number of descriptors ({len(self.descriptors)}, "
                f"{self.descriptors!r})"
            )
        if self.pretrained_file and not self.pretrained:
            raise ValueError("pretrained_file is set but pretrained is False; set pretrained=True to load it")
        return self


_REGISTRY: dict[str, EmbedderConfig] = {}


def register_config(name: str, config: EmbedderConfig) -> EmbedderConfig:
    """Add a named embedder config; a duplicate name raises ``ValueError``."""
    if name in _REGISTRY:
        raise ValueError(f"embedder config {name!r} is already registered; registered: {sorted(_REGISTRY)}")
    _REGISTRY[name] = config
    return config


def list_configs() -> list[str]:
    """Names of the registered embedder configs."""
    return sorted(_REGISTRY)


def get_config(name: str, **overrides: Any) -> EmbedderConfig:
    """A registered config, with ``overrides`` applied (validated); unknown names raise ``ValueError``."""
    try:
        base = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown embedder config {name!r}; registered: {list_configs()}") from None
    return EmbedderConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base


# The demo's network: trains from scratch on 2 CPU cores in ~2 minutes (bench/embedder_quality.py).
register_config("demo-resnet10t", EmbedderConfig())
# Full-width backbones for real data (DeepFashion2); set pretrained=True and pretrained_file to start from ImageNet.
register_config("resnet18-gm-256", EmbedderConfig(backbone="resnet18", backbone_kwargs={}, descriptors="GM", dim=256, input_size=224))
register_config("resnet50-gms-1536", EmbedderConfig(backbone="resnet50", backbone_kwargs={}, descriptors="GMS", dim=1536, input_size=320))

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EmbedderConfig", "get_config", "list_configs", "register_config"]
