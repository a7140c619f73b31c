"""Lost Dask workers, through the real refresh flow, real local Dask worker processes and a real temporary
Prefect server: a worker killed in the middle of a refresh is survived and reported with its last log
lines; a segment that takes its worker down on every attempt fails the flow in bounded time, naming it and
the cause, with the other segments committed; GPU tasks fail in bounded time once no worker offers a GPU.
Each case runs with workers that offer a ``GPU`` resource (a CPU cluster, ``CLOTHRET_DASK_GPU_RESOURCE=1``)
and tasks that ask for it, as on a GPU machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import distributed
import fsspec
import psutil
import pytest
import yaml
import crash_backend
from crash_backend import EXIT_STATUS, write_poison_image

from clothret.datasets.catalogue import ManifestEntry, file_sha256, read_manifest, write_manifest
from clothret.demo import build_catalogue
from clothret.index.search import SearchIndex
from clothret.models import load_bundle
from clothret.refresh import RefreshConfig
from clothret.store.catalog import read_catalog
from clothret.store.feature_store import MARKER, read_segment, segment_url

pytestmark = pytest.mark.slow

BOUND_S = 180  # issue 10: a segment that kills its worker on every attempt fails the flow within 3 minutes


@pytest.fixture
def shop_manifest(tiny_workdir, tmp_path) -> str:
    manifest = str(tmp_path / "manifest.jsonl")
    build_catalogue(str(tiny_workdir / "data" / "validation"), manifest)
    return manifest


def _config(tmp_path: Path, manifest: str, bundle: str, segment_size: int) -> RefreshConfig:
    return RefreshConfig(manifest_url=manifest, bundle_url=bundle, store_url=str(tmp_path / "store"),
                         index_url=str(tmp_path / "index"), segment_size=segment_size, batch_size=2)


def _committed(config: RefreshConfig, version: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(f"{config.store_url}/{version}/segments")
    return {m.rsplit("/", 2)[-2] for m in fs.glob(f"{path}/*/{MARKER}")} if fs.exists(path) else set()


def _flow_run_logs(flow_name: str) -> str:
    """Every log line of the latest run of the flow ``flow_name`` on the Prefect server, as one text."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=1)
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
            return "\n".join(log.message for log in logs)

    time.sleep(1.0)  # the API log worker sends in batches
    return run_coro_as_sync(read())


