"""Promote a written build to serving, or roll the serving pointer back to the previous build."""

from __future__ import annotations

from prefect import flow

from tasks.index import promote_build, rollback_build


@flow(name="promote")
def promote(index_url: str, build_id: str | None = None, serving_bundle_url: str | None = None) -> str:
    """Serve ``build_id`` (default: the newest build that has not served yet, e.g. a backfill's).

    With ``serving_bundle_url`` (the bundle the nightly refresh reads), its models are installed there first.
    """
    return promote_build(index_url, build_id, serving_bundle_url)


@flow(name="rollback")
def rollback(index_url: str, serving_bundle_url: str | None = None) -> str:
    """Serve the build that served before the current one (and install its models at ``serving_bundle_url``)."""
    return rollback_build(index_url, serving_bundle_url)
