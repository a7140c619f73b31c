"""Tasks of the catalogue refresh and the backfill: plan, embed one segment, commit the catalog, publish.

Only ``embed-segment`` is cached: its key is the task's source and its inputs (the segment's id, URL and
images, and the model version) — never the run id — and its result is persisted, so a re-run after a
crash finds the segments an earlier run finished. Everything else reads the store's state and runs anew.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run

from clothret import refresh
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.plan import RefreshPlan, SegmentPlan
from clothret.refresh import RefreshConfig
from tasks.retry import RETRY_OPTIONS
from tasks.storage import use_s3_block

SEGMENT_CACHE = TASK_SOURCE + (INPUTS - "bundle_url" - "device" - "batch_size" - "s3_block" - "engine")


@task(name="plan-refresh", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def plan_refresh(config: RefreshConfig, activate: bool = True) -> RefreshPlan:
    use_s3_block(config.s3_block)
    plan = refresh.plan(config, activate=activate)
    logger = get_run_logger()
    logger.info(
        "model version %s: %d live segments kept, %d segments to embed (%d images), %s",
        plan.version, len(plan.live), len(plan.new), plan.n_images_to_embed, plan.reasons,
    )
    for seg_id, reason in plan.damaged.items():
        logger.warning("segment %s is damaged (%s): treated as absent, its images are embedded again", seg_id, reason)
    return plan


@task(
    name="embed-segment",
    task_run_name="embed-segment-{segment.segment_id}",
    cache_policy=SEGMENT_CACHE,
    persist_result=True,
    **RETRY_OPTIONS,
)
def embed_segment(
    segment: SegmentPlan, bundle_url: str, version: str, device: str, batch_size: int, s3_block: str | None = None,
    engine: EngineConfig | None = None,
) -> dict:
    use_s3_block(s3_block)
    logger = get_run_logger()
    step = max(1, len(segment.entries) // 10)

    def progress(done: int, total: int) -> None:
        if done % step < batch_size or done == total:
            logger.info("segment %s: %d/%d images", segment.segment_id, done, total)

    counts = refresh.embed_segment(
        segment, bundle_url=bundle_url, version=version, device=device, batch_size=batch_size, engine=engine,
        on_progress=progress, run=flow_run.id or "",
    )
    if counts.get("failed"):
        logger.warning("segment %s: %d images failed: %s", segment.segment_id, len(counts["failed"]), counts["failed"])
    return counts


@task(name="commit-catalog", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def commit_catalog(config: RefreshConfig, plan: RefreshPlan, done: list[str]) -> None:
    use_s3_block(config.s3_block)
    catalog = refresh.commit_catalog(config, plan, done, run=flow_run.id or "")
    get_run_logger().info(
        "catalog generation %d: %d live segments, %d deleted images", catalog.generation, len(catalog.segments),
        len(catalog.deleted),
    )


@task(name="publish-index", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def publish_index(config: RefreshConfig, version: str, activate: bool, counts: dict) -> dict:
    use_s3_block(config.s3_block)
    manifest = refresh.build_and_publish(config, version, activate=activate, extra=counts, run=flow_run.id or "")
    logger = get_run_logger()
    logger.info(
        "%s build %s: %d boxes from %d images, %s index, recall@10 %.3f",
        "published" if manifest["active"] else "wrote (not serving)", manifest["build_id"], manifest["n_boxes"],
        manifest["n_images"], manifest.get("index_kind"), manifest["recall_at_10"],
    )
    if manifest.get("not_serving"):
        logger.warning("build %s does not serve: %s", manifest["build_id"], manifest["not_serving"])
    return manifest
