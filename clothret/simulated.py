"""Simulated models, for benches and tests only: seeded boxes and features computed from a manifest entry,
without reading or decoding a pixel.

A simulated bundle names the ``simulated`` detector backend and one simulated embedder; both "weights"
are safetensors files whose tensors are the generator's parameters (cluster centres, a low-rank basis)
and whose model cards hold its settings, so the model version is a content hash like any real bundle's::

    bundle_url = write_simulated_bundle("bench/sim", dim=256, seed=0)
    models = load_models(load_bundle(bundle_url))      # a SimulatedModels
    result = run_segment(entries, models)              # no image is read: the URIs need not exist

What it computes for an image (its id, content hash and item id; nothing else):

- ``1 + h % max_boxes`` boxes (``h``: a hash of the image id and content hash), so a few per image;
- box ``j`` shows garment ``j`` of the image's item: its centre is drawn from the item id and ``j`` alone,
  so the shop boxes of one item lie near each other — a coarse cluster (one of ``n_clusters``, like a
  category or style) plus an item offset in a ``latent_dim``-dimensional subspace, as real embeddings
  occupy a low-dimensional part of their space;
- the box's feature is that centre plus ``box_noise`` of noise drawn from the image's content hash, then
  l2-normalised: a changed image (new hash) gets new features, an unchanged one the same.

Everything is vectorised with a counter-based hash (splitmix64), so a million boxes cost seconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clothret.datasets.catalogue import ManifestEntry
from clothret.pipeline.result import STATUS_OK, SegmentResult

logger = logging.getLogger(__name__)

BACKEND = "simulated"
DETECTOR_KIND = "simulated-boxes"
EMBEDDER_KIND = "simulated-features"
N_CATEGORIES = 13

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class SimulatedConfig:
    """The generator's settings (stored in the model cards; part of the model version)."""

    dim: int = 256
    seed: int = 0
    max_boxes: int = 5
    n_clusters: int = 1024
    latent_dim: int = 48
    cluster_weight: float = 1.0
    item_spread: float = 0.9
    box_noise: float = 0.35
    seconds_per_image: float = 0.0  # model time to simulate (a segment then takes as long as on a device)

    def check(self) -> SimulatedConfig:
        if (self.dim < 2 or self.max_boxes < 1 or self.n_clusters < 1 or not 1 <= self.latent_dim <= self.dim
                or self.seconds_per_image < 0):
            raise ValueError(
                f"simulated models need dim >= 2, max_boxes >= 1, n_clusters >= 1, 1 <= latent_dim <= dim and "
                f"seconds_per_image >= 0, got {self}"
            )
        return self


# --------------------------------------------------------------------------------------- hashing


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (wrapping arithmetic), element-wise."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def string_keys(values: Sequence[str], salt: str) -> np.ndarray:
    """A 64-bit key per string (blake2b of ``salt`` and the string)."""
    salt_b = salt.encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=salt_b).digest(), "little") for v in values),
        dtype=np.uint64, count=len(values),
    )


def uniforms(keys: np.ndarray, n: int) -> np.ndarray:
    """(len(keys), n) floats in (0, 1), a pure function of each key: two 24-bit values per 64-bit hash."""
    half = (n + 1) // 2
    with np.errstate(over="ignore"):
        counters = keys[:, None] * _MIX1 + np.arange(1, half + 1, dtype=np.uint64)[None, :]
    bits = _splitmix(counters)
    out = np.empty((len(keys), 2 * half), np.float32)
    scale = np.float32(1.0 / (1 << 24))
    np.multiply((bits >> np.uint64(40)).astype(np.float32) + np.float32(0.5), scale, out=out[:, :half])
    np.multiply((bits & np.uint64(0xFFFFFF)).astype(np.float32) + np.float32(0.5), scale, out=out[:, half:])
    return out[:, :n]


def normals(keys: np.ndarray, n: int) -> np.ndarray:
    """(len(keys), n) standard normal float32 values, a pure function of each key (Box-Muller)."""
    half = (n + 1) // 2
    u = uniforms(keys, 2 * half)
    radius = np.sqrt(np.float32(-2.0) * np.log(u[:, :half]))
    angle = np.float32(2 * np.pi) * u[:, half:]
    out = np.empty((len(keys), 2 * half), np.float32)
    np.multiply(radius, np.cos(angle), out=out[:, :half])
    np.multiply(radius, np.sin(angle), out=out[:, half:])
    return out[:, :n]


# --------------------------------------------------------------------------------------- the generator


