"""The steps of a catalogue refresh (and of a backfill) as plain functions; ``tasks/`` wraps each in a
Prefect task and ``flows/`` only sequences them.

    plan → embed each new segment → commit the catalog → build, validate, publish the index
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clothret.datasets.catalogue import read_manifest
from clothret.devices import resolve_device
from clothret.errors import PublishRefused, SegmentDamaged, StoreChanged
from clothret.evaluation.split import evaluate_split
from clothret.index.config import IndexConfig
from clothret.index.gallery import gather_gallery
from clothret.index.publish import current_build, publish_build, read_build_manifest, read_pointer_state
from clothret.index.rebuild import build_validated
from clothret.index.search import SearchIndex
from clothret.index.streamed import build_for_catalog
from clothret.models import cached_models, load_bundle
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.plan import RefreshPlan, SegmentPlan, plan_refresh
from clothret.pipeline.segment import run_segment
from clothret.rerank.config import PostProcessConfig
from clothret.rerank.gallery import postprocess_build
from clothret.rerank.search import with_postprocessing
from clothret.store.catalog import Catalog, read_catalog, swap_catalog
from clothret.store.feature_store import check_segment, commit_segment, is_committed

logger = logging.getLogger(__name__)

_CATALOG_TRIES = 5


class RefreshConfig(BaseModel):
    """Where the catalogue, models, feature store and index live, how to cut the work, how to check it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    manifest_url: str = Field(description="JSON Lines manifest of the gallery images")
    bundle_url: str = Field(description="model bundle file (YAML/JSON)")
    store_url: str = Field(description="feature store root (local path or s3://...)")
    index_url: str = Field(description="index root (local path or s3://...)")
    segment_size: int = Field(1000, ge=1, description="images per segment (one task each)")
    batch_size: int = Field(16, ge=1, description="images per detector/embedder batch")
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="how each segment runs: batches in flight, precision, GPU decoding, compilation",
    )
    device: str = Field("auto", description="torch device for the models: auto (cuda when present), cpu, cuda")
    retry_failed: bool = Field(False, description="re-run only the images whose last attempt failed")
    index: IndexConfig = Field(default_factory=IndexConfig, description="index type and validation thresholds")
    eval_split_url: str | None = Field(
        None, description="a split in the DeepFashion2 layout whose street images evaluate each build (Acc@k gate)"
    )
    max_acc_drop: float = Field(0.02, ge=0, le=1, description="largest Acc@10 drop against the serving build")
    postprocess: PostProcessConfig = Field(
        default_factory=PostProcessConfig,
        description="stored with each build: whitening/DBA in its vectors, query expansion/re-ranking as its search defaults",
    )
    s3_block: str | None = Field(
        None, description="name of a Prefect Secret block holding s3fs options as JSON (default: AWS_* environment)"
    )


def serving_version(index_url: str) -> str | None:
    """The model version of the build the index serves, or ``None`` when nothing serves yet."""
    serving = current_build(index_url)
    return None if serving is None else read_build_manifest(index_url, serving).get("model_version")


def check_serving_version(index_url: str, version: str) -> None:
    """Refuse to publish-and-serve a build of another model version than the serving one."""
    current = serving_version(index_url)
    if current is not None and current != version:
        raise ValueError(
            f"index {index_url} serves model version {current} (build {current_build(index_url)}) but this "
            f"refresh uses version {version}: run the backfill flow with the new bundle and promote its build, or "
            f"refresh with the serving bundle"
        )


def plan(config: RefreshConfig, *, activate: bool = True) -> RefreshPlan:
    """What to embed for the bundle's model version; ``activate`` checks the serving version first."""
    version = load_bundle(config.bundle_url).version()
    if activate:
        check_serving_version(config.index_url, version)
    entries = read_manifest(config.manifest_url)
    if not entries:
        raise ValueError(f"manifest {config.manifest_url} lists no images")
    return plan_refresh(
        entries, version=version, store_url=config.store_url, segment_size=config.segment_size,
        retry_failed=config.retry_failed,
    )


