"""Evaluate an index on a split in the DeepFashion2 layout: search its street images, score Acc@k."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from clothret.datasets.deepfashion2 import read_split
from clothret.datasets.records import ImageRecord
from clothret.evaluation.retrieval import retrieval_accuracy
from clothret.index.results import QueryResult
from clothret.evaluation.submission import write_submission
from clothret.index.search import SearchIndex
from clothret.models import LoadedModels, load_bundle, load_models
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.query import search_images
from clothret.rerank.config import PostProcessConfig
from clothret.rerank.search import load_index, search_options

logger = logging.getLogger(__name__)


@dataclass
class SplitEvaluation:
    """Acc@k figures and everything behind them (for submissions and reports)."""

    scores: dict
    queries: list[ImageRecord]
    gallery: list[ImageRecord]
    results: list[QueryResult]
    failures: dict[str, str]


def evaluate_split(split_url: str, models: LoadedModels, index: SearchIndex, *, k: int = 20,
                   engine: EngineConfig | None = None) -> SplitEvaluation:
    """Search every street image of a split in ``index`` (through the segment engine, ``engine`` settings)
    and score the DeepFashion2 Acc@k."""
    records = read_split(split_url)
    queries = [r for r in records if r.source == "user"]
    gallery = [r for r in records if r.source == "shop"]
    if not queries:
        raise ValueError(f"split {split_url} has no street (source 'user') images to evaluate with")
    start = time.perf_counter()
    results, failures = search_images(models, index, [(r.image_id, r.path) for r in queries], k=k, engine=engine)
    seconds = time.perf_counter() - start
    if failures:
        logger.warning("%d query images could not be read: %s", len(failures), failures)
    scores = retrieval_accuracy(queries, gallery, results)
    scores.update({"query_seconds": seconds, "n_query_images": len(queries), "split": split_url})
    return SplitEvaluation(scores, queries, gallery, results, failures)


class EvaluateConfig(BaseModel):
    """Which index build to evaluate, with which models, on which split."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    split_url: str = Field(description="a split in the DeepFashion2 layout (street queries + shop annotations)")
    bundle_url: str = Field(description="the model bundle the build was made with")
    index_url: str = Field(description="index root")
    build_id: str | None = Field(None, description="a build id; default: the serving build")
    out_url: str | None = Field(None, description="folder for submission.json and scores.json (optional)")
    device: str = Field("cpu", description="torch device for the models")
    postprocess: PostProcessConfig | None = Field(
        None, description="post-processing to search with; default: the build's own settings"
    )


def evaluate_build(config: EvaluateConfig) -> dict:
    """Acc@k of one published build on a split, searched with its post-processing settings (or
    ``config.postprocess``); writes the submission and scores when ``out_url`` is set."""
    index = load_index(config.index_url, config.build_id, postprocess=config.postprocess)
    models = load_models(load_bundle(config.bundle_url), device=config.device)
    run = evaluate_split(config.split_url, models, index)
    scores = {**run.scores, "build_id": index.manifest.get("build_id"), "model_version": index.version,
              "postprocess": search_options(index).label()}
    if config.out_url:
        out = config.out_url.rstrip("/")
        write_submission(run.results, f"{out}/submission.json")
        with fsspec.open(f"{out}/scores.json", "w") as f:
            json.dump(scores, f, indent=2, default=str)
    return scores
