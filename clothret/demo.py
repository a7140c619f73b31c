"""The demo, step by step: synthetic data → train → catalogue → refresh → search → evaluate → report.

Every step is a plain function over a work folder, so each can also run alone from the CLI. The
refresh step takes the refresh runner as an argument (the Prefect flow, injected by the CLI), so this
library module stays free of the orchestrator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np

from clothret.datasets.catalogue import manifest_from_records, write_manifest
from clothret.datasets.deepfashion2 import read_split
from clothret.datasets.records import ImageRecord
from clothret.datasets.synthetic import DEFAULT_SPLITS, SyntheticSizes, generate_dataset
from clothret.detection.fusion import FusionConfig
from clothret.evaluation.split import evaluate_split
from clothret.evaluation.submission import write_submission
from clothret.index.results import QueryResult
from clothret.index.search import SearchIndex
from clothret.models import DetectorEntry, EmbedderEntry, ModelBundle, load_bundle, load_models, save_bundle
from clothret.refresh import RefreshConfig
from clothret.report import write_report

logger = logging.getLogger(__name__)

DEMO_DETECTOR: dict = {
    "steps": 800,
    "batch_size": 16,
    "model": {"architecture": "fcos", "backbone": "mobilenet_v3_small", "class_ce_weight": 1.0, "min_size": 192, "max_size": 320},
}
"""Detector training for the demo: small enough to train from random init in ~3-4 minutes on 2 cores."""

DEMO_EMBEDDER: dict = {
    "steps": 1000,
    "p_identities": 32,
    "k_instances": 2,
    "model": {"backbone": "resnet10t", "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16}, "input_size": 48},
}
"""Embedder training for the demo: a narrow ResNet-10 at 48 px, ~1-2 minutes on 2 cores."""

DEMO_FUSION: dict = {"iou_thr": 0.55, "score_prefilter": 0.1, "max_boxes_per_image": 10, "conf_type": "max"}
"""Fusion for the demo: a fused box scores its best member (``max``; the default ``avg`` averages it with the
detector's weaker overlapping boxes) and at most 10 boxes per image bound the gallery (the paper capped boxes
too). On the demo's models: avg/5 boxes Acc@1 0.601, Acc@10 0.731; max/5 0.642, 0.769; max/10 0.666, 0.822."""


