"""``clothret experiment``: one run on a DeepFashion2-layout data set (synthetic by default) that reproduces
the shape of the paper's tables side by side.

- Tables 2 and 5: detection AP/AP50 per detector and of the weighted boxes fusion of the first 1..n;
- Table 3: GT-box Acc@1/Acc@10 per embedder configuration (:mod:`clothret.experiments.embedders`);
- Table 6: detection-aware Acc@1/Acc@10 of model A, model B and their concatenation;
- Table 7: each post-processing option on and off on the concatenation, and the gallery's box count
  (best boxes per shop image) with and without k-reciprocal re-ranking; plus one option the paper does not
  have: one entry per gallery image in the ranked list.

Every stage is a plain function (the ``experiment`` flow runs each as a task); :func:`run_experiment` runs
them all and writes ``experiment.json`` and ``report.html`` into the work folder. A run is deterministic
for a seed and a thread count (timings aside); trained models and the synthetic data are reused when a
re-run asks for the same ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import fsspec
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from clothret.datasets.deepfashion2 import read_split
from clothret.datasets.records import ImageRecord
from clothret.datasets.synthetic import DEFAULT_SPLITS, SyntheticSizes
from clothret.detection.fusion import FusionConfig
from clothret.detection.torchvision_backend import TorchvisionDetector
from clothret.detection.training import DetectorTrainConfig, load_image
from clothret.detection.types import Detections
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.model import Embedder
from clothret.embedding.training import EmbedderTrainConfig
from clothret.experiments.detectors import (
    ARCHITECTURES,
    detection_scores,
    fusion_of_first_n,
    model_config,
    run_detectors,
    train_or_reuse,
)
from clothret.experiments.embedders import EmbedderComparison, compare_embedders, paper_variants
from clothret.experiments.retrieval import PLOT_KS, RetrievalRun, embed_boxes, make_gallery, search_gallery
from clothret.rerank.config import PostProcessConfig
from clothret.rerank.whitening import whitening_rank

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentSize:
    """How much data and training one size of the experiment uses."""

    splits: dict[str, SyntheticSizes]
    detector_model: dict
    detector_train: dict
    embedder_model: dict
    embedder_train: dict
    architectures: tuple[str, ...]


SIZES: dict[str, ExperimentSize] = {
    # seconds: checks that every stage runs (the test suite uses it)
    "tiny": ExperimentSize(
        {"train": SyntheticSizes(n_pairs=8, street_per_pair=2), "validation": SyntheticSizes(n_pairs=6, street_per_pair=1)},
        {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 64, "max_size": 96},
        {"steps": 4, "batch_size": 2, "warmup_steps": 1},
        {"input_size": 32},
        {"steps": 3, "p_identities": 4, "warmup_steps": 1},
        ("fcos", "retinanet"),
    ),
    # minutes on 2 cores
    "quick": ExperimentSize(
        {"train": SyntheticSizes(n_pairs=120, street_per_pair=3), "validation": SyntheticSizes(n_pairs=50, street_per_pair=2)},
        {"backbone": "mobilenet_v3_small", "class_ce_weight": 1.0, "min_size": 192, "max_size": 320},
        {"steps": 300, "batch_size": 8},
        {},
        {"steps": 300},
        ("fcos", "retinanet"),
    ),
    # the demo's data and training settings (about an hour on 2 cores)
    "full": ExperimentSize(
        DEFAULT_SPLITS,
        {"backbone": "mobilenet_v3_small", "class_ce_weight": 1.0, "min_size": 192, "max_size": 320},
        {"steps": 800, "batch_size": 16},
        {},
        {"steps": 1000},
        ARCHITECTURES,
    ),
}

RETRIEVAL_FUSION = FusionConfig(iou_thr=0.55, score_prefilter=0.1, max_boxes_per_image=10, conf_type="max")
"""The demo's fusion: the boxes the gallery and the queries are made of."""