def embed_segment(
    segment: SegmentPlan,
    *,
    bundle_url: str,
    version: str,
    device: str = "auto",
    batch_size: int = 16,
    engine: EngineConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    run: str = "",
) -> dict:
    """Compute and commit one segment unless it is committed already; returns its counts.

    ``computed`` is False when the segment was committed before, or by another writer while this one
    computed it (this writer's copy is then discarded and the winner's used).
    """
    base = {"segment_id": segment.segment_id, "images": len(segment.entries)}
    if is_committed(segment.url):
        problem = check_segment(segment.url)
        if problem is not None:
            raise SegmentDamaged(
                f"segment {segment.segment_id} ({segment.url}) is committed but damaged: {problem}; re-run the "
                f"refresh: its plan gives these images a new segment id"
            )
        logger.info("segment %s is committed already: reused", segment.segment_id)
        return {**base, "computed": False}
    models = cached_models(bundle_url, version, str(resolve_device(device)))
    result = run_segment(
        segment.entries, models, batch_size=batch_size, engine=engine or EngineConfig(), on_progress=on_progress
    )
    commit = commit_segment(segment.url, result, run=run, info={"bundle_url": bundle_url})
    if not commit.won:
        return {**base, **commit.counts, "computed": False}
    failed = {
        e.image_id: f"{status}: {reason}"
        for e, status, reason in zip(segment.entries, result.status, result.reasons)
        if status != "ok"
    }
    return {**base, **commit.counts, "computed": True, "failed": failed}


def _all_committed(segments: Iterable[SegmentPlan]) -> bool:
    return all(is_committed(s.url) and check_segment(s.url) is None for s in segments)


def commit_catalog(config: RefreshConfig, refresh_plan: RefreshPlan, done: Iterable[str], *, run: str = "") -> Catalog:
    """Make the kept and the finished new segments the live ones, by compare-and-swap against the catalog
    the plan was made from; unchanged catalogs are not rewritten.

    When another run changed the catalog since, the manifest is planned again against the new catalog:
    if every segment that plan needs is committed (the other run did the same work), that plan is
    committed; otherwise :class:`~clothret.errors.StoreChanged` says what happened.
    """
    done, current_plan = set(done), refresh_plan
    for _ in range(_CATALOG_TRIES):
        current = read_catalog(config.store_url, current_plan.version)
        if current.token != current_plan.catalog_token:
            replan = plan_refresh(
                read_manifest(config.manifest_url), version=current_plan.version, store_url=config.store_url,
                segment_size=config.segment_size, retry_failed=config.retry_failed, catalog=current,
            )
            if not _all_committed(replan.new):
                missing = sum(s.segment_id not in replan.committed for s in replan.new)
                raise StoreChanged(
                    f"the store changed under this run: the catalog of version {current_plan.version} in "
                    f"{config.store_url} is at {current.provenance()}, this run planned from generation "
                    f"{refresh_plan.catalog_generation}, and {missing} segment(s) it would now need are not "
                    f"committed; re-run the refresh"
                )
            logger.info(
                "catalog of %s changed under this run (now %s, planned from generation %d): planned again, "
                "every segment needed is committed", current_plan.version, current.provenance(),
                refresh_plan.catalog_generation,
            )
            current_plan, done = replan, {s.segment_id for s in replan.new}
        segments = [s.segment_id for s in current_plan.live]
        segments += [s.segment_id for s in current_plan.new if s.segment_id in done]
        if list(current.segments) == segments and current.deleted == current_plan.deleted:
            return current
        written = swap_catalog(config.store_url, current, segments, current_plan.deleted, run=run)
        if written is not None:
            return written
    raise StoreChanged(
        f"the store changed under this run: the catalog of version {refresh_plan.version} in {config.store_url} "
        f"changed {_CATALOG_TRIES} times while this run tried to commit; re-run the refresh"
    )


def refresh_counts(refresh_plan: RefreshPlan, segment_counts: Sequence[dict]) -> dict:
    """The run's figures: images, boxes, skipped images by reason, segments computed vs reused."""
    computed = [c for c in segment_counts if c.get("computed")]
    skipped = Counter(reason.split(":", 1)[0] for c in computed for reason in c.get("failed", {}).values())
    return {
        "segments_live_kept": len(refresh_plan.live),
        "segments_computed": len(computed),
        "segments_reused": len(refresh_plan.live) + len(segment_counts) - len(computed),
        "images_embedded": sum(c.get("images_ok", 0) for c in computed),
        "images_failed": sum(c.get("images_failed", 0) for c in computed),
        "images_failed_by_kind": dict(skipped),
        "boxes_new": sum(c.get("boxes", 0) for c in computed),
        "plan": dict(refresh_plan.reasons),
    }


