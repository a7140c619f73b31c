"""The deployments' cycle on a local S3 endpoint, through the real flows: nightly refresh from
``models/current/``, backfill from ``models/next/``, promote (which installs the promoted build's models as
current), nightly refresh again — no refusal, nothing recomputed; and the same with a real new model version,
then a rollback."""

from __future__ import annotations

import time

import fsspec
import pytest
import yaml

from clothret.datasets.catalogue import ManifestEntry, read_manifest, write_manifest
from clothret.demo import build_catalogue
from clothret.index.publish import current_build
from clothret.index.search import SearchIndex
from clothret.models import load_bundle
from clothret.refresh import RefreshConfig
from clothret.store.feature_store import read_marker, segment_url

pytestmark = pytest.mark.slow


def _upload_models(models_dir, url: str) -> str:
    fs, dest = fsspec.core.url_to_fs(url)
    for path in sorted(models_dir.iterdir()):
        if path.suffix in (".yaml", ".safetensors", ".json"):
            fs.put_file(str(path), f"{dest}/{path.name}")
    return f"{url}/bundle.yaml"


@pytest.fixture
def bucket_catalogue(tiny_workdir, s3_endpoint, tmp_path):
    """A bucket holding the tiny shop images and their manifest, and the tiny models under models/current/."""
    fs = fsspec.filesystem("s3")
    bucket = f"cycle-{int(time.time() * 1000)}"
    fs.mkdir(bucket)
    local = str(tmp_path / "manifest.jsonl")
    build_catalogue(str(tiny_workdir / "data" / "validation"), local)
    entries = []
    for e in read_manifest(local):
        uri = f"s3://{bucket}/images/{e.image_id}.jpg"
        fs.put_file(e.uri, uri)
        entries.append(ManifestEntry(e.image_id, uri, e.sha256, e.item_id))
    write_manifest(entries, f"s3://{bucket}/manifest.jsonl")
    current = _upload_models(tiny_workdir / "models", f"s3://{bucket}/models/current")
    return f"s3://{bucket}", current


def _config(root: str, bundle_url: str) -> RefreshConfig:
    return RefreshConfig(manifest_url=f"{root}/manifest.jsonl", bundle_url=bundle_url, store_url=f"{root}/store",
                         index_url=f"{root}/index", segment_size=4)


def test_refresh_backfill_promote_refresh_with_bundles_under_other_urls(
    prefect_server, tiny_workdir, bucket_catalogue
):
    from flows.backfill import backfill
    from flows.catalogue_refresh import catalogue_refresh
    from flows.promote import promote, rollback

    root, current = bucket_catalogue
    nightly = _config(root, current)
    first = catalogue_refresh(nightly)
    assert first["segments_computed"] > 0 and first["bundle_url"] == current
    # the store records which bundle URL produced a segment, as information only
    marker = read_marker(segment_url(nightly.store_url, first["model_version"], first["segments"][0]))
    assert marker["info"] == {"bundle_url": current}

    # the same models copied under next/: the same version, so the backfill has nothing to compute
    same = _upload_models(tiny_workdir / "models", f"{root}/models/next")
    copied = backfill(_config(root, same))
    assert copied["model_version"] == first["model_version"]
    assert copied["segments_computed"] == 0 and not copied["active"]
    assert promote(nightly.index_url, copied["build_id"], current) == copied["build_id"]
    again = catalogue_refresh(nightly)  # no refusal, nothing recomputed
    assert again["segments_computed"] == 0 and again["model_version"] == first["model_version"]

    # a real new version under next/: the backfill computes it; promote installs it as current
    raw = yaml.safe_load(fsspec.open(same, "r").open().read())
    raw["fusion"]["iou_thr"] = 0.6
    with fsspec.open(same, "w") as f:
        yaml.safe_dump(raw, f)
    built = backfill(_config(root, same))
    assert built["model_version"] != first["model_version"] and built["segments_computed"] > 0
    assert current_build(nightly.index_url) == again["build_id"]  # the old build serves meanwhile
    promote(nightly.index_url, built["build_id"], current)
    assert load_bundle(current).version() == built["model_version"]

    # rollback serves the previous build and puts its models back as current: the nightly refresh follows
    assert rollback(nightly.index_url, current) == again["build_id"]
    assert load_bundle(current).version() == first["model_version"]
    assert catalogue_refresh(nightly)["segments_computed"] == 0

    # promoted again, the nightly deployment, unchanged, goes on with the new models
    promote(nightly.index_url, built["build_id"], current)
    after = catalogue_refresh(nightly)
    assert after["segments_computed"] == 0 and after["model_version"] == built["model_version"]
    assert SearchIndex.load(nightly.index_url).version == built["model_version"]
