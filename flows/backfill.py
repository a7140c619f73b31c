"""Backfill: the whole catalogue under a new model bundle while the serving index stays; then promote."""

from __future__ import annotations

from prefect import flow

from clothret.refresh import RefreshConfig
from flows.catalogue_refresh import refresh_sequence
from flows.cluster import dask_task_runner


@flow(name="backfill", task_runner=dask_task_runner())
def backfill(config: RefreshConfig) -> dict:
    """Embed the catalogue for the bundle's model version and write a build that does not serve yet.

    Run ``promote`` (flow or ``clothret promote``) with the returned build id to serve it.
    """
    return refresh_sequence(config, activate=False, key="backfill")
