"""The library's fsspec paths against a real local S3 endpoint (moto's server, see tests/s3_server.py)."""

import dataclasses
import json
import os
import subprocess
import sys

import fsspec
import fsspec.config
import numpy as np
import pytest
from builders import manifest_entries, segment_result

from clothret.datasets.catalogue import read_manifest, write_manifest
from clothret.pipeline.result import SegmentResult
from clothret.storage import configure_s3, storage_options_from_env
from clothret.store.feature_store import MARKER, is_committed, read_segment, segment_id, segment_url, write_segment


def _entries(n, prefix="img"):
    return manifest_entries(n, prefix, root="s3://shop")


_segment = segment_result


def _keys(bucket_url):
    """Every object key in a bucket, straight from the server through boto3 (no fsspec caches)."""
    import boto3

    client = boto3.client("s3")  # endpoint and credentials from the environment
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket_url.removeprefix("s3://"))
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_endpoint_is_local_and_bucket_is_empty(s3_endpoint, s3_bucket):
    assert s3_endpoint.startswith("http://127.0.0.1:")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint
    assert _keys(s3_bucket) == []
    fs, path = fsspec.core.url_to_fs(f"{s3_bucket}/probe.txt")
    fs.pipe_file(path, b"hello")
    assert _keys(s3_bucket) == ["probe.txt"]


def test_manifest_round_trip(s3_bucket):
    entries = _entries(7)
    url = f"{s3_bucket}/catalogue/manifest.jsonl"
    write_manifest(entries, url)
    assert _keys(s3_bucket) == ["catalogue/manifest.jsonl"]
    assert read_manifest(url) == entries


