"""Promote a written build to serving, or roll the serving pointer back to the previous build."""

from __future__ import annotations

from prefect import flow

from tasks.index import promote_build, rollback_build


@flow(name="promote")
def promote(index_url: str, build_id: str | None = None) -> str:
    """Serve ``build_id`` (default: the newest build that has not served yet, e.g. a backfill's)."""
    return promote_build(index_url, build_id)


@flow(name="rollback")
def rollback(index_url: str) -> str:
    """Serve the build that served before the current one."""
    return rollback_build(index_url)
