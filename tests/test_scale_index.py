"""Simulated models, and the streamed index build and in-place update, each against a brute-force reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from clothret.index.build import exact_search
from clothret.index.config import IndexConfig
from clothret.index.gallery import gather_gallery
from clothret.index.publish import build_folder, build_url, current_build, publish_build, read_build_manifest
from clothret.index.scan import scan_gallery
from clothret.index.search import SearchIndex
from clothret.index.streamed import ROWS_FILE, TRUTH_FILE, build_streamed, read_previous, update_streamed
from clothret.index.truth import GroundTruth
from clothret.models import load_bundle, load_models
from clothret.pipeline.segment import run_segment
from clothret.refresh import RefreshConfig, build_and_publish, commit_catalog, embed_segment, plan
from clothret.simulated import simulated_manifest, write_simulated_bundle
from clothret.store.catalog import read_catalog
from clothret.store.feature_store import segment_id, segment_url, write_segment

ROOT = Path(__file__).resolve().parents[1]
DIM = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    return write_simulated_bundle(str(tmp_path_factory.mktemp("sim")), dim=DIM, n_clusters=16, latent_dim=8)


@pytest.fixture(scope="module")
def models(bundle):
    return load_models(load_bundle(bundle))


# ------------------------------------------------------------------------------------------------ simulated models


def test_simulated_version_is_a_content_hash(tmp_path, bundle):
    again = write_simulated_bundle(str(tmp_path / "a"), dim=DIM, n_clusters=16, latent_dim=8)
    other = write_simulated_bundle(str(tmp_path / "b"), dim=DIM, n_clusters=16, latent_dim=8, seed=1)
    version = load_bundle(bundle).version()
    assert len(version) == 16
    assert load_bundle(again).version() == version  # same settings elsewhere: the same version
    assert load_bundle(other).version() != version  # another seed: other weights, another version


def test_simulated_segment_reads_no_file_and_is_a_pure_function_of_the_entries(models):
    entries = simulated_manifest(300, images_per_item=3)
    assert not Path(entries[0].uri.removeprefix("sim://")).exists()
    a = run_segment(entries, models)
    b = run_segment(list(reversed(entries)), models)
    assert a.counts == {"images": 300, "images_ok": 300, "images_failed": 0, "boxes": len(a.boxes)}
    assert 300 <= len(a.boxes) <= 300 * 5 and a.features.dtype == np.float16 and a.features.shape[1] == DIM
    assert set(np.unique(a.box_image)) == set(range(300))  # every image has at least one box
    np.testing.assert_allclose(np.linalg.norm(a.features.astype(np.float32), axis=1), 1, atol=2e-3)
    first = {i: a.features[a.box_image == i] for i in (0, 7)}
    rev = {i: b.features[b.box_image == 299 - i] for i in (0, 7)}
    for i in first:  # an image's boxes do not depend on its neighbours in the segment
        np.testing.assert_array_equal(first[i], rev[i])
    changed = simulated_manifest(1, start=7, revision=1)
    c = run_segment(changed, models)
    assert not np.array_equal(c.features[0], first[7][0])  # a new content hash: new features


def test_simulated_boxes_of_one_item_are_near_each_other(models):
    entries = simulated_manifest(600, images_per_item=3)
    result = run_segment(entries, models)
    feats = result.features.astype(np.float32)
    first_box = np.flatnonzero(np.r_[True, np.diff(result.box_image) != 0])  # box 0 of each image
    item = np.array([int(entries[i].item_id[2:]) for i in result.box_image[first_box]])
    sims = feats[first_box] @ feats[first_box].T
    same = (item[:, None] == item[None, :]) & ~np.eye(len(item), dtype=bool)
    other = item[:, None] != item[None, :]
    assert sims[same].mean() > 0.7 > sims[other].mean() + 0.5


# ------------------------------------------------------------------------------------------------ streamed builds


def _store(tmp_path, models, version, batches):
    """Write each batch of entries as one segment; returns the store URL and the segment ids."""
    store = str(tmp_path / "store")
    ids = []
    for entries in batches:
        seg = segment_id(version, entries)
        write_segment(segment_url(store, version, seg), run_segment(entries, models))
        ids.append(seg)
    return store, ids


def _exhaustive(config: IndexConfig, nlist: int) -> IndexConfig:
    return config.model_copy(update={"nlist": nlist, "nprobe": nlist})


def test_streamed_build_matches_the_in_memory_gallery_and_exact_search(tmp_path, models):
    version = models.version
    entries = simulated_manifest(1500)
    store, ids = _store(tmp_path, models, version, [entries[:500], entries[500:1000], entries[1000:]])
    # the last segment re-embeds images 900..999: their entries in segment 2 are stale; 5 images are deleted
    changed = simulated_manifest(100, start=900, revision=1)
    seg = segment_id(version, changed)
    write_segment(segment_url(store, version, seg), run_segment(changed, models))
    ids.append(seg)
    deleted = {e.image_id for e in entries[10:15]}

    scan = scan_gallery(store, version, ids, deleted_image_ids=deleted)
    reference = gather_gallery(store, version, ids, deleted_image_ids=deleted)
    assert len(scan) == len(reference)
    np.testing.assert_array_equal(scan.id_map.image_ids, reference.image_ids)
    np.testing.assert_array_equal(scan.id_map.boxes, reference.boxes)

    config = _exhaustive(IndexConfig(kind="ivf_flat", recall_sample=100, train_sample=1000, seed=2), 16)
    built = build_streamed(scan, config, tmp_path)
    assert built.figures["recall_at_10"] == 1.0 and built.figures["streamed"] and built.figures["nprobe"] == 16
    truth = GroundTruth.from_bytes((tmp_path / TRUTH_FILE).read_bytes())
    sims, rows = exact_search(reference.features, truth.queries, 10)
    np.testing.assert_array_equal(truth.rows[:, :10], rows)
    np.testing.assert_allclose(truth.sims[:, :10], sims, rtol=1e-5, atol=1e-6)
    got_sims, got_rows = built.index.search(truth.queries, 10)  # the memory-mapped index read back
    assert built.index.ntotal == len(reference)
    assert np.mean(got_rows == rows) > 0.99  # exhaustive IVF = exact search, up to float ties


def test_update_in_place_equals_a_fresh_build(tmp_path, models):
    version = models.version
    entries = simulated_manifest(2000)
    store, ids = _store(tmp_path, models, version, [entries[i : i + 500] for i in range(0, 2000, 500)])
    config = _exhaustive(IndexConfig(kind="ivf_sq", recall_sample=100, train_sample=2000, seed=1), 32)
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = build_streamed(scan_gallery(store, version, ids), config, first_dir)
    manifest = {**first.figures, "segments": list(ids), "build_id": "first"}

    # a refresh: 20 images changed (new segment), 30 deleted, 200 new, the second segment dropped entirely
    changed = simulated_manifest(20, start=100, revision=1)
    new = simulated_manifest(200, start=2000)
    for batch in (changed, new):
        seg = segment_id(version, batch)
        write_segment(segment_url(store, version, seg), run_segment(batch, models))
        ids.append(seg)
    live = [ids[0], ids[2], ids[3], ids[4], ids[5]]
    deleted = {e.image_id for e in entries[1500:1530]}
    scan = scan_gallery(store, version, live, deleted_image_ids=deleted)
    previous = read_previous({"index.faiss": first_dir / "index.faiss", ROWS_FILE: first_dir / ROWS_FILE,
                              TRUTH_FILE: first_dir / TRUTH_FILE}, manifest)
    out = tmp_path / "second"
    out.mkdir()
    updated = update_streamed(previous, scan, config, out)
    assert updated.figures["updated_from"] == "first" and updated.figures["rows_added"] > 0
    assert updated.figures["rows_removed"] >= 500  # the dropped segment's rows and the changed/deleted ones

    reference = gather_gallery(store, version, live, deleted_image_ids=deleted)
    assert updated.index.ntotal == len(reference)
    carried = GroundTruth.from_bytes((out / TRUTH_FILE).read_bytes())
    sims, rows = exact_search(reference.features, carried.queries, 10)
    known = carried.known(10)
    assert known.mean() > 0.9
    np.testing.assert_array_equal(carried.rows[known, :10], rows[known])  # carried forward = recomputed
    got_sims, got_rows = updated.index.search(carried.queries, 10)
    assert np.mean(got_rows == rows) > 0.99  # renumbered rows point at the right vectors
    np.testing.assert_allclose(got_sims, sims, atol=1e-3)


def test_refresh_streams_a_large_gallery_and_updates_it_in_place(tmp_path, bundle):
    manifest_url = str(tmp_path / "manifest.jsonl")
    from clothret.datasets.catalogue import write_manifest

    entries = simulated_manifest(3000)
    write_manifest(entries, manifest_url)
    config = RefreshConfig(
        manifest_url=manifest_url, bundle_url=bundle, store_url=str(tmp_path / "store"),
        index_url=str(tmp_path / "index"), segment_size=700, device="cpu",
        index=IndexConfig(stream_above=0, exact_below=1000, recall_sample=100, train_sample=2000),
    )

    def refresh() -> dict:
        p = plan(config)
        done = [embed_segment(s, bundle_url=bundle, version=p.version)["segment_id"] for s in p.new]
        commit_catalog(config, p, done)
        return build_and_publish(config, p.version)

    first = refresh()
    assert first["streamed"] and first["index_kind"] == "ivf_flat" and first["recall_at_10"] >= 0.95
    assert first["updated_from"] is None and first["active"]
    write_manifest(entries[5:] + simulated_manifest(40, start=3000), manifest_url)
    second = refresh()
    assert second["updated_from"] == first["build_id"] and second["rows_added"] > 0 and second["rows_removed"] > 0
    assert current_build(config.index_url) == second["build_id"]
    files = read_build_manifest(config.index_url, second["build_id"])["files"]
    assert set(files) == {"index.faiss", "idmap.npz", ROWS_FILE, TRUTH_FILE}
    leftovers = [p.name for p in (tmp_path / "index" / "builds").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the build folders were published or removed
    loaded = SearchIndex.load(config.index_url)
    assert loaded.load_mode == "mmap" and loaded.index.ntotal == second["n_boxes"]
    catalog = read_catalog(config.store_url, second["model_version"])
    reference = gather_gallery(config.store_url, second["model_version"], catalog.segments,
                               deleted_image_ids=catalog.deleted)
    np.testing.assert_array_equal(loaded.gallery.image_ids, reference.image_ids)
    _, rows = loaded.search(reference.features[:50], 1)
    assert np.mean(rows[:, 0] == np.arange(50)) > 0.9  # a gallery box finds itself


def test_publish_from_files_uploads_checksummed_files(tmp_path, models):
    version = models.version
    entries = simulated_manifest(400)
    store, ids = _store(tmp_path, models, version, [entries])
    root = f"memory://scale-{tmp_path.name}/index"
    with build_folder(root) as folder:
        built = build_streamed(scan_gallery(store, version, ids), IndexConfig(recall_sample=50), folder)
        published = publish_build(root, built.index, built.gallery, {"model_version": version}, files=built.files)
    assert not folder.exists()
    manifest = read_build_manifest(root, published.build_id)
    import fsspec

    fs, path = fsspec.core.url_to_fs(build_url(root, published.build_id))
    for name, entry in manifest["files"].items():
        assert fs.size(f"{path}/{name}") == entry["bytes"]
    assert published.build_id.endswith(manifest["files"]["index.faiss"]["sha256"][:8])
    loaded = SearchIndex.load(root, cache_dir=tmp_path / "cache")
    assert loaded.index.ntotal == built.index.ntotal


def test_a_build_is_updated_in_place_only_for_the_same_settings_and_a_small_change():
    from clothret.index.streamed import updatable

    manifest = {"index_kind": "ivf_sq", "streamed": True, "index_config": IndexConfig().model_dump(mode="json"),
                "trained_rows": 1000, "rows_added_since_training": 100}
    assert updatable(manifest, IndexConfig(), 50) is None
    assert "settings changed" in updatable(manifest, IndexConfig(nprobe=3), 50)
    assert "added since it was trained" in updatable(manifest, IndexConfig(), 150)
    assert "not one of" in updatable({**manifest, "index_kind": "hnsw"}, IndexConfig(), 1)
    assert "not built streamed" in updatable({**manifest, "streamed": False}, IndexConfig(), 1)


def test_bench_scale_smallest_size_prints_a_table_and_the_json_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--n-boxes", "20000", "--segment-size", "2000",
         "--stream-above", "0", "--queries", "200", "--autofaiss", "skip", "--processes", "1",
         "--workdir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in ("n_boxes", "recall_at_10", "build_seconds", "autofaiss_build_seconds", "autofaiss_recall_at_10",
                "plan_seconds", "incremental_seconds", "full_seconds", "peak_rss_gb", "search_p99_ms"):
        assert key in summary
    assert 15000 < summary["n_boxes"] < 25000 and summary["recall_at_10"] >= 0.95
    assert summary["incremental_plan"]["new"] > 0 and summary["incremental_plan"]["deleted"] > 0
    assert summary["incremental_plan"]["changed"] > 0
    assert summary["search_p99_ms"] > 0 and summary["peak_rss_gb"] > 0
    assert any(line.startswith("index build+check+publish") for line in lines)


def test_many_lists_use_an_hnsw_coarse_quantizer_and_still_reach_exact_answers(tmp_path, models):
    version = models.version
    entries = simulated_manifest(1200)
    store, ids = _store(tmp_path, models, version, [entries])
    scan = scan_gallery(store, version, ids)
    config = _exhaustive(IndexConfig(kind="ivf_sq", recall_sample=80, train_sample=2000, hnsw_quantizer_above=16), 24)
    built = build_streamed(scan, config, tmp_path)
    assert built.figures["quantizer"] == "hnsw" and built.figures["recall_at_10"] == 1.0
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(built.index).quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat)


def test_sized_lists_keep_their_entries_and_answer_as_plain_adds():
    """Lists sized before the adds (no reallocation) hold the same entries as lists grown by plain adds,
    also when some lists already hold entries (an update of a build read back from its file)."""
    from clothret.index.reserve import add_assigned, assign, reserve_lists

    rng = np.random.default_rng(3)
    dim, nlist = 16, 8
    first, second = (rng.standard_normal((n, dim)).astype(np.float32) for n in (600, 400))

    def trained() -> faiss.Index:
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.train(first)
        return index

    plain, sized = trained(), trained()
    plain.add(first)
    plain.add_with_ids(second, np.arange(5000, 5400))
    lists = assign(sized, first)
    reserve_lists(sized, np.bincount(lists, minlength=nlist))
    add_assigned(sized, first, lists)
    lists = assign(sized, second)
    reserve_lists(sized, np.bincount(lists, minlength=nlist))  # lists with entries keep them
    add_assigned(sized, second, lists, np.arange(5000, 5400))  # a temporary: held for the call

    a, b = plain.invlists, sized.invlists
    for list_no in range(nlist):
        size = a.list_size(list_no)
        assert b.list_size(list_no) == size
        np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_ids(list_no), size),
                                      faiss.rev_swig_ptr(b.get_ids(list_no), size))
        np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_codes(list_no), size * a.code_size),
                                      faiss.rev_swig_ptr(b.get_codes(list_no), size * b.code_size))
    plain.nprobe = sized.nprobe = nlist
    for x, y in zip(plain.search(second[:20], 5), sized.search(second[:20], 5)):
        np.testing.assert_array_equal(x, y)


def test_ground_truth_from_blocks_equals_exact_search_and_bounds_the_rest():
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((900, 12)).astype(np.float32)
    queries = rng.standard_normal((7, 12)).astype(np.float32)
    truth = GroundTruth.empty(queries, depth=16)
    truth.update(vectors[:300], 0)  # rows 0..299 from a first row
    truth.update(vectors[300:310], 300)  # a block narrower than the depth
    scattered = np.arange(310, 900)[::-1].copy()  # rows given one by one, in any order
    truth.update(vectors[scattered], scattered)
    sims = queries @ vectors.T
    order = np.argsort(-sims, axis=1, kind="stable")
    np.testing.assert_array_equal(truth.rows, order[:, :16])
    np.testing.assert_allclose(truth.sims, np.take_along_axis(sims, order[:, :16], 1), rtol=1e-6)
    np.testing.assert_allclose(truth.bound, np.take_along_axis(sims, order[:, 16:17], 1)[:, 0], rtol=1e-6)


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq", "ivf_pq"])
def test_streamed_ivf_builds_hold_every_row_once_in_the_list_its_quantizer_picks(tmp_path, models, kind):
    """The two-pass streamed build (rows assigned first, lists sized, then added) leaves each row in the
    list the coarse quantizer assigns it, once, and searches (all lists probed) like exact search where the
    vectors are stored as they are."""
    from clothret.index.reserve import assign

    entries = simulated_manifest(900)
    store, ids = _store(tmp_path, models, models.version, [entries[:450], entries[450:]])
    scan = scan_gallery(store, models.version, ids)
    settings = {"pq_m": 8} if kind == "ivf_pq" else {}
    config = _exhaustive(IndexConfig(kind=kind, recall_sample=60, train_sample=900, seed=5, min_recall=0.5, **settings), 8)
    built = build_streamed(scan, config, tmp_path)
    ivf = faiss.extract_index_ivf(built.index)
    where = np.full(len(scan), -1)
    for list_no in range(ivf.nlist):
        size = ivf.invlists.list_size(list_no)
        rows = faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size).copy() if size else np.empty(0, np.int64)
        assert (where[rows] == -1).all()
        where[rows] = list_no
    features = gather_gallery(store, models.version, ids).features
    np.testing.assert_array_equal(where, assign(built.index, features))
    assert built.figures["recall_at_10"] >= {"ivf_flat": 1.0, "ivf_sq": 0.99, "ivf_pq": 0.5}[kind]  # float16: near-ties
