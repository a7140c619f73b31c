"""The FAISS index subsystem: choosing a kind, building it, the recall and reload gates, publish/promote/
rollback, and memory-mapped loading — all on seeded unit vectors, against a numpy brute-force reference."""

import json
import os
import re

import faiss
import numpy as np
import pydantic
import pytest

from clothret.errors import PublishRefused
from clothret.index import publish as publish_mod
from clothret.index.build import build_index, exact_search, sample_rows
from clothret.index.choose import choose_index_kind, choose_pq_m, plan_index
from clothret.index.config import IndexConfig
from clothret.index.gallery import Gallery
from clothret.index.publish import (
    current_build,
    latest_unserved_build,
    list_builds,
    promote,
    publish,
    read_pointer,
    rollback,
)
from clothret.index.rebuild import build_validated
from clothret.index.search import SearchIndex, prune_index_cache, read_index_file
from clothret.index.validate import check_reload, recall_at_k, split_rows

DIM = 32
KINDS = ["flat", "ivf_flat", "ivf_sq", "ivf_pq", "hnsw"]
SANE = {  # settings a user would pick for a few thousand vectors: search breadth fixed, no tuning
    "flat": {},
    "ivf_flat": {"nlist": 32, "nprobe": 8},
    "ivf_sq": {"nlist": 32, "nprobe": 8},
    "ivf_pq": {"nlist": 16, "nprobe": 4, "pq_m": 16},
    "hnsw": {"ef_search": 64},
}
TYPES = {"flat": "IndexFlatIP", "ivf_flat": "IndexIVFFlat", "ivf_sq": "IndexIVFScalarQuantizer", "ivf_pq": "IndexIVFPQ", "hnsw": "IndexHNSWFlat"}


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _catalogue(n_items=300, views=10, seed=0):
    """Shop-catalogue-like features: ``views`` boxes of each item, close to each other; item centres and queries."""
    rng = np.random.default_rng(seed)
    items = _unit(rng.normal(size=(n_items, DIM)))
    feats = _unit(np.repeat(items, views, 0) + 0.05 * rng.normal(size=(n_items * views, DIM)))
    queries = _unit(items[:200] + 0.05 * rng.normal(size=(min(200, n_items), DIM)))
    return feats, queries


def _uniform(n=3000, seed=1):
    """No structure at all: neighbours are spread over many IVF lists, so nprobe matters."""
    return _unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def _gallery(feats):
    n = len(feats)
    return Gallery(
        features=feats,
        image_ids=np.array([f"img{i}" for i in range(n)]),
        item_ids=np.array([f"item{i // 10}" for i in range(n)]),
        boxes=np.tile(np.array([[1, 2, 30, 40]], np.float32), (n, 1)),
        categories=np.ones(n, np.int16),
        scores=np.full(n, 0.9, np.float32),
    )


def _overlap_recall(index, feats, queries, k=10):
    """Plain set overlap with the numpy reference (no tie handling, independent of the code under test)."""
    _, exact = exact_search(feats, queries, k)
    _, got = index.search(queries, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, exact)]))


# --- choosing -----------------------------------------------------------------------------------------------


def test_choose_index_kind_follows_the_rule():
    config = IndexConfig(exact_below=1000, memory_budget_mb=1)  # 1 MiB = 8192 vectors of dim 32
    assert choose_index_kind(999, DIM, config) == "flat"
    assert choose_index_kind(1000, DIM, config) == "ivf_flat"
    assert choose_index_kind(8192, DIM, config) == "ivf_flat"  # exactly the budget fits
    assert choose_index_kind(8193, DIM, config) == "ivf_sq"  # float16 codes fit the budget
    assert choose_index_kind(16385, DIM, config) == "ivf_pq"  # they no longer do
    assert choose_index_kind(8193, 8, config) == "ivf_flat"  # smaller vectors fit again
    assert choose_index_kind(10, DIM, IndexConfig(kind="hnsw")) == "hnsw"  # an explicit kind stands
    assert choose_index_kind(10**9, DIM, IndexConfig()) == "ivf_pq"
    assert choose_index_kind(10**6, DIM, IndexConfig()) == "ivf_flat"
    assert choose_index_kind(10**5, DIM, IndexConfig()) == "flat"