class ExperimentConfig(BaseModel):
    """One experiment run: which data, how large, where its work folder is."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    out_dir: str = Field(description="local work folder: data, models, experiment.json, report.html")
    data_url: str | None = Field(
        None, description="a DeepFashion2-layout root with train/ and validation/; default: a synthetic one in out_dir/data"
    )
    size: Literal["tiny", "quick", "full"] = Field("quick", description="data and training size")
    seed: int = Field(0, description="data and training seed")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    architectures: tuple[str, ...] | None = Field(None, description="detectors, in fusion order (default: by size)")
    detector_steps: int | None = Field(None, ge=1, description="training steps per detector (default: by size)")
    embedder_steps: int | None = Field(None, ge=1, description="training steps per embedder (default: by size)")
    fusion: FusionConfig = Field(RETRIEVAL_FUSION, description="fusion of the boxes that retrieval uses")
    n_samples: int = Field(12, ge=0, description="query items shown with their top-10 in the report")
    device: str = Field("cpu", description="torch device of the detectors: cpu, cuda, auto")

    @field_validator("architectures")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            bad = [a for a in value if a not in ARCHITECTURES]
            if bad or not value:
                raise ValueError(f"architectures must be a non-empty list of {list(ARCHITECTURES)}, got {list(value)}")
        return value

    @property
    def recipe(self) -> ExperimentSize:
        return SIZES[self.size]


# ---------------------------------------------------------------------------------------------- data


@dataclass
class ExperimentData:
    """The train and validation splits (records), and the validation images decoded once."""

    train_url: str
    validation_url: str
    train: list[ImageRecord]
    validation: list[ImageRecord]
    images: list[np.ndarray] = field(repr=False)

    def summary(self) -> dict:
        val = self.validation
        return {
            "train_url": self.train_url,
            "validation_url": self.validation_url,
            "train_images": len(self.train),
            "validation_images": len(val),
            "shop_images": sum(r.source == "shop" for r in val),
            "street_images": sum(r.source == "user" for r in val),
            "query_items": sum(k is not None for r in val if r.source == "user" for k in r.match_keys()),
        }


def prepare_data(config: ExperimentConfig) -> ExperimentData:
    """The data set: ``config.data_url``'s ``train/`` and ``validation/``, or a synthetic one (reused)."""
    if config.data_url:
        base = config.data_url.rstrip("/")
        train_url, val_url = f"{base}/train", f"{base}/validation"
    else:
        from clothret.demo import synthesize

        root = synthesize(Path(config.out_dir), seed=config.seed, splits=config.recipe.splits)
        train_url, val_url = str(root / "train"), str(root / "validation")
    train, val = read_split(train_url), read_split(val_url)
    if not train or not val:
        raise ValueError(f"the experiment needs annotated images in {train_url} and {val_url}; found {len(train)} and {len(val)}")
    logger.info("experiment data: %d train and %d validation images", len(train), len(val))
    return ExperimentData(train_url, val_url, train, val, [load_image(r.path) for r in val])


# ---------------------------------------------------------------------------------------------- detection


@dataclass
class DetectorStage:
    """Tables 2 and 5, and the validation images' detections fused for retrieval."""

    detectors: list[dict]
    fusion: list[dict]
    fused: list[Detections] = field(repr=False)
    retrieval_detection: dict


def detector_stage(config: ExperimentConfig, data: ExperimentData, *, progress: bool = False) -> DetectorStage:
    """Train (or reuse) each detector, score it and the fusion of the first 1..n on the validation split."""
    recipe = config.recipe
    train = dict(recipe.detector_train)
    if config.detector_steps:
        train["steps"] = config.detector_steps
    train_config = DetectorTrainConfig(**train, seed=config.seed, num_threads=config.threads, checkpoint_every=0,
                                       device=config.device)
    models_dir = Path(config.out_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    loaded, rows = {}, []
    for arch in config.architectures or recipe.architectures:
        model = model_config(arch, recipe.detector_model)
        label = f"{arch}-{model.backbone}"
        url = str(models_dir / f"detector-{arch}.safetensors")
        seconds = train_or_reuse(data.train, model, train_config, url, progress=progress)
        loaded[label] = TorchvisionDetector.from_weights(url, name=label, device=config.device)
        rows.append({"detector": label, "train_seconds": round(seconds, 1)})
    outputs, infer_ms = run_detectors(loaded, data.images)
    for row in rows:
        row.update(detection_scores(data.validation, outputs[row["detector"]]), infer_ms_per_image=infer_ms[row["detector"]])
    sizes = [(img.shape[1], img.shape[0]) for img in data.images]
    weights = [1.0] * len(outputs)
    ap_fusion = config.fusion.model_copy(update={"max_boxes_per_image": 100})
    fusion_rows, _ = fusion_of_first_n(data.validation, outputs, sizes, weights, ap_fusion)
    _, fused = fusion_of_first_n(data.validation, outputs, sizes, weights, config.fusion)
    retrieval_detection = detection_scores(data.validation, fused)
    return DetectorStage(rows, fusion_rows, fused, retrieval_detection)


# ---------------------------------------------------------------------------------------------- embedders


def embedder_stage(config: ExperimentConfig, data: ExperimentData, *, progress: bool = False) -> EmbedderComparison:
    """Train (or reuse) every embedder configuration; GT-box Acc@1/Acc@10 of each and of the ensemble."""
    recipe = config.recipe
    train = {**recipe.embedder_train, "seed": config.seed, "num_threads": config.threads}
    if config.embedder_steps:
        train["steps"] = config.embedder_steps
    return compare_embedders(
        data.train, data.validation, Path(config.out_dir) / "models",
        base_model=EmbedderConfig(**recipe.embedder_model), base_train=EmbedderTrainConfig(**train), progress=progress,
    )


# ---------------------------------------------------------------------------------------------- retrieval

MODEL_A, MODEL_B = "cgd-gm", "r18d-cgd-gm"
ONE_VS_CONCAT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("A: ResNet-10-T CGD", (MODEL_A,)),
    ("B: ResNet-18-D CGD", (MODEL_B,)),
    ("A + B concatenated", (MODEL_A, MODEL_B)),
)
BOX_CAPS: tuple[int | None, ...] = (None, 5, 3, 1)
"""Best boxes kept per shop image for the box-count rows (None: every fused box)."""


