"""A multi-process deployment as on separate machines: a `dask scheduler` and two `dask worker` processes
started from the command line, each in its own working directory with its own Prefect home, one offering
``GPU=1``; the refresh flow pointed at them with ``CLOTHRET_DASK_ADDRESS``; the manifest, the model bundle,
the feature store, the index and Prefect's persisted task results all on the local S3 endpoint (moto's
server) — nothing shared through the local disk. A first refresh builds and publishes; a second one,
whose segments ask for the GPU, loses its worker process midway (killed; the nanny starts a new one) and
still completes. Infra/README.md describes the same set-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import distributed
import fsspec
import pytest

from clothret.datasets.catalogue import write_manifest
from clothret.index.config import IndexConfig
from clothret.index.publish import current_build, read_build_manifest
from clothret.index.search import SearchIndex
from clothret.models import load_bundle
from clothret.refresh import RefreshConfig
from clothret.simulated import simulated_manifest, write_simulated_bundle
from clothret.store.catalog import read_catalog
from clothret.store.feature_store import MARKER, read_marker, segment_url

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).parent / "dask")
RESULTS_BLOCK = "clothret-results"
SEGMENT = 20  # images per segment
SECONDS_PER_IMAGE = 0.05  # simulated model time: a segment takes about a second


def _start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _committed_markers(config: RefreshConfig, version: str) -> dict[str, dict]:
    fs, path = fsspec.core.url_to_fs(f"{config.store_url}/{version}/segments")
    found = fs.glob(f"{path}/*/{MARKER}") if fs.exists(path) else []
    return {m.rsplit("/", 2)[-2]: read_marker(f"s3://{m.rsplit('/', 1)[0]}") for m in found}


@pytest.fixture
def deployment(tmp_path, s3_bucket, prefect_server):
    """The scheduler and two workers (``gpu-0`` with ``--resources GPU=1``, ``cpu-0``), each in its own folder;
    yields the scheduler address and the worker folders, and stops the processes afterwards."""
    from prefect.filesystems import RemoteFileSystem

    endpoint = os.environ["FSSPEC_S3_ENDPOINT_URL"]
    RemoteFileSystem(
        basepath=f"{s3_bucket}/prefect-results",
        settings={"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
                  "client_kwargs": {"endpoint_url": endpoint}},
    ).save(RESULTS_BLOCK, overwrite=True)
    processes: list[subprocess.Popen] = []
    scheduler_dir = tmp_path / "machine-scheduler"
    scheduler_file = scheduler_dir / "scheduler.json"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_HOME")}
    try:
        processes.append(_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file)], scheduler_dir, base_env,
                                tmp_path / "scheduler.log"))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        folders = {}
        for name, extra in (("gpu-0", ["--resources", "GPU=1"]), ("cpu-0", [])):
            folder = tmp_path / f"machine-{name}"
            env = {
                **base_env, "PREFECT_HOME": str(folder / "prefect-home"),
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"remote-file-system/{RESULTS_BLOCK}",
                "OMP_NUM_THREADS": "1",
            }
            processes.append(_start([DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-dashboard",
                                     "--local-directory", str(folder / "dask"), *extra], folder, env,
                                    tmp_path / f"{name}.log"))
            folders[name] = folder
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, folders
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _worker_pids(address: str) -> dict[str, int]:
    """Worker name → pid of its worker process, as the scheduler sees them now."""
    with distributed.Client(address, timeout=30) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        pids = client.run(os.getpid)
    return {w["name"]: pids[addr] for addr, w in info.items()}


def test_refresh_on_a_multi_process_dask_deployment_with_everything_on_s3(deployment, s3_bucket, tmp_path,
                                                                          monkeypatch):
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings

    from flows.catalogue_refresh import catalogue_refresh

    address, folders = deployment
    bundle = write_simulated_bundle(f"{s3_bucket}/models", dim=32, n_clusters=16, latent_dim=8,
                                    seconds_per_image=SECONDS_PER_IMAGE)
    version = load_bundle(bundle).version()
    manifest = f"{s3_bucket}/catalogue/manifest.jsonl"
    entries = simulated_manifest(8 * SEGMENT)
    write_manifest(entries, manifest)
    config = RefreshConfig(
        manifest_url=manifest, bundle_url=bundle, store_url=f"{s3_bucket}/store", index_url=f"{s3_bucket}/index",
        segment_size=SEGMENT, device="cpu",
        index=IndexConfig(stream_above=0, exact_below=200, recall_sample=50, train_sample=500, update_fraction=1.0),
    )
    monkeypatch.setenv("CLOTHRET_DASK_ADDRESS", address)
    started = time.monotonic()
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: f"remote-file-system/{RESULTS_BLOCK}"}):
        first = catalogue_refresh(config)
        first_seconds = time.monotonic() - started

        assert first["active"] and first["n_images"] == len(entries) and first["recall_at_10"] >= 0.95
        assert first["streamed"] and current_build(config.index_url) == first["build_id"]
        markers = _committed_markers(config, version)
        assert len(markers) == 8
        writers = {m["writer"]["pid"] for m in markers.values()}
        pids = _worker_pids(address)
        assert writers <= set(pids.values()) and len(writers) == 2  # both machines computed segments
        fs = fsspec.filesystem("s3")
        results = fs.find(f"{s3_bucket}/prefect-results")
        assert len(results) >= 8  # the persisted embed-segment results, one per segment at least

        # the second refresh asks for the GPU: only gpu-0 may run its segments; its process dies midway
        monkeypatch.setenv("CLOTHRET_DASK_GPU_RESOURCE", "1")
        write_manifest(entries + simulated_manifest(6 * SEGMENT, start=len(entries)), manifest)
        killed: dict[str, int] = {}

        def kill_the_gpu_worker_after_a_new_commit() -> None:
            deadline = time.monotonic() + 120
            while len(_committed_markers(config, version)) < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            killed["pid"] = _worker_pids(address)["gpu-0"]
            os.kill(killed["pid"], signal.SIGKILL)

        killer = threading.Thread(target=kill_the_gpu_worker_after_a_new_commit, daemon=True)
        killer.start()
        started = time.monotonic()
        second = catalogue_refresh(config)
        second_seconds = time.monotonic() - started
        killer.join(timeout=5)

    assert killed, "the GPU worker was not killed during the second refresh"
    assert second["active"] and second["n_images"] == 14 * SEGMENT
    assert second["updated_from"] == first["build_id"]  # the serving build was updated in place
    catalog = read_catalog(config.store_url, version)
    assert len(catalog.segments) == 14
    markers = _committed_markers(config, version)
    new_writers = {markers[s]["writer"]["pid"] for s in catalog.segments[8:]}
    gpu_pids = {killed["pid"], _worker_pids(address)["gpu-0"]}
    assert killed["pid"] != _worker_pids(address)["gpu-0"]  # the nanny started a new worker process
    assert new_writers <= gpu_pids  # the GPU segments ran on the GPU worker only, before and after its loss
    loaded = SearchIndex.load(config.index_url, cache_dir=tmp_path / "reader-cache")
    assert loaded.index.ntotal == second["n_boxes"]
    assert read_build_manifest(config.index_url, second["build_id"])["files"]["index.faiss"]["bytes"] > 0
    for name, folder in folders.items():  # the workers kept nothing of the catalogue on their disks
        kept = [p for p in folder.rglob("*") if p.suffix in (".zarr", ".faiss", ".npz", ".jsonl", ".safetensors")
                and "prefect-home" not in p.parts]
        assert kept == [], f"{name} wrote {kept[:3]}"
    print(f"multi-process deployment: first refresh {first_seconds:.1f} s, second (worker killed) "
          f"{second_seconds:.1f} s")