def test_unknown_kind_and_bad_sizes_are_refused():
    with pytest.raises(pydantic.ValidationError, match="flat"):
        IndexConfig(kind="annoy")
    with pytest.raises(ValueError, match="valid kinds: auto, flat, ivf_flat, ivf_sq, ivf_pq, hnsw"):
        choose_index_kind(10, DIM, IndexConfig.model_construct(kind="annoy"))
    with pytest.raises(ValueError, match="n_vectors=0"):
        choose_index_kind(0, DIM, IndexConfig())
    with pytest.raises(pydantic.ValidationError):
        IndexConfig(nprobes=3)  # extra fields are refused
    with pytest.raises(pydantic.ValidationError):
        IndexConfig().kind = "flat"  # frozen


def test_pq_code_size_fits_the_budget():
    config = IndexConfig(memory_budget_mb=1)
    # 100k vectors: (m + 8 id bytes) * 100k + centroids <= 1 MiB leaves m = 2 of the divisors of 32
    assert choose_pq_m(100_000, DIM, 100, config) == 2
    assert choose_pq_m(10_000, DIM, 100, config) == 32
    assert choose_pq_m(20_000, DIM, 100, config) == 32  # (32 + 8) * 20k = 800 kB fits
    assert choose_pq_m(30_000, DIM, 100, config) == 16
    with pytest.raises(ValueError, match="raise the budget"):
        choose_pq_m(200_000, DIM, 100, config)
    with pytest.raises(ValueError, match=r"pq_m=5 must divide dim=32; valid values: \[1, 2, 4, 8, 16, 32\]"):
        choose_pq_m(1000, DIM, 10, IndexConfig(pq_m=5))


def test_plan_clamps_nlist_to_the_training_set():
    plan = plan_index(2000, DIM, IndexConfig(kind="ivf_flat", nlist=1000), n_train=1000)
    assert plan.nlist == 1000 // 39 and plan.nprobe <= plan.nlist and plan.tune_breadth
    assert plan_index(10**6, DIM, IndexConfig(kind="ivf_flat"), n_train=10**6).nlist == 4000  # 4 * sqrt(n)
    assert not plan_index(2000, DIM, IndexConfig(kind="ivf_flat", nprobe=3), n_train=1000).tune_breadth
    with pytest.raises(ValueError, match="ivf_pq needs at least 256 training vectors"):
        plan_index(300, DIM, IndexConfig(kind="ivf_pq"), n_train=200)


# --- building -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reaches_recall_against_exact_search(kind):
    feats, queries = _catalogue()
    index = build_index(feats, IndexConfig(kind=kind, **SANE[kind]))
    assert type(index).__name__ == TYPES[kind]
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT and index.ntotal == len(feats) and index.d == DIM
    assert _overlap_recall(index, feats, queries) >= 0.95  # queries not in the gallery
    assert recall_at_k(index, feats, k=10) >= 0.95  # gallery vectors as queries
    if kind.startswith("ivf"):
        assert faiss.extract_index_ivf(index).nprobe == SANE[kind]["nprobe"]
    if kind == "hnsw":
        assert index.hnsw.efSearch == 64


def test_ivf_trains_on_a_small_seeded_sample(monkeypatch):
    feats = _uniform(3000)
    trained_on = []
    original = faiss.IndexIVFFlat.train

    def train(self, x):
        trained_on.append(x.copy())
        return original(self, x)

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", train)
    a = build_index(feats, IndexConfig(kind="ivf_flat", train_sample=800, nprobe=4, seed=3))
    b = build_index(feats, IndexConfig(kind="ivf_flat", train_sample=800, nprobe=4, seed=3))
    assert [len(x) for x in trained_on] == [800, 800]
    np.testing.assert_array_equal(trained_on[0], feats[sample_rows(3000, 800, 3)])
    assert faiss.extract_index_ivf(a).nlist == 800 // 39  # clamped: 4 * sqrt(3000) = 219 lists want more data
    np.testing.assert_array_equal(a.search(feats[:50], 10)[1], b.search(feats[:50], 10)[1])  # rebuilds agree


