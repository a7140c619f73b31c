"""Incremental planning against the catalog: new, changed, deleted, failed images, on a real store."""

import numpy as np
import pytest

from clothret.datasets.catalogue import ManifestEntry
from clothret.index.gallery import gather_gallery
from clothret.pipeline.plan import RefreshPlan, plan_refresh
from clothret.pipeline.result import SegmentResult
from clothret.store.catalog import read_catalog, write_catalog
from clothret.store.feature_store import write_segment

VERSION = "v1"


def _entry(i, sha="a"):
    return ManifestEntry(f"img{i:04d}", f"/nowhere/{i}.jpg", f"{sha}{i:063x}", f"item{i}")


def _fake_embed(entries, statuses):
    """One box per ok image; its feature encodes the image number and its content hash's first letter."""
    ok = [i for i, e in enumerate(entries) if statuses.get(e.image_id, "ok") == "ok"]
    feats = np.zeros((len(ok), 4), np.float16)
    for row, i in enumerate(ok):
        feats[row] = [1.0, int(entries[i].image_id[3:]) / 1000, ord(entries[i].sha256[0]) / 1000, 0]
    return SegmentResult(
        image_ids=[e.image_id for e in entries], item_ids=[e.item_id for e in entries],
        sha256=[e.sha256 for e in entries],
        status=[statuses.get(e.image_id, "ok") for e in entries],
        reasons=["" if statuses.get(e.image_id, "ok") == "ok" else "test" for e in entries],
        box_image=np.array(ok, np.int32), boxes=np.zeros((len(ok), 4), np.float32),
        scores=np.ones(len(ok), np.float32), categories=np.ones(len(ok), np.int16), features=feats,
    )


def _run(store, entries, *, statuses=None, segment_size=4, retry_failed=False) -> RefreshPlan:
    """Plan, 'embed' the new segments, commit the catalog: a refresh without models."""
    plan = plan_refresh(entries, version=VERSION, store_url=store, segment_size=segment_size, retry_failed=retry_failed)
    for seg in plan.new:
        if seg.segment_id not in plan.committed:
            write_segment(seg.url, _fake_embed(seg.entries, statuses or {}))
    write_catalog(store, [s.segment_id for s in plan.segments], plan.deleted, VERSION)
    return plan


def _gallery_images(store):
    catalog = read_catalog(store, VERSION)
    gallery = gather_gallery(store, VERSION, catalog.segments, deleted_image_ids=catalog.deleted)
    return {str(i): float(f[2]) for i, f in zip(gallery.image_ids, gallery.features)}


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")


def test_first_refresh_embeds_everything_then_nothing(store):
    entries = [_entry(i) for i in range(10)]
    first = _run(store, entries)
    assert len(first.new) == 3 and not first.live and first.reasons == {"new": 10, "deleted": 0}
    assert sorted(_gallery_images(store)) == [e.image_id for e in entries]
    again = _run(store, entries)
    assert not again.new and [s.segment_id for s in again.live] == [s.segment_id for s in first.new]
    assert again.reasons["unchanged"] == 10


def test_added_images_cost_one_new_segment_and_keep_the_rest(store):
    entries = [_entry(i) for i in range(100)]
    first = _run(store, entries, segment_size=25)
    added = _run(store, entries + [_entry(500)], segment_size=25)
    assert [len(s.entries) for s in added.new] == [1]
    assert {s.segment_id for s in added.live} == {s.segment_id for s in first.new}
    assert "img0500" in _gallery_images(store)


def test_changed_image_is_re_embedded_and_its_old_entry_hidden(store):
    entries = [_entry(i) for i in range(8)]
    _run(store, entries)
    changed = entries[:3] + [_entry(3, sha="b")] + entries[4:]
    plan = _run(store, changed)
    assert plan.reasons["changed"] == 1 and [e.image_id for s in plan.new for e in s.entries] == ["img0003"]
    images = _gallery_images(store)
    assert len(images) == 8 and images["img0003"] == pytest.approx(ord("b") / 1000, abs=1e-3)


def test_deleted_images_leave_the_index_and_empty_segments_leave_the_catalog(store):
    entries = [_entry(i) for i in range(8)]
    first = _run(store, entries)
    plan = _run(store, entries[:2])  # half of the first segment and the whole second one are gone
    assert not plan.new and [s.segment_id for s in plan.live] == [first.new[0].segment_id]
    assert plan.deleted == {"img0002", "img0003"}  # still held by the live first segment
    assert sorted(_gallery_images(store)) == ["img0000", "img0001"]
    back = _run(store, entries[:3])  # a deleted image listed again is new again
    assert back.reasons["new"] == 1 and back.deleted == {"img0003"}
    assert sorted(_gallery_images(store)) == ["img0000", "img0001", "img0002"]


def test_transient_failures_are_retried_bad_input_waits_for_a_new_hash(store):
    entries = [_entry(i) for i in range(8)]
    _run(store, entries, statuses={"img0001": "transient", "img0002": "bad_input"})
    assert sorted(_gallery_images(store)) == [e.image_id for e in entries if e.image_id not in ("img0001", "img0002")]
    retry = _run(store, entries, statuses={"img0001": "transient"})  # fails again
    assert [e.image_id for s in retry.new for e in s.entries] == ["img0001"]
    assert retry.reasons["retry_transient"] == 1 and retry.reasons["skipped_bad_input"] == 1
    again = _run(store, entries)  # a retry of a retry gets a new segment id, so it really runs
    assert [e.image_id for s in again.new for e in s.entries] == ["img0001"]
    assert again.new[0].segment_id != retry.new[0].segment_id and not again.committed
    assert "img0001" in _gallery_images(store)
    fixed = _run(store, entries[:2] + [_entry(2, sha="b")] + entries[3:])
    assert fixed.reasons["changed"] == 1 and "img0002" in _gallery_images(store)


def test_retry_failed_reruns_only_failed_images(store):
    entries = [_entry(i) for i in range(6)]
    _run(store, entries, statuses={"img0004": "bad_input"})
    plan = _run(store, entries + [_entry(9)], retry_failed=True)
    assert [e.image_id for s in plan.new for e in s.entries] == ["img0004"]
    assert plan.reasons == {"unchanged": 5, "retry_bad_input": 1, "waiting_new": 1, "deleted": 0}
    assert "img0004" in _gallery_images(store) and "img0009" not in _gallery_images(store)


def test_interrupted_refresh_plans_the_same_segments(store):
    entries = [_entry(i) for i in range(10)]
    _run(store, entries[:5])
    plan = plan_refresh(entries, version=VERSION, store_url=store, segment_size=2)
    write_segment(plan.new[0].url, _fake_embed(plan.new[0].entries, {}))  # crash before the catalog commit
    rerun = plan_refresh(entries, version=VERSION, store_url=store, segment_size=2)
    assert [s.segment_id for s in rerun.new] == [s.segment_id for s in plan.new]
    assert rerun.committed == {plan.new[0].segment_id} and len(rerun.new) == 3