def _worker_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The Dask worker processes a process started (multiprocessing's spawned children)."""
    found = []
    for child in parent.children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("gpu_resource", [False, True], ids=["cpu", "gpu-resource"])
def test_a_worker_killed_midway_is_survived_and_reported(prefect_server, tiny_workdir, shop_manifest, tmp_path,
                                                         gpu_resource):
    bundle = str(tiny_workdir / "models" / "bundle.yaml")
    config = _config(tmp_path, shop_manifest, bundle, segment_size=2)
    version = load_bundle(bundle).version()
    # one worker: the kill lands on the worker that runs the refresh, after it logged its first segment
    env = {**os.environ, "CLOTHRET_DASK_WORKERS": "1", "CLOTHRET_DASK_GPU_RESOURCE": "1" if gpu_resource else "0"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "clothret.cli", "refresh", "--manifest", config.manifest_url, "--bundle", bundle,
         "--store", config.store_url, "--index", config.index_url, "--segment-size", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not _committed(config, version) and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # its next segment has begun
        workers = _worker_processes(psutil.Process(cli.pid))
        assert cli.poll() is None and workers, "the refresh should still be running, on its workers"
        victim = workers[0].pid
        os.kill(victim, signal.SIGKILL)
        output, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, output
    death = f"Worker process {victim} was killed by signal 9"
    assert death in output  # on the console of `clothret refresh` ...
    logs = _flow_run_logs("catalogue-refresh")
    assert death in logs  # ... and in the flow run's logs on the server
    report = logs[logs.index(death):]
    assert "log lines:" in report.splitlines()[1] and "  | " in report  # with the worker's last lines

    # every image went through: each is in a committed segment, and every box of them is served
    catalog = read_catalog(config.store_url, version)
    stored_ids, boxed_ids = set(), set()
    for seg_id in catalog.segments:
        seg = read_segment(segment_url(config.store_url, version, seg_id))
        stored_ids |= {str(i) for i in seg.image_ids}
        boxed_ids |= {str(seg.image_ids[i]) for i in seg.box_image}
    assert stored_ids == {e.image_id for e in read_manifest(config.manifest_url)}
    assert {str(i) for i in SearchIndex.load(config.index_url).gallery.image_ids} == boxed_ids


@pytest.fixture
def crash_backends():
    """The crash-* backends in this process and in every Dask worker started meanwhile (tests/crash_backend.py
    as a preload). (``distributed`` is imported above: the config block, when it ends, removes the keys it
    did not find.)"""
    crash_backend.register()
    try:
        with dask.config.set({"distributed.worker.preload": ["crash_backend"]}):
            yield
    finally:
        crash_backend.unregister()


def _poisoned(tiny_workdir: Path, manifest: str, tmp_path: Path, how: str) -> tuple[str, str]:
    """A bundle whose detector runs under the ``crash-<how>`` backend, and the manifest with one poison
    image added in the middle; returns the bundle URL and the poison's image id."""
    raw = yaml.safe_load((tiny_workdir / "models" / "bundle.yaml").read_text())
    for detector in raw["detectors"]:
        detector["backend"] = f"crash-{how}"
        detector["weights"] = str(tiny_workdir / "models" / detector["weights"])
    for embedder in raw["embedders"]:
        embedder["weights"] = str(tiny_workdir / "models" / embedder["weights"])
    bundle = tmp_path / "crash-bundle.yaml"
    bundle.write_text(yaml.safe_dump(raw))
    poison = tmp_path / "poison.png"
    write_poison_image(str(poison))
    entries = read_manifest(manifest)
    entries.insert(len(entries) // 2, ManifestEntry("poison", str(poison), file_sha256(str(poison)), "poison-item"))
    write_manifest(entries, manifest)
    return str(bundle), "poison"


@pytest.mark.parametrize(("how", "gpu_resource"), [("kill", False), ("exit", True)],
                         ids=["sigkill-cpu", "exit-status-gpu-resource"])
def test_a_segment_that_kills_its_worker_every_time_fails_the_flow_in_bounded_time(
    prefect_server, tiny_workdir, shop_manifest, tmp_path, monkeypatch, crash_backends, how, gpu_resource
):
    from clothret import refresh
    from clothret.errors import SegmentsFailed
    from flows.catalogue_refresh import catalogue_refresh

    monkeypatch.setenv("CLOTHRET_DASK_WORKERS", "2")
    monkeypatch.setenv("CLOTHRET_DASK_GPU_RESOURCE", "1" if gpu_resource else "0")
    bundle, poison = _poisoned(tiny_workdir, shop_manifest, tmp_path, how)
    config = _config(tmp_path, shop_manifest, bundle, segment_size=3)
    plan = refresh.plan(config, activate=True)
    culprit = next(s.segment_id for s in plan.new if poison in {e.image_id for e in s.entries})

    started = time.monotonic()
    with pytest.raises(SegmentsFailed) as failed:
        catalogue_refresh(config)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND_S, f"took {elapsed:.0f} s"

    message = str(failed.value)
    cause = "was killed by signal 9" if how == "kill" else f"exited with status {EXIT_STATUS}"
    assert message.startswith(f"1 of {len(plan.new)} segments failed")
    assert f"segment {culprit}: SegmentLost: its worker died each time it ran, also alone on the cluster" in message
    assert cause in message
    # every other segment is committed; the next plan computes only the culprit
    assert _committed(config, plan.version) == {s.segment_id for s in plan.new} - {culprit}
    assert [s.segment_id for s in refresh.plan(config, activate=True).new] == [culprit]
    # each death is in the flow run's logs with the culprit's last line
    logs = _flow_run_logs("catalogue-refresh")
    assert cause in logs and "poison image in this batch: the worker process goes down" in logs


def test_gpu_tasks_fail_in_bounded_time_once_no_worker_offers_a_gpu(prefect_server, tiny_workdir, shop_manifest,
                                                                    tmp_path, monkeypatch):
    """An existing scheduler, set up as infra/README.md says, with one GPU worker and one CPU worker; the GPU
    worker is lost for good (no nanny restarts it) once a segment is committed: the GPU segments left fail
    after the scheduler's no-workers-timeout, the others are not started, and the flow ends naming them."""
    from clothret.errors import SegmentsFailed
    from flows.catalogue_refresh import catalogue_refresh

    bundle = str(tiny_workdir / "models" / "bundle.yaml")
    config = _config(tmp_path, shop_manifest, bundle, segment_size=2)
    version = load_bundle(bundle).version()
    n_segments = -(-len(read_manifest(shop_manifest)) // 2)
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "10s",
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    scheduler_file = tmp_path / "scheduler.json"
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], **quiet)]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
              "--nthreads", "1", "--no-dashboard", "--no-nanny"]
    processes.append(subprocess.Popen([*worker, "--resources", "GPU=1", "--name", "gpu-0"], **quiet))
    processes.append(subprocess.Popen([*worker, "--name", "cpu-0"], **quiet))
    gpu_worker = processes[1]

    def lose_the_gpu_worker_after_a_commit() -> None:
        deadline = time.monotonic() + 240
        while not _committed(config, version) and time.monotonic() < deadline:
            time.sleep(0.1)
        gpu_worker.kill()

    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        monkeypatch.setenv("CLOTHRET_DASK_ADDRESS", address)
        monkeypatch.setenv("CLOTHRET_DASK_GPU_RESOURCE", "1")
        threading.Thread(target=lose_the_gpu_worker_after_a_commit, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(SegmentsFailed) as failed:
            catalogue_refresh(config)
        elapsed = time.monotonic() - started
        assert gpu_worker.poll() is not None, "the GPU worker should have been lost during the run"
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert elapsed < BOUND_S, f"took {elapsed:.0f} s"
    message = str(failed.value)
    n_kept = len(read_catalog(config.store_url, version).segments)  # finished before the loss (if its result came back)
    assert message.startswith(f"{n_segments - n_kept} of {n_segments} segments failed")
    assert "SegmentLost: no worker offering GPU=1 was there for 10 s (the scheduler's no-workers-timeout)" in message