def test_gpu_path_trains_on_the_gpu_and_returns_a_cpu_index(monkeypatch):
    calls = []

    def to_gpu(resources, device, index):
        calls.append(("to_gpu", type(index).__name__, device))
        return faiss.clone_index(index)

    def to_cpu(index):
        calls.append(("to_cpu", index.ntotal))
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", to_cpu, raising=False)
    feats = _uniform(2000)
    index = build_index(feats, IndexConfig(kind="ivf_flat", nprobe=5))
    assert calls == [("to_gpu", "IndexIVFFlat", 0), ("to_cpu", 2000)]
    assert faiss.extract_index_ivf(index).nprobe == 5 and index.ntotal == 2000
    calls.clear()
    build_index(feats, IndexConfig(kind="flat"))  # nothing to gain on the GPU
    assert calls == []


def test_exact_search_streams_blocks_like_a_full_sort():
    feats = _uniform(500, seed=4)
    queries = _unit(feats[:20] + 0.01)
    full = queries @ feats.T
    order = np.argsort(-full, axis=1, kind="stable")[:, :10]
    sims, rows = exact_search(feats, queries, 10, block=37)
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_allclose(sims, np.take_along_axis(full, order, 1), rtol=1e-6)
    assert exact_search(feats[:4], queries, 10)[1].shape == (20, 4)


# --- validation gates ---------------------------------------------------------------------------------------


def test_split_rows_keeps_validation_queries_out_of_training():
    split = split_rows(5000, IndexConfig(recall_sample=300, train_sample=2000, seed=1))
    assert len(split.validate) == len(split.tune) == 300 and len(split.train) == 2000
    assert not set(split.validate) & set(split.train) and not set(split.validate) & set(split.tune)
    assert not set(split.tune) & set(split.train)
    small = split_rows(20, IndexConfig())
    assert len(small.validate) == 5 and len(small.train) == 10


@pytest.mark.parametrize("kind", KINDS)
def test_build_validated_reports_its_figures(kind):
    feats, _ = _catalogue()
    index, figures = build_validated(_gallery(feats), IndexConfig(kind=kind, recall_sample=200))
    assert figures["index_kind"] == kind and figures["reload_identical"] is True
    assert figures["n_vectors"] == index.ntotal == len(feats) and figures["recall_queries"] == 200
    assert 0.95 <= figures["recall_at_10"] <= 1.0
    json.dumps(figures)  # goes into the manifest as it is


def test_unset_nprobe_is_tuned_until_recall_is_reached():
    feats = _uniform(3000)
    index, figures = build_validated(_gallery(feats), IndexConfig(kind="ivf_flat", nlist=64, recall_sample=200))
    start = plan_index(3000, DIM, IndexConfig(kind="ivf_flat", nlist=64), n_train=2600).nprobe
    assert figures["nprobe"] > start and figures["recall_at_10"] >= 0.95
    assert faiss.extract_index_ivf(index).nprobe == figures["nprobe"]


def test_recall_gate_refuses_a_bad_index():
    feats = _uniform(3000)
    config = IndexConfig(kind="ivf_flat", nlist=64, nprobe=1, recall_sample=200)
    with pytest.raises(PublishRefused, match=r"recall@10 0\.\d{4} .* below min_recall 0\.95") as info:
        build_validated(_gallery(feats), config)
    found = float(re.search(r"recall@10 (\d\.\d+)", str(info.value)).group(1))
    assert found < 0.6  # one list of 64 misses most neighbours of unstructured data


def test_recall_gate_refuses_when_the_threshold_is_unreachable():
    feats, _ = _catalogue()
    with pytest.raises(PublishRefused, match=r"recall@10 0\.9\d+ of the ivf_pq index .* below min_recall 1\.0"):
        build_validated(_gallery(feats), IndexConfig(kind="ivf_pq", nlist=16, nprobe=1, pq_m=4, min_recall=1.0))


