"""Model bundles: which detectors, fusion settings and embedders make one model version.

A bundle is a YAML or JSON file::

    detectors:
      - {name: fcos, backend: torchvision, weights: models/detector.safetensors, wbf_weight: 1.0}
    fusion: {iou_thr: 0.55, skip_box_thr: 0.05}
    embedders:
      - {name: resnet18-gem, weights: models/embedder.safetensors}

Relative weights paths resolve against the bundle's own folder. The architecture of each model is in
its weights' model card. The *version* hashes what the models are, never where their files lie: the
fusion settings, each detector's backend and WBF weight, and each model's inference fields of its card
(:data:`INFERENCE_CARD_KEYS`: kind or backend, architecture and preprocessing config, the weights'
sha256). The same files under another path, bucket or copy are the same version; retrained weights or
another setting make a new one, and features of two versions never mix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
import fsspec
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clothret.detection.fusion import FusionConfig
from clothret.detection.registry import backends, check_backend, load_detector, register_backend
from clothret.weights import load_card

logger = logging.getLogger(__name__)

if "simulated" not in backends():  # seeded features without pixels, for benches and tests (clothret.simulated)
    register_backend("simulated", "clothret.simulated:SimulatedBoxes.from_weights")


class DetectorEntry(BaseModel):
    """One detector of the ensemble and its weight in weighted boxes fusion.

    ``backend`` names a registered detector backend (:mod:`clothret.detection.registry`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    backend: str = "torchvision"
    weights: str
    wbf_weight: float = Field(1.0, gt=0)

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        return check_backend(value)


class EmbedderEntry(BaseModel):
    """One embedder; the features of all embedders are l2-normalised and concatenated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    weights: str


class ModelBundle(BaseModel):
    """Detectors + fusion + embedders: one model version of the pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    detectors: list[DetectorEntry] = Field(min_length=1)
    fusion: FusionConfig = FusionConfig()
    embedders: list[EmbedderEntry] = Field(min_length=1)

    @field_validator("detectors", "embedders")
    @classmethod
    def _unique_names(cls, entries: list) -> list:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return entries

    def resolved(self, base_url: str) -> ModelBundle:
        """A copy whose relative weights paths are joined to ``base_url`` (the bundle's folder)."""

        def resolve(path: str) -> str:
            if "://" in path or path.startswith("/"):
                return path
            return absolute_url(f"{base_url.rstrip('/')}/{path}")

        return self.model_copy(
            update={
                "detectors": [d.model_copy(update={"weights": resolve(d.weights)}) for d in self.detectors],
                "embedders": [e.model_copy(update={"weights": resolve(e.weights)}) for e in self.embedders],
            }
        )

    def identity(self) -> dict:
        """What the models are, without names or paths: the document :meth:`version` hashes."""
        return {
            "fusion": self.fusion.model_dump(mode="json"),
            "detectors": [
                {"backend": d.backend, "wbf_weight": d.wbf_weight, "model": model_identity(d.weights)}
                for d in self.detectors
            ],
            "embedders": [{"model": model_identity(e.weights)} for e in self.embedders],
        }

    def version(self) -> str:
        """The model version (16 hex digits): a hash of :meth:`identity`, the same wherever the files are."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


INFERENCE_CARD_KEYS: tuple[str, ...] = (
    "kind", "backend", "config", "mmdet_config", "classes", "score_threshold", "sha256", "format",
)
"""The model-card fields that decide what a model computes. The others (its name, training settings and
figures, where it was trained or imported from) are provenance and leave the model version alone."""


def model_identity(weights_url: str) -> dict:
    """The inference fields of a model's card (which include its weights' sha256)."""
    card = load_card(weights_url)
    if not card.get("sha256"):
        raise ValueError(f"the model card of {weights_url} has no sha256: re-save the weights with clothret")
    return {key: card[key] for key in INFERENCE_CARD_KEYS if key in card}


def absolute_url(url: str) -> str:
    """``url`` with a local relative path made absolute (``s3://``, ``memory://`` and absolute paths as given)."""
    if "://" in url:
        return url
    fs, path = fsspec.core.url_to_fs(url)
    return path


def load_bundle(url: str) -> ModelBundle:
    """Read a bundle file (YAML or JSON) and resolve its relative weights paths.

    Errors name the file and say what is wrong in one line: not found, not YAML/JSON, not a valid bundle.
    """
    from pydantic import ValidationError

    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"model bundle not found: {url}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{url} is not a YAML or JSON model bundle: not UTF-8 text "
                         f"(byte 0x{exc.object[exc.start]:02x})") from exc
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{url} is not a YAML or JSON model bundle: {problem}{where}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"model bundle {url} must be a mapping with detectors, fusion, embedders")
    try:
        bundle = ModelBundle.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'bundle'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ValueError(f"{url} is not a valid model bundle: {problems}") from exc
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    return bundle.resolved(base)


