"""Nightly catalogue refresh: plan segments → embed each on a Dask worker → build and publish the index."""

from __future__ import annotations

from prefect import flow, unmapped

from clothret.refresh import RefreshConfig
from flows.cluster import dask_task_runner
from tasks.refresh import embed_segment, plan_refresh, publish_index


@flow(name="catalogue-refresh", task_runner=dask_task_runner())
def catalogue_refresh(config: RefreshConfig) -> dict:
    """Embed what the feature store lacks for this model version, then publish a new index build."""
    version, plans = plan_refresh(config)
    futures = embed_segment.map(plans, config=unmapped(config), version=unmapped(version))
    counts = [f.result() for f in futures]
    return publish_index(config, version, [p.segment_id for p in plans], counts)