def test_reload_check_passes_and_catches_a_changed_index(monkeypatch):
    feats = _uniform(2000)
    index = build_index(feats, IndexConfig(kind="ivf_flat", nlist=32, nprobe=4))
    assert check_reload(index, feats[:100]) == faiss.serialize_index(index).size
    original = faiss.deserialize_index

    def lossy(data):  # a reader that drops the search breadth
        back = original(data)
        faiss.extract_index_ivf(back).nprobe = 1
        return back

    monkeypatch.setattr(faiss, "deserialize_index", lossy)
    with pytest.raises(PublishRefused, match="answers .* differently"):
        check_reload(index, feats[:100])


# --- publish, promote, rollback -----------------------------------------------------------------------------


def _root(tmp_path, where):
    return str(tmp_path / "index") if where == "local" else f"memory://index-{tmp_path.name}"


def _publish(root, feats, version="v1", **kw):
    index = build_index(feats)
    return publish(root, index, _gallery(feats), {"model_version": version}, **kw)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_backfill_build_does_not_serve_until_promoted_and_rolls_back(tmp_path, where):
    root = _root(tmp_path, where)
    feats = _uniform(300)
    with pytest.raises(FileNotFoundError, match="nothing to roll back"):
        rollback(root)
    first = _publish(root, feats[:200])
    with pytest.raises(ValueError, match=f"serves build {first} and has no previous build"):
        rollback(root)
    second = _publish(root, feats, version="v2", activate=False)
    assert current_build(root) == first
    assert SearchIndex.load(root).index.ntotal == 200  # readers stay on the serving build
    builds = list_builds(root)
    assert [b["build_id"] for b in builds] == [first, second]  # oldest first
    flags = [(b["model_version"], b["active"], b["served"]) for b in builds]
    assert flags == [("v1", True, True), ("v2", False, False)]
    assert builds[0]["created"] < builds[1]["created"]
    assert latest_unserved_build(root) == second

    promote(root, second)
    assert current_build(root) == second and SearchIndex.load(root).version == "v2"
    assert read_pointer(root)["previous"] == first
    with pytest.raises(FileNotFoundError, match="every complete build"):
        latest_unserved_build(root)
    assert rollback(root) == first and current_build(root) == first
    assert SearchIndex.load(root).index.ntotal == 200
    assert rollback(root) == second  # a second rollback undoes the first
    promote(root, second)  # serving already: nothing changes
    assert read_pointer(root)["previous"] == first
    with pytest.raises(FileNotFoundError, match="no complete build 'nope'"):
        promote(root, "nope")


def test_publish_refuses_a_gallery_that_does_not_match_the_index(tmp_path):
    feats = _uniform(100)
    with pytest.raises(ValueError, match="gallery has 50 rows but the index 100"):
        publish(str(tmp_path), build_index(feats), _gallery(feats[:50]), {"model_version": "v1"})


@pytest.mark.parametrize("crash_at", ["_file_entry", "put_if_match"])  # before the manifest / before the swap
@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_crash_before_the_pointer_swap_leaves_readers_on_the_old_build(tmp_path, monkeypatch, where, crash_at):
    root = _root(tmp_path, where)
    feats = _uniform(300)
    first = _publish(root, feats[:100])

    def crash(*args, **kwargs):
        raise OSError("the machine died")

    monkeypatch.setattr(publish_mod, crash_at, crash)
    with pytest.raises(OSError, match="machine died"):
        _publish(root, feats, version="v2")
    monkeypatch.undo()
    assert current_build(root) == first
    loaded = SearchIndex.load(root)
    assert loaded.index.ntotal == 100 and loaded.version == "v1"
    listed = list_builds(root)
    if crash_at == "_file_entry":  # index and id map written, no manifest: not a build
        assert [b["build_id"] for b in listed] == [first]
    else:  # a complete build that never served: promotable later
        assert [b["active"] for b in listed] == [True, False]
        promote(root, listed[1]["build_id"])
        assert SearchIndex.load(root).index.ntotal == 300