def postprocess_options(reduced_dim: int) -> list[tuple[str, PostProcessConfig]]:
    """Table 7's rows: each option alone, the combination, and per-image de-duplication."""
    rerank = {"rerank": True, "k1": 20, "k2": 6, "lambda_value": 0.3}
    return [
        ("none", PostProcessConfig()),
        ("PCA whitening", PostProcessConfig(whiten=True)),
        (f"PCA whitening to {reduced_dim} dims", PostProcessConfig(whiten=True, whiten_dim=reduced_dim)),
        ("PCA whitening, shrinkage 1", PostProcessConfig(whiten=True, whiten_shrinkage=1.0)),
        ("αQE (k=2, α=3)", PostProcessConfig(qe_k=2, qe_alpha=3.0)),
        ("DBA (k=2, α=3)", PostProcessConfig(dba_k=2, dba_alpha=3.0)),
        ("k-reciprocal (k1=20, k2=6, λ=0.3)", PostProcessConfig(**rerank)),
        ("DBA + αQE", PostProcessConfig(dba_k=2, qe_k=2)),
        ("whitening + DBA + αQE + k-reciprocal", PostProcessConfig(whiten=True, dba_k=2, qe_k=2, **rerank)),
        ("one box per gallery image (not in the paper)", PostProcessConfig(dedupe="image")),
        ("k-reciprocal + one box per gallery image", PostProcessConfig(dedupe="image", **rerank)),
    ]


@dataclass
class RetrievalStage:
    """Tables 6 and 7 and the box-count rows, with every run (for the plot and the thumbnails)."""

    one_vs_concat: list[dict]
    postprocess: list[dict]
    box_count: list[dict]
    runs: dict[str, RetrievalRun] = field(repr=False)


def _row(run: RetrievalRun, **extra) -> dict:
    return {
        **extra,
        "acc@1": round(run.scores["acc@1"], 4),
        "acc@10": round(run.scores["acc@10"], 4),
        "acc@20": round(run.scores["acc@20"], 4),
        "gallery_boxes": run.n_gallery_boxes,
        "ms_per_query": run.search_ms_per_query,
        "n_missed": run.scores["n_missed"],
    }