def generator_tensors(config: SimulatedConfig) -> dict[str, np.ndarray]:
    """The generator's parameters: ``centres`` (n_clusters, dim), unit rows; ``basis`` (latent_dim, dim),
    orthonormal rows. Drawn from ``config.seed``; saved as the simulated embedder's weights."""
    config.check()
    rng = np.random.default_rng(config.seed)
    centres = rng.standard_normal((config.n_clusters, config.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((config.dim, config.latent_dim)))[0].T.astype(np.float32)
    return {"centres": centres, "basis": basis}


class SimulatedFeatures:
    """Boxes and features of manifest entries from the generator's parameters (see the module docstring)."""

    def __init__(self, config: SimulatedConfig, centres: np.ndarray, basis: np.ndarray):
        self.config = config.check()
        if centres.shape != (config.n_clusters, config.dim) or basis.shape != (config.latent_dim, config.dim):
            raise ValueError(
                f"simulated weights of shapes {centres.shape}, {basis.shape} do not match the card's "
                f"({config.n_clusters}, {config.dim}), ({config.latent_dim}, {config.dim})"
            )
        self.centres, self.basis = centres.astype(np.float32), basis.astype(np.float32)

    @property
    def dim(self) -> int:
        return self.config.dim

    def box_counts(self, image_keys: np.ndarray) -> np.ndarray:
        return (1 + _splitmix(image_keys ^ np.uint64(0x5EED)) % np.uint64(self.config.max_boxes)).astype(np.int64)

    def garment_centres(self, garment_keys: np.ndarray) -> np.ndarray:
        """Unit centres of garments (one key each): a coarse cluster plus an offset in the latent subspace."""
        c = self.config
        cluster = (_splitmix(garment_keys) % np.uint64(c.n_clusters)).astype(np.int64)
        offset = normals(garment_keys, c.latent_dim) @ self.basis
        offset *= np.float32(c.item_spread / np.sqrt(c.latent_dim))
        centre = offset + np.float32(c.cluster_weight) * self.centres[cluster]
        centre /= np.linalg.norm(centre, axis=1, keepdims=True)
        return centre

    def simulate(self, entries: Sequence[ManifestEntry]) -> tuple[np.ndarray, ...]:
        """``(box_image, boxes, scores, categories, features)`` of the entries, as a segment stores them."""
        c = self.config
        image_keys = string_keys([f"{e.image_id}\t{e.sha256}" for e in entries], f"image-{c.seed}")
        item_keys = string_keys([e.item_id for e in entries], f"item-{c.seed}")
        counts = self.box_counts(image_keys)
        box_image = np.repeat(np.arange(len(entries), dtype=np.int32), counts)
        starts = np.cumsum(counts) - counts
        slot = (np.arange(len(box_image)) - starts[box_image]).astype(np.uint64)
        with np.errstate(over="ignore"):
            garment_keys = _splitmix(item_keys[box_image] + slot * _GOLDEN)
            noise_keys = _splitmix(image_keys[box_image] + slot * _MIX2)
        feats = self.garment_centres(garment_keys)
        noise = normals(noise_keys, c.dim)
        feats += np.float32(c.box_noise / np.sqrt(c.dim)) * noise
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        shape = uniforms(noise_keys ^ np.uint64(0xB0B), 5)
        x1, y1 = shape[:, 0] * 400, shape[:, 1] * 400
        boxes = np.stack([x1, y1, x1 + 40 + shape[:, 2] * 360, y1 + 40 + shape[:, 3] * 360], axis=1)
        categories = (1 + _splitmix(garment_keys ^ np.uint64(0xCA7)) % np.uint64(N_CATEGORIES)).astype(np.int16)
        scores = (0.5 + 0.5 * shape[:, 4]).astype(np.float32)
        return box_image, boxes.astype(np.float32), scores, categories, feats.astype(np.float16)


# --------------------------------------------------------------------------------------- as models


class SimulatedBoxes:
    """The ``simulated`` detector backend's detector: a stand-in that :class:`SimulatedModels` never runs on
    pixels (its boxes come from :meth:`SimulatedFeatures.simulate`)."""

    def __init__(self, name: str, max_boxes: int):
        self.name, self.max_boxes = name, max_boxes

    @classmethod
    def from_weights(cls, weights_url: str, *, name: str = "simulated", device: str = "cpu") -> SimulatedBoxes:
        from clothret.weights import load_card

        card = load_card(weights_url)
        if card.get("kind") != DETECTOR_KIND:
            raise ValueError(f"{weights_url}: the simulated backend needs a {DETECTOR_KIND!r} card, got {card.get('kind')!r}")
        return cls(name, int(card["config"]["max_boxes"]))

    def detect(self, images: Sequence[np.ndarray]) -> list:
        raise ValueError(
            f"simulated detector {self.name!r} has no pixels to look at: simulated bundles run segments through "
            f"clothret.simulated.SimulatedModels.simulate_segment"
        )


@dataclass
class SimulatedModels:
    """What :func:`clothret.models.load_models` returns for a simulated bundle: ``simulate_segment`` replaces
    the read → decode → detect → fuse → embed engine (no file is read)."""

    version: str
    features: SimulatedFeatures
    detectors: list
    wbf_weights: list[float]
    fusion: object
    embedders: list

    @property
    def dim(self) -> int:
        return self.features.dim

    def simulate_segment(self, entries: Sequence[ManifestEntry]) -> SegmentResult:
        """A segment's arrays for ``entries``, as :func:`clothret.pipeline.segment.run_segment` returns them."""
        start = time.perf_counter()
        if self.features.config.seconds_per_image > 0:
            time.sleep(self.features.config.seconds_per_image * len(entries))
        box_image, boxes, scores, categories, feats = self.features.simulate(entries)
        n = len(entries)
        result = SegmentResult(
            image_ids=[e.image_id for e in entries], item_ids=[e.item_id for e in entries],
            sha256=[e.sha256 for e in entries], status=[STATUS_OK] * n, reasons=[""] * n,
            box_image=box_image, boxes=boxes, scores=scores, categories=categories, features=feats,
            seconds=time.perf_counter() - start,
        )
        result.counts = {"images": n, "images_ok": n, "images_failed": 0, "boxes": int(len(boxes))}
        return result


def load_simulated(bundle) -> SimulatedModels:
    """The simulated models of a bundle whose detectors use the ``simulated`` backend."""
    from clothret.detection.registry import load_detector
    from clothret.weights import load_weights

    if len(bundle.embedders) != 1:
        raise ValueError(f"a simulated bundle has exactly one simulated embedder, got {len(bundle.embedders)}")
    tensors, card = load_weights(bundle.embedders[0].weights)
    if card.get("kind") != EMBEDDER_KIND:
        raise ValueError(
            f"{bundle.embedders[0].weights}: a simulated bundle's embedder needs a {EMBEDDER_KIND!r} card, "
            f"got {card.get('kind')!r}"
        )
    config = SimulatedConfig(**card["config"])
    features = SimulatedFeatures(config, tensors["centres"].numpy(), tensors["basis"].numpy())
    detectors = [load_detector(d) for d in bundle.detectors]
    version = bundle.version()
    logger.info("simulated models, version %s (benches and tests only: no pixel is read)", version)
    return SimulatedModels(version, features, detectors, [d.wbf_weight for d in bundle.detectors], bundle.fusion, [])


def is_simulated(bundle) -> bool:
    """Whether a bundle's detectors use the ``simulated`` backend (all or none may)."""
    flags = {d.backend == BACKEND for d in bundle.detectors}
    if flags == {True, False}:
        raise ValueError(f"a bundle mixes the {BACKEND!r} detector backend with real ones: use one or the other")
    return flags == {True}


def write_simulated_bundle(folder_url: str, config: SimulatedConfig | None = None, **settings) -> str:
    """Write a simulated bundle (``bundle.yaml``, its two weights files and cards) under ``folder_url``;
    returns the bundle's URL. ``settings`` override :class:`SimulatedConfig` fields."""
    import dataclasses

    import torch

    from clothret.models import DetectorEntry, EmbedderEntry, ModelBundle, save_bundle
    from clothret.weights import save_weights

    config = dataclasses.replace(config or SimulatedConfig(), **settings).check()
    folder = folder_url.rstrip("/")
    tensors = {k: torch.from_numpy(v) for k, v in generator_tensors(config).items()}
    settings_card = {"config": dataclasses.asdict(config), "note": "simulated model: benches and tests only"}
    save_weights(tensors, f"{folder}/simulated-features.safetensors", {"kind": EMBEDDER_KIND, **settings_card})
    save_weights({"max_boxes": torch.tensor([config.max_boxes])}, f"{folder}/simulated-boxes.safetensors",
                 {"kind": DETECTOR_KIND, **settings_card})
    bundle = ModelBundle(
        detectors=[DetectorEntry(name="simulated-boxes", backend=BACKEND, weights="simulated-boxes.safetensors")],
        embedders=[EmbedderEntry(name="simulated-features", weights="simulated-features.safetensors")],
    )
    url = f"{folder}/bundle.yaml"
    save_bundle(bundle, url)
    return url


def simulated_manifest(
    n_images: int, *, seed: int = 0, images_per_item: int = 3, start: int = 0, revision: int = 0
) -> list[ManifestEntry]:
    """Entries ``start .. start + n_images - 1`` of a simulated catalogue: image ``i`` shows item
    ``i // images_per_item``; its URI need not exist; its content hash depends on ``revision`` (raise it to
    "change" an image)."""
    entries = []
    for i in range(start, start + n_images):
        image_id = f"im{i:09d}"
        sha = hashlib.sha256(f"{seed}/{image_id}/{revision}".encode()).hexdigest()
        entries.append(ManifestEntry(image_id, f"sim://gallery/{image_id}.jpg", sha, f"it{i // images_per_item:09d}"))
    return entries
