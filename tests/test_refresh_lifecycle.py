"""The refresh lifecycle on a local S3 endpoint, through the real flows, a real local Dask cluster and a
real temporary Prefect server: refresh → add → refresh → delete → refresh → backfill → promote → rollback;
and a refresh killed midway, then re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
import yaml

from clothret.datasets.catalogue import ManifestEntry, read_manifest, write_manifest
from clothret.demo import build_catalogue
from clothret.index.publish import current_build, list_builds
from clothret.index.search import SearchIndex
from clothret.refresh import RefreshConfig
from clothret.store.catalog import read_catalog
from clothret.store.feature_store import MARKER, read_segment, segment_url

pytestmark = pytest.mark.slow


def _task_states(flow_state) -> dict[str, str]:
    """``{segment id: state name}`` of the embed-segment task runs of a finished flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read():
        async with get_client() as client:
            flow_run_id = flow_state.state_details.flow_run_id
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    runs = run_coro_as_sync(read())
    prefix = "embed-segment-"
    return {r.name[len(prefix):]: r.state.name for r in runs if r.name.startswith(prefix)}


def _artifacts(flow_state) -> dict[str, object]:
    """``{artifact type: data}`` of the artifacts a finished flow run created."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read():
        async with get_client() as client:
            flow_run_id = flow_state.state_details.flow_run_id
            return await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.type: a.data for a in run_coro_as_sync(read())}


def _run(flow, config):
    """Run a flow; returns its result and the states of its embed-segment tasks."""
    state = flow(config, return_state=True)
    return state.result(), _task_states(state)


@pytest.fixture(scope="module")
def s3_catalogue(tiny_workdir, s3_endpoint, tmp_path_factory):
    """The tiny validation split's shop images copied to a fresh bucket, with their manifest entries."""
    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = f"lifecycle-{int(time.time() * 1000)}"
    fs.mkdir(bucket)
    local = str(tmp_path_factory.mktemp("manifest") / "manifest.jsonl")
    build_catalogue(str(tiny_workdir / "data" / "validation"), local)
    entries = []
    for e in read_manifest(local):
        uri = f"s3://{bucket}/images/{e.image_id}.jpg"
        fs.put_file(e.uri, uri)
        entries.append(ManifestEntry(e.image_id, uri, e.sha256, e.item_id))
    return f"s3://{bucket}", entries


def _config(root: str, bundle_url: str, **overrides) -> RefreshConfig:
    return RefreshConfig(
        manifest_url=f"{root}/manifest.jsonl", bundle_url=bundle_url, store_url=f"{root}/store",
        index_url=f"{root}/index", segment_size=4, **overrides,
    )


def _served_image_ids(index_url: str) -> set[str]:
    return {str(i) for i in SearchIndex.load(index_url).gallery.image_ids}


def _finds_itself(config: RefreshConfig, version: str, image_id: str) -> bool:
    """A stored feature of ``image_id``, searched in the serving index, returns a box of that image first
    (or tied first)."""
    catalog = read_catalog(config.store_url, version)
    index = SearchIndex.load(config.index_url)
    for seg_id in reversed(catalog.segments):
        seg = read_segment(segment_url(config.store_url, version, seg_id))
        rows = [r for r, i in enumerate(seg.box_image) if seg.image_ids[i] == image_id]
        if rows:
            sims, found = index.search(seg.features[rows[:1]].astype(np.float32), 10)
            top = {str(index.gallery.image_ids[r]) for r, s in zip(found[0], sims[0]) if s >= sims[0, 0] - 1e-3}
            return image_id in top
    return False


