"""The steps of a catalogue refresh as plain functions; ``tasks/`` wraps each in a Prefect task."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from clothret.datasets.catalogue import read_manifest
from clothret.index.rebuild import rebuild_and_publish
from clothret.models import cached_models, load_bundle
from clothret.pipeline.plan import SegmentPlan, plan_segments
from clothret.pipeline.segment import run_segment
from clothret.store.feature_store import is_committed, write_segment

logger = logging.getLogger(__name__)


class RefreshConfig(BaseModel):
    """Where the catalogue, models, feature store and index live, and how to cut the work."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    manifest_url: str = Field(description="JSON Lines manifest of the gallery images")
    bundle_url: str = Field(description="model bundle file (YAML/JSON)")
    store_url: str = Field(description="feature store root (local path or s3://...)")
    index_url: str = Field(description="index root (local path or s3://...)")
    segment_size: int = Field(1000, ge=1, description="images per segment (one task each)")
    batch_size: int = Field(16, ge=1, description="images per detector/embedder batch")
    device: str = Field("cpu", description="torch device for the models")


def plan(config: RefreshConfig) -> tuple[str, list[SegmentPlan]]:
    """The model version and the segments of the manifest (committed ones flagged)."""
    version = load_bundle(config.bundle_url).version()
    entries = read_manifest(config.manifest_url)
    if not entries:
        raise ValueError(f"manifest {config.manifest_url} lists no images")
    plans = plan_segments(entries, version=version, store_url=config.store_url, segment_size=config.segment_size)
    return version, plans


def embed_segment(
    segment: SegmentPlan, config: RefreshConfig, version: str, on_progress: Callable[[int, int], None] | None = None
) -> dict:
    """Compute and commit one segment unless it is committed already; returns its counts."""
    if is_committed(segment.url):
        logger.info("segment %s is committed: reused", segment.segment_id)
        return {"segment_id": segment.segment_id, "reused": True, "images": len(segment.entries)}
    models = cached_models(config.bundle_url, version, config.device)
    result = run_segment(segment.entries, models, batch_size=config.batch_size, on_progress=on_progress)
    counts = write_segment(segment.url, result)
    failed = {e.image_id: f"{s}: {r}" for e, s, r in zip(segment.entries, result.status, result.reasons) if s != "ok"}
    return {"segment_id": segment.segment_id, "reused": False, **counts, "failed": failed}


def publish_index(config: RefreshConfig, version: str, segment_ids: list[str], counts: list[dict]) -> dict:
    """Build and publish the index over the live segments; the manifest records the refresh counts."""
    totals = {
        "segments_computed": sum(not c.get("reused") for c in counts),
        "segments_reused": sum(bool(c.get("reused")) for c in counts),
        "images_failed": sum(c.get("images_failed", 0) for c in counts),
    }
    return rebuild_and_publish(
        store_url=config.store_url, version=version, segment_ids=segment_ids, index_root=config.index_url, extra=totals
    )
