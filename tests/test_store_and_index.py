import numpy as np
import pytest
from builders import manifest_entries, segment_result

from clothret.detection.types import Detections
from clothret.index.build import build_index, exact_search
from clothret.index.gallery import gather_gallery
from clothret.index.publish import current_build
from clothret.index.rebuild import rebuild_and_publish
from clothret.index.search import SearchIndex, top_items
from clothret.pipeline.plan import plan_refresh
from clothret.store.feature_store import (
    committed_segments,
    is_committed,
    read_segment,
    segment_id,
    segment_url,
    write_segment,
)


def _entries(n, prefix="img"):
    return manifest_entries(n, prefix, root="/nowhere")


_segment = segment_result


@pytest.mark.parametrize("root", ["local", "memory"])
def test_segment_round_trip_and_commit_marker(tmp_path, root):
    store = str(tmp_path / "store") if root == "local" else f"memory://store-{tmp_path.name}"
    entries = _entries(5)
    seg_id = segment_id("v1", entries)
    assert seg_id == segment_id("v1", list(entries)) != segment_id("v2", entries)
    url = segment_url(store, "v1", seg_id)
    assert not is_committed(url)
    with pytest.raises(FileNotFoundError, match="not committed"):
        read_segment(url)
    result = _segment(entries)
    write_segment(url, result)
    assert is_committed(url)
    back = read_segment(url)
    assert back.image_ids == result.image_ids and back.status == result.status and back.reasons == result.reasons
    np.testing.assert_array_equal(back.features, result.features)
    np.testing.assert_array_equal(back.boxes, result.boxes)
    np.testing.assert_array_equal(back.box_image, result.box_image)
    assert back.features.dtype == np.float16
    assert committed_segments(store, "v1") == [seg_id]
    assert committed_segments(store, "v2") == []


def test_plan_flags_committed_segments(tmp_path):
    store = str(tmp_path / "store")
    entries = _entries(10)
    first = plan_refresh(entries, version="v1", store_url=store, segment_size=4)
    plans = first.new
    assert [len(p.entries) for p in plans] == [4, 4, 2]
    assert not first.committed
    write_segment(plans[1].url, _segment(list(plans[1].entries)))
    again = plan_refresh(list(reversed(entries)), version="v1", store_url=store, segment_size=4)
    assert [p.segment_id for p in again.new] == [p.segment_id for p in plans]
    assert again.committed == {plans[1].segment_id}
    with pytest.raises(ValueError, match="segment_size"):
        plan_refresh(entries, version="v1", store_url=store, segment_size=0)


def test_index_matches_exact_search_and_publish_swaps_pointer(tmp_path):
    store, index_root = str(tmp_path / "store"), str(tmp_path / "index")
    plans = plan_refresh(_entries(12), version="v1", store_url=store, segment_size=5).new
    for i, p in enumerate(plans):
        write_segment(p.url, _segment(list(p.entries), seed=i))
    ids = [p.segment_id for p in plans]
    gallery = gather_gallery(store, "v1", ids)
    assert len(gallery) == 9 + 9 + 3  # 5+5+2 images, two boxes each but the last of a segment
    queries = gallery.features[:7] + 0.05
    sims, rows = build_index(gallery.features).search(queries, 10)
    ref_sims, ref_rows = exact_search(gallery.features, queries, 10)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows, ref_rows)

    assert current_build(index_root) is None
    with pytest.raises(FileNotFoundError, match="no index published"):
        SearchIndex.load(index_root)
    first = rebuild_and_publish(store_url=store, version="v1", segment_ids=ids, index_root=index_root)
    assert first["recall_at_10"] == pytest.approx(1.0)
    assert current_build(index_root) == first["build_id"]
    second = rebuild_and_publish(store_url=store, version="v1", segment_ids=ids[:1], index_root=index_root)
    assert current_build(index_root) == second["build_id"] != first["build_id"]
    loaded = SearchIndex.load(index_root)
    assert loaded.index.ntotal == second["n_boxes"] and loaded.version == "v1"
    old = SearchIndex.load(index_root, first["build_id"])  # the previous build stays for rollback
    assert old.index.ntotal == first["n_boxes"]

    dets = Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([3]))
    (res,) = old.query_results("q1", dets, gallery.features[:1], k=6)
    assert res.gallery_image_ids[0] == str(gallery.image_ids[0]) and res.similarities[0] == pytest.approx(1.0, abs=1e-3)
    items = top_items(res, 6)
    assert len({i[0] for i in items}) == len(items)  # one entry per shop item
    with pytest.raises(ValueError, match="query features"):
        old.search(np.zeros((1, 3), np.float32), 5)


def test_publish_refuses_empty_gallery(tmp_path):
    with pytest.raises(ValueError, match="no committed segments"):
        gather_gallery(str(tmp_path), "v1", [])
