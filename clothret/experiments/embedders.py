"""Embedder comparisons on ground-truth boxes, same data, seed and steps for every configuration (the
paper's Table 3 and its ensemble): GeM alone against CGD (GeM+MAC, GeM+MAC+SPoC), softmax alone against the
four losses, one model against two different models concatenated. Shared by ``bench/embedders.py`` and
``clothret experiment``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clothret.datasets.records import ImageRecord
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.evaluate_crops import CropEmbedder, crops_retrieval_accuracy, split_crops
from clothret.embedding.model import Embedder
from clothret.embedding.training import EmbedderTrainConfig, train_embedder
from clothret.weights import load_card

logger = logging.getLogger(__name__)

SOFTMAX_ONLY: dict = {"losses": {"center": 0.0, "triplet": 0.0, "multi_similarity": 0.0}}
"""Training overrides that keep the (cosine) softmax loss alone."""

SECOND_BACKBONE: dict = {"backbone": "resnet18d", "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16}}
"""Model B of the ensemble: a narrow ResNet-18-D (deeper, other stem and downsampling than model A's ResNet-10-T)."""

DIM = 120
"""Embedding size of every compared configuration (divisible by 1, 2 and 3 descriptors)."""


@dataclass(frozen=True)
class EmbedderVariant:
    """One trained configuration: overrides of the base model and training configs, and what it shows."""

    name: str
    what: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleVariant:
    """Trained configurations whose l2-normalised features are concatenated (then l2-normalised)."""

    name: str
    what: str
    members: tuple[str, ...]


def paper_variants(dim: int = DIM) -> tuple[list[EmbedderVariant], list[EnsembleVariant]]:
    """The compared configurations; ``cgd-gm`` is model A (the demo's network), ``r18d-cgd-gm`` model B."""
    variants = [
        EmbedderVariant("gem", "ResNet-10-T, GeM only, 4 losses", {"descriptors": "G", "dim": dim}),
        EmbedderVariant("cgd-gm", "ResNet-10-T, CGD GeM+MAC, 4 losses (model A)", {"descriptors": "GM", "dim": dim}),
        EmbedderVariant("cgd-gms", "ResNet-10-T, CGD GeM+MAC+SPoC, 4 losses", {"descriptors": "GMS", "dim": dim}),
        EmbedderVariant("cgd-gm-softmax", "ResNet-10-T, CGD GeM+MAC, softmax only",
                        {"descriptors": "GM", "dim": dim}, SOFTMAX_ONLY),
        EmbedderVariant("r18d-cgd-gm", "ResNet-18-D, CGD GeM+MAC, 4 losses (model B)",
                        {**SECOND_BACKBONE, "descriptors": "GM", "dim": dim}),
    ]
    ensembles = [EnsembleVariant("concat-a-b", "model A + model B concatenated", ("cgd-gm", "r18d-cgd-gm"))]
    return variants, ensembles


def variant_configs(
    variant: EmbedderVariant, base_model: EmbedderConfig, base_train: EmbedderTrainConfig
) -> tuple[EmbedderConfig, EmbedderTrainConfig]:
    """The model and training configs of a variant (its overrides on the base ones, validated)."""
    model = EmbedderConfig.model_validate({**base_model.model_dump(), **variant.model})
    train = base_train.model_dump()
    for key, value in variant.train.items():
        train[key] = {**train[key], **value} if isinstance(value, dict) and isinstance(train.get(key), dict) else value
    return model, EmbedderTrainConfig.model_validate(train)


def train_or_reuse_embedder(
    records: Sequence[ImageRecord], model: EmbedderConfig, train: EmbedderTrainConfig, url: str, *,
    name: str, progress: bool = True,
) -> dict:
    """Train ``url`` unless its model card says it was trained with the same settings on as many crops;
    returns ``{"seconds", "steps", "loss_final", "reused"}``."""
    try:
        card = load_card(url)
    except FileNotFoundError:
        card = {}
    n_crops = sum(key is not None for record in records for key in record.match_keys())
    if (
        card.get("config") == model.model_dump(mode="json")
        and card.get("train_config") == train.model_dump(mode="json")
        and card.get("num_crops") == n_crops
        and Path(url).exists()
    ):
        logger.info("reusing %s (trained in %.0f s)", url, card["seconds"])
        return {"seconds": card["seconds"], "steps": card["steps"], "loss_final": card["final_loss"], "reused": True}
    metrics = train_embedder(records, model_config=model, train_config=train, weights_url=url, name=name,
                             progress=progress)
    return {"seconds": metrics["seconds"], "steps": metrics["steps"], "loss_final": metrics["loss_final"], "reused": False}


class ConcatEmbedder:
    """Several embedders' l2-normalised features concatenated and l2-normalised (as a bundle's embedders are)."""

    def __init__(self, members: Sequence[CropEmbedder], *, name: str) -> None:
        if not members:
            raise ValueError("a concatenation needs at least one embedder")
        self.members = list(members)
        self.name = name

    @property
    def dim(self) -> int:
        return sum(m.dim for m in self.members)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        feats = np.concatenate([m.embed(crops) for m in self.members], axis=1).astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


@dataclass
class EmbedderComparison:
    """The trained configurations (weights URLs), their training figures and the GT-box table."""

    weights: dict[str, str]
    training: dict[str, dict]
    table: dict[str, dict]
    what: dict[str, str]


def compare_embedders(
    train_records: Sequence[ImageRecord],
    val_records: Sequence[ImageRecord],
    out_dir: str | Path,
    *,
    base_model: EmbedderConfig | None = None,
    base_train: EmbedderTrainConfig | None = None,
    variants: Sequence[EmbedderVariant] | None = None,
    ensembles: Sequence[EnsembleVariant] | None = None,
    ks: Sequence[int] = (1, 10),
    progress: bool = True,
) -> EmbedderComparison:
    """Train every variant (same data, seed, steps) into ``out_dir`` and score each, and each ensemble, on
    the validation split's ground-truth crops (item-level Acc@k)."""
    if variants is None or ensembles is None:
        default_variants, default_ensembles = paper_variants()
        variants = default_variants if variants is None else variants
        ensembles = default_ensembles if ensembles is None else ensembles
    base_model = base_model or EmbedderConfig()
    base_train = base_train or EmbedderTrainConfig()
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"embedder variant names must be unique, got {names}")
    for ensemble in ensembles:
        unknown = [m for m in ensemble.members if m not in names]
        if unknown:
            raise ValueError(f"ensemble {ensemble.name!r} names unknown variants {unknown}; known: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gallery, queries = split_crops(val_records)
    weights, training, table, embedders = {}, {}, {}, {}
    for variant in variants:
        model, train = variant_configs(variant, base_model, base_train)
        url = str(out / f"embedder-{variant.name}.safetensors")
        training[variant.name] = train_or_reuse_embedder(train_records, model, train, url, name=variant.name,
                                                         progress=progress)
        weights[variant.name] = url
        embedders[variant.name] = Embedder.from_weights(url, name=variant.name)
        table[variant.name] = crops_retrieval_accuracy(embedders[variant.name], gallery, queries, ks=ks)
    for ensemble in ensembles:
        concat = ConcatEmbedder([embedders[m] for m in ensemble.members], name=ensemble.name)
        table[ensemble.name] = crops_retrieval_accuracy(concat, gallery, queries, ks=ks)
    what = {v.name: v.what for v in variants} | {e.name: e.what for e in ensembles}
    return EmbedderComparison(weights, training, table, what)


__all__ = [
    "ConcatEmbedder",
    "EmbedderComparison",
    "EmbedderVariant",
    "EnsembleVariant",
    "compare_embedders",
    "paper_variants",
    "train_or_reuse_embedder",
    "variant_configs",
]