def test_refresh_add_delete_backfill_promote_rollback_on_s3(prefect_server, tiny_workdir, s3_catalogue):
    from flows.backfill import backfill
    from flows.catalogue_refresh import catalogue_refresh
    from flows.promote import promote, rollback

    root, entries = s3_catalogue
    entries = [e for e in entries]
    bundle = str(tiny_workdir / "models" / "bundle.yaml")
    config = _config(root, bundle)
    fs = fsspec.filesystem("s3")

    # 1. first refresh: every segment computed; progress, counts and summary shown in the UI
    write_manifest(entries[:-2], config.manifest_url)
    state = catalogue_refresh(config, return_state=True)
    first, states = state.result(), _task_states(state)
    artifacts = _artifacts(state)
    assert set(artifacts) == {"progress", "table", "markdown"} and artifacts["progress"] == 100.0
    assert "segments_computed" in str(artifacts["table"]) and first["build_id"] in artifacts["markdown"]
    n_first = -(-(len(entries) - 2) // 4)
    version = first["model_version"]
    assert first["segments_computed"] == n_first and set(states.values()) == {"Completed"} and len(states) == n_first
    catalog = read_catalog(config.store_url, version)
    assert set(catalog.segments) == set(states) and not catalog.deleted
    for seg_id in catalog.segments:  # what landed in the bucket: every segment committed by its marker
        assert fs.exists(f"{segment_url(config.store_url, version, seg_id)}/{MARKER}".removeprefix("s3://"))
    assert current_build(config.index_url) == first["build_id"]

    # 2. two images added: one new segment, the others kept
    write_manifest(entries, config.manifest_url)
    added, states = _run(catalogue_refresh, config)
    assert added["segments_computed"] == 1 and list(states.values()) == ["Completed"]
    catalog = read_catalog(config.store_url, version)
    assert catalog.segments[:-1] == tuple(first["segments"]) and catalog.segments[-1] in states
    served = _served_image_ids(config.index_url)
    new_ids = {e.image_id for e in entries[-2:]}
    assert new_ids <= served | {e.image_id for e in entries}  # (an image with no detection has no boxes)
    with_boxes = [i for i in new_ids if i in served]
    assert all(_finds_itself(config, version, i) for i in with_boxes)

    # 3. one image deleted: nothing computed, it leaves the index
    gone = next(e for e in entries if e.image_id in served)
    write_manifest([e for e in entries if e is not gone], config.manifest_url)
    deleted, states = _run(catalogue_refresh, config)
    assert deleted["segments_computed"] == 0 and states == {}
    assert gone.image_id in read_catalog(config.store_url, version).deleted
    assert gone.image_id not in _served_image_ids(config.index_url)
    serving = deleted["build_id"]

    # 4. backfill under a new bundle: everything computed for the new version, the old build still serves
    raw = yaml.safe_load(open(bundle))
    raw["fusion"]["iou_thr"] = 0.6
    next_bundle = str(tiny_workdir / "models" / "bundle-next.yaml")
    with open(next_bundle, "w") as f:
        yaml.safe_dump(raw, f)
    next_config = _config(root, next_bundle)
    with pytest.raises(ValueError, match="serves model version"):
        catalogue_refresh(next_config)  # a refresh never switches versions behind the users' back
    built, states = _run(backfill, next_config)
    assert built["model_version"] != version and not built["active"]
    assert built["segments_computed"] == len(states) == -(-(len(entries) - 1) // 4)
    assert set(states.values()) == {"Completed"}
    assert current_build(config.index_url) == serving
    assert SearchIndex.load(config.index_url).version == version

    # 5. promote: the backfill's build serves; 6. rollback: the previous one serves again
    assert promote(config.index_url) == built["build_id"]
    assert current_build(config.index_url) == built["build_id"]
    assert SearchIndex.load(config.index_url).version == built["model_version"]
    assert rollback(config.index_url) == serving
    assert SearchIndex.load(config.index_url).version == version
    assert {b["build_id"] for b in list_builds(config.index_url)} >= {first["build_id"], serving, built["build_id"]}


_KILLABLE_RUN = """
import sys
from clothret.refresh import RefreshConfig
from flows.catalogue_refresh import catalogue_refresh
catalogue_refresh(RefreshConfig.model_validate_json(sys.argv[1]))
"""


def _committed(config: RefreshConfig, version: str) -> dict[str, float]:
    """``{segment url: marker mtime}`` of the committed segments under a store."""
    fs, path = fsspec.core.url_to_fs(f"{config.store_url}/{version}/segments")
    if not fs.exists(path):
        return {}
    markers = fs.glob(f"{path}/*/{MARKER}")
    return {m: fs.info(m)["mtime"] for m in markers}


def test_killed_refresh_reruns_only_what_was_not_committed(prefect_server, tiny_workdir, tmp_path):
    from flows.catalogue_refresh import catalogue_refresh

    from clothret.models import load_bundle

    bundle = str(tiny_workdir / "models" / "bundle.yaml")
    version = load_bundle(bundle).version()
    manifest = str(tmp_path / "manifest.jsonl")
    build_catalogue(str(tiny_workdir / "data" / "validation"), manifest)
    config = RefreshConfig(manifest_url=manifest, bundle_url=bundle, store_url=str(tmp_path / "store"),
                           index_url=str(tmp_path / "index"), segment_size=1, batch_size=1)
    n_segments = len(read_manifest(manifest))

    env = {**os.environ, "CLOTHRET_DASK_WORKERS": "1"}  # one segment at a time: a kill lands midway
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN, config.model_dump_json()], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_committed(config, version)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _committed(config, version)
    assert 2 <= len(before) < n_segments, f"the kill should land midway: {len(before)} of {n_segments} committed"
    assert current_build(config.index_url) is None  # nothing was published

    rerun, states = _run(catalogue_refresh, config)
    after = _committed(config, version)
    assert {m: after[m] for m in before} == before  # committed segments were not rewritten
    assert rerun["segments_computed"] == n_segments - len(before)
    killed = {m.rsplit("/", 2)[-2] for m in before}
    assert all(states[s] in ("Cached", "Completed") for s in killed)  # Completed: committed, result not yet saved
    assert any(states[s] == "Cached" for s in killed)  # Prefect's persisted results: no task ran at all

    reference = RefreshConfig(**{**config.model_dump(), "store_url": str(tmp_path / "ref-store"),
                                 "index_url": str(tmp_path / "ref-index")})
    expected = catalogue_refresh(reference)
    got, want = SearchIndex.load(config.index_url), SearchIndex.load(reference.index_url)
    assert rerun["segments"] == expected["segments"] and rerun["n_boxes"] == expected["n_boxes"]
    np.testing.assert_array_equal(got.gallery.image_ids, want.gallery.image_ids)
    # equal up to float rounding: the killed run's single worker used two threads, the others one each
    np.testing.assert_allclose(got.gallery.boxes, want.gallery.boxes, atol=1e-3)
    n = got.index.ntotal
    np.testing.assert_allclose(got.index.reconstruct_n(0, n), want.index.reconstruct_n(0, n), atol=1e-3)