# --- loading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mmap_load_equals_normal_load(tmp_path, kind):
    feats, queries = _catalogue(n_items=200)
    root = str(tmp_path / "index")
    index = build_index(feats, IndexConfig(kind=kind, **SANE[kind]))
    build_id = publish(root, index, _gallery(feats), {"model_version": "v1"})
    mapped = SearchIndex.load(root, mmap=True)
    read = SearchIndex.load(root, build_id, mmap=False)
    assert (mapped.load_mode, read.load_mode) == ("mmap", "memory")
    if kind.startswith("ivf"):  # the inverted lists really are file-backed
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped.index).invlists)
        assert type(lists).__name__ == "OnDiskInvertedLists"
    for a, b in zip(mapped.search(queries, 10), read.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mapped.search(queries, 10)[1], index.search(queries, 10)[1])


def test_remote_build_is_cached_by_build_id_then_mapped(tmp_path):
    root = f"memory://index-{tmp_path.name}"
    feats, queries = _catalogue(n_items=100)
    build_id = _publish(root, feats)
    cache = tmp_path / "cache"
    loaded = SearchIndex.load(root, cache_dir=cache)
    assert loaded.load_mode == "mmap" and (cache / build_id / "index.faiss").is_file()
    expected = build_index(feats).search(queries, 10)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], expected[1])
    fs = publish_mod.fsspec.filesystem("memory")
    fs.rm(f"/index-{tmp_path.name}/builds/{build_id}/index.faiss")
    again = SearchIndex.load(root, cache_dir=cache)  # served from the cache, not downloaded again
    np.testing.assert_array_equal(again.search(queries, 10)[1], expected[1])


def test_the_cache_keeps_the_builds_used_last(tmp_path):
    root = f"memory://index-{tmp_path.name}"
    feats = _uniform(100)
    cache = tmp_path / "cache"
    builds = [_publish(root, feats[: 50 + 10 * i], version=f"v{i}") for i in range(4)]

    def cached():
        return {d.name for d in cache.iterdir()}

    for i, build_id in enumerate(builds[:3]):
        SearchIndex.load(root, build_id, cache_dir=cache)
        os.utime(cache / build_id / "index.faiss", (1000 + i, 1000 + i))  # file times apart, whatever the clock
    assert cached() == set(builds[1:3])  # the first was deleted when the third came in
    (cache / "download-under-way").mkdir()  # a folder without an index.faiss is left alone
    again = SearchIndex.load(root, builds[1], cache_dir=cache)  # a cache hit: now the build used last
    assert again.index.ntotal == 60
    SearchIndex.load(root, builds[3], cache_dir=cache)
    assert cached() == {builds[1], builds[3], "download-under-way"}
    os.utime(cache / builds[1] / "index.faiss", (2000, 2000))
    assert prune_index_cache(cache, keep=1, current=builds[1]) == []  # the build in use is never deleted
    assert prune_index_cache(cache, keep=1) == [builds[1]]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_index_cache(cache, keep=0)


def test_a_corrupt_download_is_refused(tmp_path):
    root = f"memory://index-{tmp_path.name}"
    feats = _uniform(100)
    build_id = _publish(root, feats)
    fs = publish_mod.fsspec.filesystem("memory")
    path = f"/index-{tmp_path.name}/builds/{build_id}/index.faiss"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with pytest.raises(OSError, match="sha256"):
        SearchIndex.load(root, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / build_id).iterdir())  # no partial file left behind


def test_an_index_that_cannot_be_mapped_is_read(tmp_path, monkeypatch, caplog):
    feats = _uniform(500)
    sq = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(feats)
    sq.add(feats)
    faiss.write_index(sq, str(tmp_path / "sq.faiss"))
    index, mode = read_index_file(tmp_path / "sq.faiss")
    assert mode == "memory" and index.ntotal == 500

    ivf = build_index(feats, IndexConfig(kind="ivf_flat", nlist=8, nprobe=2))
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    both = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC  # faiss 1.15 refuses this pair for IVF lists
    monkeypatch.setattr("clothret.index.search.mmap_flags", lambda path: both)
    with caplog.at_level("WARNING", logger="clothret.index.search"):
        index, mode = read_index_file(tmp_path / "ivf.faiss")
    assert mode == "memory" and "cannot memory-map" in caplog.text
    np.testing.assert_array_equal(index.search(feats[:20], 5)[1], ivf.search(feats[:20], 5)[1])