def _acc_gate(config: RefreshConfig, scores: dict) -> dict:
    """Compare a build's Acc@10 with the serving build's on the same split; raise when it fell too far."""
    figures = {"acc@1": scores["acc@1"], "acc@10": scores["acc@10"], "eval_split": config.eval_split_url}
    serving = current_build(config.index_url)
    if serving is None:
        return figures
    previous = read_build_manifest(config.index_url, serving)
    if previous.get("eval_split") != config.eval_split_url or "acc@10" not in previous:
        logger.info("serving build %s has no Acc@10 on %s: nothing to compare with", serving, config.eval_split_url)
        return figures
    figures["serving_acc@10"] = previous["acc@10"]
    if scores["acc@10"] < previous["acc@10"] - config.max_acc_drop:
        raise PublishRefused(
            f"publish refused: Acc@10 {scores['acc@10']:.4f} on {config.eval_split_url} is more than "
            f"{config.max_acc_drop} below the serving build {serving}'s {previous['acc@10']:.4f}"
        )
    return figures


def build_and_publish(
    config: RefreshConfig, version: str, *, activate: bool = True, extra: dict | None = None, run: str = ""
) -> dict:
    """Build the index over the catalog's live entries, validate it, publish it; returns its manifest.

    The manifest records the catalog generation it was built from; ``active`` says whether it serves and
    ``not_serving`` why not, when another run swapped in a build at least as new meanwhile.
    """
    since = read_pointer_state(config.index_url)  # before building: a swap by another run meanwhile is seen
    catalog = read_catalog(config.store_url, version)
    if not catalog.segments:
        raise ValueError(f"the catalog of version {version} in {config.store_url} has no live segments to index")
    streamed = build_for_catalog(  # a large gallery: segment by segment, updating the serving build if it can
        config.store_url, version, catalog.segments, catalog.deleted, config.index, config.index_url,
        in_memory=config.postprocess.changes_gallery,
    )
    gallery = streamed.gallery if streamed else gather_gallery(
        config.store_url, version, catalog.segments, deleted_image_ids=catalog.deleted
    )
    gallery, finish_index, postprocess = postprocess_build(gallery, config.postprocess)
    index, figures = (streamed.index, streamed.figures) if streamed else build_validated(gallery, config.index)
    index = finish_index(index)  # a whitened build whitens each query itself

    bundle = load_bundle(config.bundle_url)
    if bundle.version() != version:
        raise ValueError(
            f"the bundle {config.bundle_url} changed during this run: it is model version {bundle.version()} now, "
            f"the features were computed with {version}; re-run with a bundle that does not change under it"
        )
    manifest = {
        "model_version": version,
        "bundle_url": config.bundle_url,  # information only: the version does not depend on where files lie
        "bundle": bundle.model_dump(mode="json"),
        "catalog_generation": catalog.generation,
        "segments": list(catalog.segments),
        "n_images": figures.get("n_images") or int(len(np.unique(gallery.image_ids))),  # a streamed build counted them
        "n_items": figures.get("n_items") or int(len(np.unique(gallery.item_ids))),
        "n_boxes": int(len(gallery)),
        **figures,
        **postprocess,
        **(extra or {}),
    }
    if config.eval_split_url:
        models = cached_models(config.bundle_url, version, str(resolve_device(config.device)))
        searched = with_postprocessing(SearchIndex(index, gallery, manifest), config.postprocess)
        run_eval = evaluate_split(config.eval_split_url, models, searched, engine=config.engine)
        manifest.update(_acc_gate(config, run_eval.scores))
    published = publish_build(config.index_url, index, gallery, manifest, activate=activate, since=since, run=run,
                              files=streamed.files if streamed else None)
    out = {**manifest, "build_id": published.build_id, "active": published.active}
    if published.note:
        out["not_serving"] = published.note
    return out
