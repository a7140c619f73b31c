"""Tasks of the catalogue refresh: plan, embed one segment, publish the index."""

from __future__ import annotations

from prefect import get_run_logger, task

from clothret import refresh
from clothret.pipeline.plan import SegmentPlan
from clothret.refresh import RefreshConfig


@task(name="plan-refresh")
def plan_refresh(config: RefreshConfig) -> tuple[str, list[SegmentPlan]]:
    version, plans = refresh.plan(config)
    get_run_logger().info(
        "model version %s: %d segments, %d already committed", version, len(plans), sum(p.committed for p in plans)
    )
    return version, plans


@task(name="embed-segment", task_run_name="embed-segment-{segment.segment_id}", retries=2, retry_delay_seconds=[5, 30])
def embed_segment(segment: SegmentPlan, config: RefreshConfig, version: str) -> dict:
    logger = get_run_logger()

    def progress(done: int, total: int) -> None:
        logger.info("segment %s: %d/%d images", segment.segment_id, done, total)

    counts = refresh.embed_segment(segment, config, version, on_progress=progress)
    if counts.get("failed"):
        logger.warning("segment %s: %d images failed: %s", segment.segment_id, len(counts["failed"]), counts["failed"])
    return counts


@task(name="publish-index")
def publish_index(config: RefreshConfig, version: str, segment_ids: list[str], counts: list[dict]) -> dict:
    manifest = refresh.publish_index(config, version, segment_ids, counts)
    get_run_logger().info(
        "published build %s: %d boxes from %d images, recall@10 %.3f",
        manifest["build_id"], manifest["n_boxes"], manifest["n_images"], manifest["recall_at_10"],
    )
    return manifest