def retrieval_stage(
    config: ExperimentConfig, data: ExperimentData, detection: DetectorStage, embedders: EmbedderComparison
) -> RetrievalStage:
    """Detection-aware Acc@k: one model against the concatenation, post-processing on and off, box counts."""
    torch.set_num_threads(config.threads)
    models = {name: Embedder.from_weights(embedders.weights[name], name=name) for name in (MODEL_A, MODEL_B)}
    boxes = embed_boxes(data.validation, data.images, detection.fused, models)
    shop = [b for b in boxes if b.record.source == "shop"]
    queries = [b for b in boxes if b.record.source == "user"]
    gallery_records = [r for r in data.validation if r.source == "shop"]
    runs: dict[str, RetrievalRun] = {}

    one_vs_concat = []
    for label, names in ONE_VS_CONCAT:
        run = search_gallery(label, queries, gallery_records, make_gallery(shop, names), names)
        runs[label] = run
        one_vs_concat.append(_row(run, configuration=label, embedders=list(names)))

    concat = ONE_VS_CONCAT[-1][1]
    gallery = make_gallery(shop, concat)
    reduced = max(1, whitening_rank(gallery.features) // 2)
    postprocess = []
    for label, options in postprocess_options(reduced):
        if options == PostProcessConfig():  # the concatenation's run of Table 6
            run = runs[ONE_VS_CONCAT[-1][0]]
        else:
            run = runs[f"A + B, {label}"] = search_gallery(f"A + B, {label}", queries, gallery_records, gallery,
                                                           concat, options)
        postprocess.append(_row(run, option=label, settings=options.model_dump(exclude_defaults=True)))

    box_count = []
    for cap in BOX_CAPS:
        capped = make_gallery(shop, concat, max_boxes_per_image=cap)
        for rerank in (False, True):
            options = PostProcessConfig(rerank=rerank)
            run = search_gallery(f"A + B, {cap or 'all'} boxes per image{', k-reciprocal' if rerank else ''}",
                                 queries, gallery_records, capped, concat, options)
            box_count.append(_row(run, max_boxes_per_image=cap if cap is not None else "all", rerank=rerank))
    return RetrievalStage(one_vs_concat, postprocess, box_count, runs)


# ---------------------------------------------------------------------------------------------- outputs


def summarise(
    config: ExperimentConfig, data: ExperimentData, detection: DetectorStage, embedders: EmbedderComparison,
    retrieval: RetrievalStage, seconds: dict[str, float],
) -> dict:
    """The content of ``experiment.json``: settings, data figures, every table, the Acc@k curves."""
    variants, _ = paper_variants()
    gt_rows = [
        {"configuration": name, "what": embedders.what[name], "acc@1": round(row["acc@1"], 4),
         "acc@10": round(row["acc@10"], 4), "train_seconds": embedders.training.get(name, {}).get("seconds")}
        for name, row in embedders.table.items()
    ]
    curves = {name: [round(run.scores[f"acc@{k}"], 4) for k in PLOT_KS] for name, run in retrieval.runs.items()}
    ranked = sorted(retrieval.runs, key=lambda n: (retrieval.runs[n].scores["acc@10"], retrieval.runs[n].scores["acc@1"]))
    any_gt = next(iter(embedders.table.values()))
    return {
        "config": config.model_dump(mode="json"),
        "data": {**data.summary(), "gt_queries": any_gt["num_queries"], "gt_gallery": any_gt["num_gallery"],
                 "gt_chance@1": round(any_gt["chance@1"], 4), "gt_chance@10": round(any_gt["chance@10"], 4)},
        "tables": {
            "detection": detection.detectors,
            "fusion": detection.fusion,
            "retrieval_boxes": detection.retrieval_detection,
            "embedders_gt": gt_rows,
            "one_vs_concat": retrieval.one_vs_concat,
            "postprocess": retrieval.postprocess,
            "box_count": retrieval.box_count,
        },
        "curves": {"ks": list(PLOT_KS), "acc": curves},
        "best": ranked[-1],
        "worst": ranked[0],
        "embedder_variants": [v.name for v in variants],
        "seconds": seconds,
    }


def run_experiment(config: ExperimentConfig, *, progress: bool = False) -> dict:
    """Every stage, then ``experiment.json`` and ``report.html`` in ``config.out_dir``; returns the summary."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        logger.info("experiment stage %s done in %.1f s", name, seconds[name])
        return out

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        data = timed("data", prepare_data, config)
        detection = timed("detectors", detector_stage, config, data, progress=progress)
        embedders = timed("embedders", embedder_stage, config, data, progress=progress)
        retrieval = timed("retrieval", retrieval_stage, config, data, detection, embedders)
        seconds["total_before_report"] = round(time.perf_counter() - started, 1)
        summary = summarise(config, data, detection, embedders, retrieval, seconds)
        write_outputs(config, summary, data, retrieval)
        return summary
    finally:
        torch.set_num_threads(previous_threads)


def write_outputs(config: ExperimentConfig, summary: dict, data: ExperimentData, retrieval: RetrievalStage) -> dict:
    """Write ``experiment.json`` and ``report.html`` into the work folder; returns their paths."""
    from clothret.experiments.html import write_experiment_report

    out = config.out_dir.rstrip("/")
    paths = {"json": f"{out}/experiment.json", "report": f"{out}/report.html"}
    with fsspec.open(paths["json"], "w") as f:
        json.dump(summary, f, indent=2)
    write_experiment_report(paths["report"], summary, data, retrieval, n_samples=config.n_samples, seed=config.seed)
    logger.info("experiment written to %s and %s", paths["json"], paths["report"])
    return paths


__all__ = [
    "SIZES",
    "DetectorStage",
    "ExperimentConfig",
    "ExperimentData",
    "RetrievalStage",
    "detector_stage",
    "embedder_stage",
    "postprocess_options",
    "prepare_data",
    "retrieval_stage",
    "run_experiment",
    "summarise",
    "write_outputs",
]
