"""Nightly catalogue refresh: plan → embed each new segment on a Dask worker → commit the catalog →
build, validate and publish the index, all under the lease of the store's model version."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from clothret.errors import SegmentsFailed
from clothret.models import load_bundle
from clothret.refresh import RefreshConfig, refresh_counts
from clothret.store.lease import hold_lease
from flows.cluster import dask_task_runner, task_resources
from flows.segment_runs import run_segments
from tasks.artifacts import publish_run_artifacts, start_progress, update_progress
from tasks.refresh import commit_catalog, embed_segment, plan_refresh, publish_index
from tasks.storage import use_s3_block


def refresh_sequence(config: RefreshConfig, *, activate: bool, key: str) -> dict:
    """The steps shared by the refresh and the backfill flows, run while this flow run holds the lease of
    the store's model version (a second run at once fails with StoreBusy naming this one)."""
    use_s3_block(config.s3_block)  # the lease is written from this process
    version = load_bundle(config.bundle_url).version()
    with hold_lease(config.store_url, version, holder=flow_run.id or "cli"):
        return _steps(config, activate=activate, key=key)


def _steps(config: RefreshConfig, *, activate: bool, key: str) -> dict:
    plan = plan_refresh(config, activate)
    what = f"{key} {plan.version}"
    progress = start_progress(len(plan.new), what)

    def submit(segment):
        return embed_segment.with_options(refresh_cache=segment.segment_id not in plan.committed).submit(
            segment, config.bundle_url, plan.version, config.device, config.batch_size, config.s3_block,
            engine=config.engine,
        )

    results, errors, cached = [], {}, 0
    runs = run_segments(submit, plan.new, resources=task_resources())  # a lost worker costs only its segment
    for done, (segment, outcome, from_cache) in enumerate(runs, start=1):
        if isinstance(outcome, BaseException):
            errors[segment.segment_id] = f"{type(outcome).__name__}: {outcome}"
        elif from_cache:  # finished by an earlier run: its result says "computed"
            results.append({**outcome, "computed": False})
            cached += 1
        else:
            results.append(outcome)
        update_progress(progress, done, len(plan.new), what)
    commit_catalog(config, plan, [r["segment_id"] for r in results])
    counts = {**refresh_counts(plan, results), "segments_cached": cached, "segments_failed": len(errors)}
    if errors:
        publish_run_artifacts(key, counts, None)
        raise SegmentsFailed(
            f"{len(errors)} of {len(plan.new)} segments failed after retries "
            f"({'; '.join(f'segment {k}: {v}' for k, v in list(errors.items())[:3])}); "
            f"the {len(results)} finished segments are committed and a re-run computes only the rest"
        )
    manifest = publish_index(config, plan.version, activate, counts)
    publish_run_artifacts(key, counts, manifest)
    return manifest


@flow(name="catalogue-refresh", task_runner=dask_task_runner())
def catalogue_refresh(config: RefreshConfig) -> dict:
    """Embed what is new, changed or failed transiently; drop what was deleted; publish and serve a new build."""
    return refresh_sequence(config, activate=True, key="refresh")
