"""Tasks that move the serving pointer of an index: promote a build, roll back to the previous one.

With a serving bundle URL, each also installs the models of the build that now serves there (see
:mod:`clothret.serving_bundle`), so a refresh reading that URL uses the models that serve.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clothret.index import publish
from clothret.serving_bundle import install_build_models
from tasks.retry import RETRY_OPTIONS


@task(name="promote-build", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def promote_build(index_url: str, build_id: str | None, serving_bundle_url: str | None = None) -> str:
    logger = get_run_logger()
    build_id = build_id or publish.latest_unserved_build(index_url)
    if serving_bundle_url:  # before the swap: a build whose models cannot be installed is not served
        version = install_build_models(index_url, build_id, serving_bundle_url)
        logger.info("%s holds the models of build %s (version %s)", serving_bundle_url, build_id, version)
    publish.promote(index_url, build_id)
    logger.info("index %s now serves build %s", index_url, build_id)
    return build_id


@task(name="rollback-build", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def rollback_build(index_url: str, serving_bundle_url: str | None = None) -> str:
    logger = get_run_logger()
    build_id = publish.rollback(index_url)
    logger.info("index %s rolled back to build %s", index_url, build_id)
    if serving_bundle_url:  # after the swap: a rollback is never held up by the models' files
        try:
            version = install_build_models(index_url, build_id, serving_bundle_url)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"index {index_url} serves build {build_id} again, but its models could not be installed at "
                f"{serving_bundle_url} ({exc}); refreshes reading that bundle will refuse until it holds them"
            ) from exc
        logger.info("%s holds the models of build %s (version %s)", serving_bundle_url, build_id, version)
    return build_id
