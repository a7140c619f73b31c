"""Tasks that move the serving pointer of an index: promote a build, roll back to the previous one."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clothret.index import publish
from tasks.retry import RETRY_OPTIONS


@task(name="promote-build", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def promote_build(index_url: str, build_id: str | None) -> str:
    build_id = build_id or publish.latest_unserved_build(index_url)
    publish.promote(index_url, build_id)
    get_run_logger().info("index %s now serves build %s", index_url, build_id)
    return build_id


@task(name="rollback-build", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def rollback_build(index_url: str) -> str:
    build_id = publish.rollback(index_url)
    get_run_logger().info("index %s rolled back to build %s", index_url, build_id)
    return build_id