def save_bundle(bundle: ModelBundle, url: str) -> None:
    """Write a bundle as YAML."""
    with fsspec.open(url, "w") as f:
        yaml.safe_dump(bundle.model_dump(mode="json"), f, sort_keys=False)


@dataclass
class LoadedModels:
    """A bundle's models in memory, ready to run."""

    version: str
    detectors: list
    wbf_weights: list[float]
    fusion: FusionConfig
    embedders: list

    @property
    def dim(self) -> int:
        return sum(e.dim for e in self.embedders)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Concatenate every embedder's l2-normalised features, then l2-normalise the result."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        parts = [e.embed(crops) for e in self.embedders]
        feats = np.concatenate(parts, axis=1).astype(np.float32)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)

    @property
    def device(self):
        """The torch device the models run on (the first model that says; the CPU otherwise)."""
        import torch

        for model in (*self.detectors, *self.embedders):
            if isinstance(getattr(model, "device", None), torch.device):
                return model.device
        return torch.device("cpu")

    def embed_boxes(self, images: list, boxes: list[np.ndarray], *, autocast_dtype=None) -> np.ndarray:
        """:meth:`embed` of the boxes cut from uint8 (3, H, W) images on :attr:`device`: the crops are cut and
        resized there (:func:`~clothret.detection.crops.crop_resized`, once per input size); an embedder
        without ``embed_pixels`` gets numpy crops instead."""
        import torch
        import torch.nn.functional as F

        from clothret.detection.crops import crop_boxes, crop_resized

        if not sum(len(b) for b in boxes):
            return np.zeros((0, self.dim), np.float32)
        crops: dict[int, torch.Tensor] = {}
        parts = []
        for embedder in self.embedders:
            if hasattr(embedder, "embed_pixels"):
                size = embedder.config.input_size
                if size not in crops:
                    crops[size] = crop_resized(images, boxes, size)
                parts.append(embedder.embed_pixels(crops[size], autocast_dtype=autocast_dtype))
            else:
                host = [img.permute(1, 2, 0).cpu().numpy() for img in images]
                pixels = [c for img, b in zip(host, boxes) for c in crop_boxes(img, b)]
                parts.append(torch.from_numpy(embedder.embed(pixels)).to(images[0].device))
        feats = F.normalize(torch.cat(parts, dim=1).float(), dim=1, eps=1e-12)
        return feats.cpu().numpy()


def load_models(bundle: ModelBundle, *, device: str = "cpu") -> LoadedModels:
    """Build every detector and embedder of a bundle from its weights."""
    from clothret.embedding.model import Embedder
    from clothret.simulated import is_simulated, load_simulated

    if is_simulated(bundle):
        return load_simulated(bundle)

    detectors = [load_detector(d, device=device) for d in bundle.detectors]
    embedders = [Embedder.from_weights(e.weights, name=e.name, device=device) for e in bundle.embedders]
    version = bundle.version()
    logger.info("loaded model version %s: %d detectors, %d embedders", version, len(detectors), len(embedders))
    return LoadedModels(version, detectors, [d.wbf_weight for d in bundle.detectors], bundle.fusion, embedders)


@functools.lru_cache(maxsize=2)
def cached_models(bundle_url: str, version: str, device: str = "cpu") -> LoadedModels:
    """Models loaded once per process (per worker) for a bundle URL and version."""
    models = load_models(load_bundle(bundle_url), device=device)
    if models.version != version:
        raise ValueError(f"bundle {bundle_url} is now version {models.version}, expected {version}")
    return models