def test_segment_round_trip_and_objects(s3_bucket):
    entries = _entries(5)
    url = segment_url(f"{s3_bucket}/features", "v1", segment_id("v1", entries))
    assert not is_committed(url)
    with pytest.raises(FileNotFoundError, match="not committed"):
        read_segment(url)
    result = _segment(entries)
    assert write_segment(url, result) == result.counts
    assert is_committed(url)
    back = read_segment(url)
    assert back.image_ids == result.image_ids and back.sha256 == result.sha256
    assert back.status == result.status and back.reasons == result.reasons
    assert back.counts == result.counts
    for name in ("box_image", "boxes", "scores", "categories", "features"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.features.dtype == np.float16

    prefix = url.removeprefix(f"{s3_bucket}/") + "/"
    all_keys = _keys(s3_bucket)
    assert all(k.startswith(prefix) for k in all_keys), all_keys
    marker = json.loads(fsspec.open(f"{url}/{MARKER}").open().read())
    assert marker["counts"] == result.counts and sorted(all_keys) == sorted([f"{prefix}{MARKER}", *(
        f"{prefix}attempts/{marker['attempt']}/{k}" for k in marker["files"])])  # the marker lists every object
    keys = [k.removeprefix(f"{prefix}attempts/{marker['attempt']}/") for k in all_keys]
    assert "zarr.json" in keys
    arrays = [f.name for f in dataclasses.fields(SegmentResult) if f.name not in ("seconds", "counts")]
    for name in arrays:
        assert f"{name}/zarr.json" in keys
        assert any(k.startswith(f"{name}/c/") for k in keys), f"no chunk objects for {name}: {keys}"


def test_atomic_write_puts_and_overwrites(s3_bucket):
    from clothret.store.files import atomic_write

    url = f"{s3_bucket}/index/CURRENT"
    atomic_write(url, b'{"build_id": "a"}')
    assert _keys(s3_bucket) == ["index/CURRENT"]
    atomic_write(url, b'{"build_id": "b"}')
    assert _keys(s3_bucket) == ["index/CURRENT"]
    with fsspec.open(url, "rb") as f:
        assert f.read() == b'{"build_id": "b"}'


def test_other_process_sees_endpoint_from_environment_alone(s3_bucket):
    """A fresh interpreter, configured by nothing but inherited environment variables (as a Dask
    worker is), reads and writes the test bucket."""
    fsspec.filesystem("s3").pipe_file(f"{s3_bucket}/from-parent.txt", b"parent")
    code = (
        "import sys, fsspec\n"
        "b = sys.argv[1]\n"
        "assert fsspec.filesystem('s3').dircache.use_listings_cache is False\n"
        "with fsspec.open(b + '/from-parent.txt', 'rb') as f: assert f.read() == b'parent'\n"
        "with fsspec.open(b + '/from-child.txt', 'wb') as f: f.write(b'child')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, s3_bucket], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _keys(s3_bucket) == ["from-child.txt", "from-parent.txt"]


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_either_endpoint_variable_suffices(s3_endpoint, s3_bucket, variable):
    fsspec.filesystem("s3").pipe_file(f"{s3_bucket}/x.txt", b"x")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")}
    code = "import sys, fsspec; print(fsspec.filesystem('s3').ls(sys.argv[1], detail=False))"
    run = [sys.executable, "-c", code, s3_bucket]
    done = subprocess.run(run, env={**env, variable: s3_endpoint}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{s3_bucket.removeprefix('s3://')}/x.txt" in done.stdout
    # Without any endpoint variable the child would go to AWS: make it fail fast instead of hanging.
    bogus = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    failed = subprocess.run(run, env=bogus, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0


def test_listings_cache_would_hide_objects_written_elsewhere(s3_bucket):
    """Why ``use_listings_cache=False``: a caching instance keeps answering from its old listing."""
    bucket = s3_bucket.removeprefix("s3://")
    cached = fsspec.filesystem("s3", use_listings_cache=True, skip_instance_cache=True)
    fresh = fsspec.filesystem("s3")  # the session's conf: no listings cache
    cached.pipe_file(f"{bucket}/seg/a", b"a")
    assert cached.ls(f"{bucket}/seg", detail=False) == [f"{bucket}/seg/a"]
    other = fsspec.filesystem("s3", skip_instance_cache=True)  # stands for another process
    other.pipe_file(f"{bucket}/seg/b", b"b")
    other.rm_file(f"{bucket}/seg/a")
    assert not cached.exists(f"{bucket}/seg/b") and cached.exists(f"{bucket}/seg/a")  # stale
    assert fresh.exists(f"{bucket}/seg/b") and not fresh.exists(f"{bucket}/seg/a")
    assert fresh.ls(f"{bucket}/seg", detail=False) == [f"{bucket}/seg/b"]
    cached.invalidate_cache()
    assert cached.exists(f"{bucket}/seg/b") and not cached.exists(f"{bucket}/seg/a")


def test_storage_options_from_env():
    env = {"AWS_ENDPOINT_URL": "http://a:1", "FSSPEC_S3_ENDPOINT_URL": "http://b:2"}
    assert storage_options_from_env(env) == {"use_listings_cache": False, "endpoint_url": "http://a:1"}
    assert storage_options_from_env({"AWS_ENDPOINT_URL_S3": "http://c:3", **env})["endpoint_url"] == "http://c:3"
    assert storage_options_from_env({}) == {"use_listings_cache": False}


def test_configure_s3_sets_conf_and_exports(monkeypatch, s3_endpoint, s3_bucket):
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    monkeypatch.delenv("FSSPEC_S3", raising=False)
    for name in ("AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_USE_LISTINGS_CACHE"):
        monkeypatch.delenv(name)
    configure_s3(s3_endpoint, default_block_size=1 << 20)
    assert fsspec.config.conf["s3"] == {
        "use_listings_cache": False, "endpoint_url": s3_endpoint, "default_block_size": 1 << 20,
    }
    assert json.loads(os.environ["FSSPEC_S3"]) == fsspec.config.conf["s3"]
    fs, path = fsspec.core.url_to_fs(f"{s3_bucket}/conf.txt")
    assert fs.endpoint_url == s3_endpoint and fs.dircache.use_listings_cache is False
    fs.pipe_file(path, b"conf")
    # A child process gets everything from FSSPEC_S3 alone (no AWS_ENDPOINT_URL in its environment).
    code = "import sys, fsspec; print(fsspec.filesystem('s3').cat_file(sys.argv[1]).decode())"
    done = subprocess.run([sys.executable, "-c", code, f"{s3_bucket}/conf.txt"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "conf"
    with pytest.raises(ValueError, match="JSON"):
        configure_s3(s3_endpoint, config_kwargs=object())