def _fingerprint(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done_marker(path: Path, recipe: dict) -> bool:
    """Whether ``path`` holds the marker of a finished step with the same recipe."""
    return path.exists() and json.loads(path.read_text()).get("recipe") == _fingerprint(recipe)


def _mark_done(path: Path, recipe: dict, **info: object) -> None:
    path.write_text(json.dumps({"recipe": _fingerprint(recipe), **info}, indent=2))


def synthesize(workdir: Path, *, seed: int = 0, splits: dict[str, SyntheticSizes] | None = None) -> Path:
    """Generate the synthetic data set under ``workdir/data`` unless the same one is there already."""
    splits = splits or DEFAULT_SPLITS
    data = workdir / "data"
    recipe = {"seed": seed, "splits": {k: vars(v) for k, v in splits.items()}}
    marker = data / "_SYNTH_DONE.json"
    if _done_marker(marker, recipe):
        logger.info("synthetic data set in %s is up to date", data)
        return data
    data.mkdir(parents=True, exist_ok=True)
    out = generate_dataset(str(data), seed=seed, splits=splits)
    _mark_done(marker, recipe, images={k: len(v) for k, v in out.items()})
    return data


def _train_or_reuse(kind: str, train: Callable, records: list[ImageRecord], model_config, train_config,
                    models_dir: Path, data_fp: str) -> None:
    """Train ``models_dir/<kind>.safetensors`` unless it was trained with the same recipe already."""
    url = str(models_dir / f"{kind}.safetensors")
    marker = models_dir / f"{kind}.recipe.json"
    recipe = {"model": model_config.model_dump(), "train": train_config.model_dump(), "data": data_fp}
    if _done_marker(marker, recipe) and Path(url).exists():
        logger.info("%s is trained already with the same settings: reusing %s", kind, url)
        return
    metrics = train(records, model_config=model_config, train_config=train_config, weights_url=url)
    _mark_done(marker, recipe, metrics=metrics)


def train_models(data: Path, models_dir: Path, *, detector_overrides: dict | None = None,
                 embedder_overrides: dict | None = None, fusion: dict | None = None, seed: int = 0) -> Path:
    """Train one detector and one embedder on ``data/train`` (or reuse them) and write a bundle."""
    from clothret.detection.torchvision_backend import TorchvisionDetectorConfig
    from clothret.detection.training import DetectorTrainConfig, train_detector
    from clothret.embedding.config import EmbedderConfig
    from clothret.embedding.training import EmbedderTrainConfig, train_embedder

    models_dir.mkdir(parents=True, exist_ok=True)
    records = read_split(str(data / "train"))
    data_fp = _fingerprint([(r.image_id, r.pair_id, [vars(i) for i in r.items]) for r in records])
    det_over = dict(DEMO_DETECTOR if detector_overrides is None else detector_overrides)
    emb_over = dict(DEMO_EMBEDDER if embedder_overrides is None else embedder_overrides)
    det_model = TorchvisionDetectorConfig(**det_over.pop("model", {}))
    det_train = DetectorTrainConfig(**{"seed": seed, **det_over})
    emb_model = EmbedderConfig(**emb_over.pop("model", {}))
    emb_train = EmbedderTrainConfig(**{"seed": seed, **emb_over})

    for kind, train, model, train_config in (
        ("detector", train_detector, det_model, det_train),
        ("embedder", train_embedder, emb_model, emb_train),
    ):
        _train_or_reuse(kind, train, records, model, train_config, models_dir, data_fp)

    bundle = ModelBundle(
        fusion=FusionConfig(**(DEMO_FUSION if fusion is None else fusion)),
        detectors=[DetectorEntry(name=f"{det_model.architecture}-{det_model.backbone}", weights="detector.safetensors")],
        embedders=[EmbedderEntry(name=f"{emb_model.backbone}-{emb_model.descriptors}", weights="embedder.safetensors")],
    )
    bundle_path = models_dir / "bundle.yaml"
    save_bundle(bundle, str(bundle_path))
    return bundle_path


def build_catalogue(split_url: str, manifest_url: str) -> int:
    """Write the manifest of a split's shop images; returns the number of images."""
    entries = manifest_from_records(read_split(split_url, source="shop"))
    write_manifest(entries, manifest_url)
    return len(entries)


def chance_accuracy(n_gallery_boxes: int, n_positive: np.ndarray, k: int) -> float:
    """Acc@k of a random ranking with perfect detection: 1 - C(N - P, k) / C(N, k), averaged."""
    n = n_gallery_boxes
    vals = [1.0 - (math.comb(n - p, k) / math.comb(n, k) if n - p >= k else 0.0) for p in n_positive]
    return float(np.mean(vals)) if vals else 0.0


def evaluate(
    split_url: str, bundle_url: str, index_url: str, out_dir: str, *, k: int = 20
) -> tuple[dict, list[ImageRecord], list[ImageRecord], list[QueryResult]]:
    """Search every street image of a split, score Acc@k and write ``submission.json``."""
    models = load_models(load_bundle(bundle_url))
    run = evaluate_split(split_url, models, SearchIndex.load(index_url), k=k)
    write_submission(run.results, f"{out_dir.rstrip('/')}/submission.json")
    return run.scores, run.queries, run.gallery, run.results


def run_demo(
    workdir: Path,
    refresh: Callable[[RefreshConfig], dict],
    *,
    seed: int = 0,
    splits: dict[str, SyntheticSizes] | None = None,
    detector_overrides: dict | None = None,
    embedder_overrides: dict | None = None,
    segment_size: int = 64,
) -> dict:
    """All demo steps; returns the summary also written to ``workdir/summary.json``."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, fn: Callable, *args, **kwargs):
        logger.info("== %s", name)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        logger.info("== %s done in %.1f s", name, timings[name])
        return out

    workdir.mkdir(parents=True, exist_ok=True)
    data = step("synthesize", synthesize, workdir, seed=seed, splits=splits)
    bundle_path = step(
        "train", train_models, data, workdir / "models",
        detector_overrides=detector_overrides, embedder_overrides=embedder_overrides, seed=seed,
    )
    manifest_url = str(workdir / "catalogue" / "manifest.jsonl")
    step("catalogue", build_catalogue, str(data / "validation"), manifest_url)
    config = RefreshConfig(
        manifest_url=manifest_url,
        bundle_url=str(bundle_path),
        store_url=str(workdir / "store"),
        index_url=str(workdir / "index"),
        segment_size=segment_size,
    )
    build = step("refresh", refresh, config)
    scores, queries, gallery, results = step(
        "search+evaluate", evaluate, str(data / "validation"), str(bundle_path), str(workdir / "index"), str(workdir)
    )
    n_positive = np.array([1] * scores["n_query_items"])  # one shop image per item in the synthetic set
    summary = {
        **{k: v for k, v in scores.items() if k.startswith("acc@")},
        "chance_acc@1": chance_accuracy(build["n_boxes"], n_positive, 1),
        "chance_acc@10": chance_accuracy(build["n_boxes"], n_positive, 10),
        "n_gallery_images": build["n_images"],
        "n_gallery_items": build["n_items"],
        "n_gallery_boxes": build["n_boxes"],
        "n_query_images": scores["n_query_images"],
        "n_query_items": scores["n_query_items"],
        "n_missed_items": scores.get("n_missed"),
        "index_build": build["build_id"],
        "model_version": build["model_version"],
        "timings": timings,
    }
    step("report", write_report, str(workdir / "report.html"), queries, gallery, results, summary=summary)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    with fsspec.open(str(workdir / "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
