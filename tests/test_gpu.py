"""The GPU paths: FAISS search and index builds on the GPU with the CPU as fallback, and the refresh flow on
a LocalCUDACluster. The CPU fallbacks run everywhere; the tests marked ``gpu`` need a CUDA GPU (and, for
FAISS, the ``gpu`` extra) and are skipped on the CPU with the reason (``make gpu-check`` runs them)."""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
import pytest

from clothret.index import gpu
from clothret.index.build import build_index
from clothret.index.config import IndexConfig
from clothret.index.gallery import Gallery
from clothret.index.search import SearchIndex

FAISS_GPU = pytest.mark.skipif(gpu.gpu_count() == 0, reason="faiss sees no GPU: needs the gpu extra (faiss-gpu) "
                               "and a CUDA GPU")


def _features(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _searchable(index: faiss.Index, feats: np.ndarray) -> SearchIndex:
    n = len(feats)
    gallery = Gallery(features=feats, image_ids=np.array([f"i{r}" for r in range(n)]),
                      item_ids=np.array([f"t{r}" for r in range(n)]), boxes=np.zeros((n, 4), np.float32),
                      categories=np.ones(n, np.int16), scores=np.ones(n, np.float32))
    return SearchIndex(index, gallery, {"model_version": "v"})


def test_without_a_gpu_faiss_searches_on_the_cpu_and_gpu_is_refused_by_name():
    if gpu.gpu_count():
        pytest.skip("this machine's faiss has a GPU")
    feats = _features(300)
    index = _searchable(build_index(feats), feats).on_device("auto")
    assert index.device == "cpu"
    sims, rows = index.search(feats[:5], 3)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4] and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"FAISS device 'gpu' asked for, but this faiss (has no GPU support|sees no GPU)"):
        index.on_device("gpu")
    with pytest.raises(ValueError, match="unknown FAISS device 'cuda'; valid: auto, cpu, gpu"):
        index.on_device("cuda")


@pytest.mark.gpu
@FAISS_GPU
def test_faiss_trains_and_searches_on_the_gpu_like_the_cpu(caplog):
    feats = _features(6000, dim=64, seed=1)
    with caplog.at_level(logging.INFO, logger="clothret.index.build"):
        index = build_index(feats, IndexConfig(kind="ivf_flat", nprobe=16))
    assert "on the GPU" in caplog.text  # trained and filled on the GPU, returned as a CPU index
    on_gpu = _searchable(index, feats).on_device("gpu")
    on_cpu = _searchable(faiss.clone_index(index), feats).on_device("cpu")
    assert on_gpu.device == "gpu" and on_cpu.device == "cpu"
    queries = feats[:200] + 0.01 * _features(200, dim=64, seed=2)
    gpu_sims, gpu_rows = on_gpu.search(queries, 10)
    cpu_sims, cpu_rows = on_cpu.search(queries, 10)
    assert (gpu_rows[:, 0] == cpu_rows[:, 0]).mean() > 0.99
    np.testing.assert_allclose(gpu_sims[:, 0], cpu_sims[:, 0], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
def test_refresh_flow_runs_on_a_local_cuda_cluster(prefect_server, tiny_workdir, tmp_path):
    pytest.importorskip("dask_cuda", reason="needs the gpu extra (dask-cuda)")
    from clothret.demo import build_catalogue
    from clothret.refresh import RefreshConfig
    from flows.catalogue_refresh import catalogue_refresh
    from flows.cluster import cluster_spec, task_resources

    assert cluster_spec()[1] == "dask_cuda.LocalCUDACluster" and task_resources() == {"GPU": 1}
    manifest = str(tmp_path / "manifest.jsonl")
    n_images = build_catalogue(str(tiny_workdir / "data" / "validation"), manifest)
    config = RefreshConfig(manifest_url=manifest, bundle_url=str(tiny_workdir / "models" / "bundle.yaml"),
                           store_url=str(tmp_path / "store"), index_url=str(tmp_path / "index"), segment_size=4,
                           device="cuda")
    started = time.monotonic()
    build = catalogue_refresh(config)
    assert build["images_embedded"] == n_images and build["segments_failed"] == 0
    assert time.monotonic() - started < 180
    assert SearchIndex.load(config.index_url).index.ntotal == build["n_boxes"]


@pytest.mark.gpu
def test_detector_trains_on_cuda_with_mixed_precision(tmp_path):
    from clothret.datasets.deepfashion2 import read_split
    from clothret.datasets.synthetic import SyntheticSizes, generate_dataset
    from clothret.detection.torchvision_backend import TorchvisionDetector, TorchvisionDetectorConfig
    from clothret.detection.training import DetectorTrainConfig, train_detector

    generate_dataset(str(tmp_path / "data"), seed=5, splits={"train": SyntheticSizes(n_pairs=4, street_per_pair=1)})
    records = read_split(str(tmp_path / "data" / "train"))[:8]
    model = TorchvisionDetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, min_size=64, max_size=96)
    weights = str(tmp_path / "detector.safetensors")
    train = DetectorTrainConfig(steps=6, batch_size=4, warmup_steps=1, checkpoint_every=0, amp=True, device="cuda")
    metrics = train_detector(records, model_config=model, train_config=train, weights_url=weights, progress=False)
    assert metrics["steps"] == 6 and np.isfinite(metrics["final_loss"])
    detector = TorchvisionDetector.from_weights(weights, device="cuda")
    assert next(detector.model.parameters()).is_cuda
    image = np.zeros((96, 96, 3), np.uint8)
    assert len(detector.detect([image, image])) == 2


def test_a_cuda_cluster_gets_the_configured_worker_preloads(monkeypatch):
    """LocalCUDACluster sets its workers' preload list itself (``dask_cuda.initialize``), which hides dask's
    ``distributed.worker.preload`` setting: the spec passes the configured preloads explicitly (runs on the CPU;
    whether they then run in a CUDA worker is what ``make gpu-check``'s worker-loss tests show)."""
    import dask

    import flows.cluster as cluster

    monkeypatch.delenv("CLOTHRET_DASK_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "_use_cuda_cluster", lambda: True)
    with dask.config.set({"distributed.worker.preload": ["crash_backend"]}):
        _, cluster_class, kwargs = cluster.cluster_spec()
    assert cluster_class == "dask_cuda.LocalCUDACluster"
    assert kwargs["preload"] == ["crash_backend"] and kwargs["resources"] == {"GPU": 1}
    with dask.config.set({"distributed.worker.preload": []}):
        assert "preload" not in cluster.cluster_spec()[2]
