"""Several writers on one store: create-only and compare-and-swap writes, segment commits, self-healing
plans, the catalog and index pointer by compare-and-swap, the lease, and `clothret verify` — on local
disk, ``memory://`` and a real S3 endpoint (moto's server)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import fsspec
import numpy as np
import pytest
import zarr
from builders import manifest_entries, segment_result

from clothret.cli import main
from clothret.errors import SegmentDamaged, StoreBusy, StoreChanged
from clothret.index.build import build_index
from clothret.index.gallery import Gallery, gather_gallery
from clothret.index.publish import (
    build_url,
    promote,
    publish,
    publish_build,
    read_pointer,
    read_pointer_state,
    serve_new_build,
)
from clothret.pipeline.plan import plan_refresh
from clothret.refresh import RefreshConfig, commit_catalog
from clothret.store.cas import delete_if_match, put_if_absent, put_if_match, read_versioned
from clothret.store.catalog import read_catalog, swap_catalog, write_catalog
from clothret.store.feature_store import (
    ARRAYS,
    MARKER,
    check_segment,
    commit_segment,
    read_segment,
    segment_url,
    write_segment,
)
from clothret.store.lease import LeaseInfo, acquire_lease, hold_lease, lease_url, read_lease
from clothret.store.verify import DAMAGED, NO_MARKER, STRAY_ATTEMPT, UNREFERENCED, verify_store

VERSION = "v1"
WHERE = ["local", "memory", "s3"]


@pytest.fixture
def root(request, tmp_path):
    """A fresh root URL on local disk, in memory, or in a fresh bucket of the S3 endpoint."""
    where = request.param
    if where == "local":
        return str(tmp_path / "root")
    if where == "memory":
        return f"memory://safety-{tmp_path.name}"
    return request.getfixturevalue("s3_bucket") + "/root"


def _run_threads(n, fn):
    """Run ``fn(i)`` in ``n`` threads released together; returns the results in order (errors re-raised)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- create-only and compare-and-swap ----------------------------------------------------------------------


@pytest.mark.parametrize("root", WHERE, indirect=True)
def test_put_if_absent_has_exactly_one_winner(root):
    url = f"{root}/dir/marker"
    payloads = [json.dumps({"writer": i, "pad": "x" * 5000 * (i + 1)}).encode() for i in range(6)]
    for rounds in range(3):
        won = _run_threads(6, lambda i: put_if_absent(f"{url}{rounds}", payloads[i]))
        assert won.count(True) == 1, won
        data, _ = read_versioned(f"{url}{rounds}")
        assert data == payloads[won.index(True)]  # the winner's content, whole
    assert put_if_absent(f"{url}0", b"late") is False


@pytest.mark.parametrize("root", WHERE, indirect=True)
def test_put_if_match_refuses_a_stale_token_and_delete_checks_it_too(root):
    url = f"{root}/CURRENT"
    assert read_versioned(url) == (None, None)
    assert put_if_match(url, b"one", None)
    assert not put_if_match(url, b"again", None)  # None: only when absent
    data, first = read_versioned(url)
    assert data == b"one" and first
    assert put_if_match(url, b"two", first)
    assert not put_if_match(url, b"three", first)  # stale
    data, second = read_versioned(url)
    assert data == b"two" and second != first
    assert not delete_if_match(url, first)
    assert delete_if_match(url, second)
    assert read_versioned(url) == (None, None)
    assert not put_if_match(url, b"four", second)  # gone: nothing matches


@pytest.mark.parametrize("root", WHERE, indirect=True)
def test_compare_and_swap_loses_no_update_under_interleaving(root):
    url = f"{root}/counter.json"
    writers, increments = 4, 6

    def add(i):
        for _ in range(increments):
            while True:
                data, token = read_versioned(url)
                state = json.loads(data) if data else {"n": 0, "by": []}
                state = {"n": state["n"] + 1, "by": [*state["by"], i], "pad": "y" * 2000}
                if put_if_match(url, json.dumps(state).encode(), token):
                    break

    _run_threads(writers, add)
    final = json.loads(read_versioned(url)[0])  # never a mix of two writes: it parses
    assert final["n"] == writers * increments
    assert sorted(final["by"]) == sorted(i for i in range(writers) for _ in range(increments))


@pytest.mark.parametrize("root", WHERE, indirect=True)
def test_of_writers_who_read_the_same_version_exactly_one_swaps(root):
    url = f"{root}/pointer.json"
    assert put_if_match(url, b"start", None)
    barrier = threading.Barrier(4)

    def payload(i, round_):
        return json.dumps({"writer": i, "round": round_, "pad": "z" * 3000 * (i + 1)}).encode()

    for round_ in range(3):
        def swap(i):
            _, token = read_versioned(url)
            barrier.wait()  # every writer holds the same token now
            return put_if_match(url, payload(i, round_), token)

        won = _run_threads(4, swap)
        assert won.count(True) == 1, won
        assert read_versioned(url)[0] == payload(won.index(True), round_)


# --- segments ----------------------------------------------------------------------------------------------


def _same_as(back, result):
    return back.image_ids == result.image_ids and all(
        np.array_equal(getattr(back, name), getattr(result, name))
        for name in ("box_image", "boxes", "scores", "categories", "features")
    )


def _attempts(url):
    fs, path = fsspec.core.url_to_fs(f"{url}/attempts")
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) if fs.exists(path) else []


@pytest.mark.parametrize("root", WHERE, indirect=True)
def test_writers_of_one_segment_id_commit_exactly_one_whole_attempt(root):
    entries = manifest_entries(6)
    url = segment_url(f"{root}/store", VERSION, "seg")
    results = [segment_result(entries, seed=i) for i in range(4)]
    commits = _run_threads(4, lambda i: commit_segment(url, results[i]))
    winners = [c for c in commits if c.won]
    assert len(winners) == 1
    assert {c.attempt for c in commits} == {winners[0].attempt}  # losers use the winner's segment
    marker = json.loads(fsspec.open(f"{url}/{MARKER}").open().read())
    assert marker["attempt"] == winners[0].attempt and set(marker["arrays"]) == set(ARRAYS)
    assert _attempts(url) == [winners[0].attempt]  # the losers removed their own copies
    back = read_segment(url)
    assert _same_as(back, results[commits.index(winners[0])])  # one writer's data in full
    assert check_segment(url) is None


def _commit_in_process(url, seed, start):
    """One writer process: commit a segment of ``seed`` at ``start`` (epoch seconds)."""
    time.sleep(max(0.0, start - time.time()))
    commit = commit_segment(url, segment_result(manifest_entries(6), seed=seed))
    return commit.won, commit.attempt


def test_writer_processes_of_one_segment_id_commit_exactly_one(tmp_path):
    url = segment_url(str(tmp_path / "store"), VERSION, "seg")
    n = 3
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(n)))  # processes started and imported before the race
        start = time.time() + 1.0
        outcomes = list(pool.map(_commit_in_process, [url] * n, range(n), [start] * n))
    assert [won for won, _ in outcomes].count(True) == 1
    winner = next(i for i, (won, _) in enumerate(outcomes) if won)
    assert {attempt for _, attempt in outcomes} == set(_attempts(url)) == {outcomes[winner][1]}
    assert _same_as(read_segment(url), segment_result(manifest_entries(6), seed=winner))


# --- damaged segments: the store of issue 9 heals -------------------------------------------------------------


def _write_first_layout(url, result):
    """A segment as the first layout wrote it: arrays under the segment folder, a marker of counts."""
    group = zarr.open_group(url, mode="w", zarr_format=3)
    for name in ("image_ids", "item_ids", "sha256", "status", "reasons"):
        group.create_array(name, data=np.array(getattr(result, name), dtype=np.dtypes.StringDType()))
    for name in ("box_image", "boxes", "scores", "categories", "features"):
        group.create_array(name, data=getattr(result, name))
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/{MARKER}", json.dumps(result.counts).encode())


def _refresh(store, entries, *, layout="current", segment_size=4):
    """Plan, 'embed', commit the catalog by compare-and-swap: a refresh without models."""
    plan = plan_refresh(entries, version=VERSION, store_url=store, segment_size=segment_size)
    for i, seg in enumerate(plan.new):
        if seg.segment_id not in plan.committed:
            result = segment_result(list(seg.entries), seed=i)
            _write_first_layout(seg.url, result) if layout == "first" else write_segment(seg.url, result)
    catalog = read_catalog(store, VERSION)
    assert swap_catalog(store, catalog, [s.segment_id for s in plan.segments], plan.deleted) is not None
    return plan


def _gallery_images(store):
    catalog = read_catalog(store, VERSION)
    return set(gather_gallery(store, VERSION, catalog.segments, deleted_image_ids=catalog.deleted).image_ids)


def _remove(url):
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)


# what issue 9 found: a marker over categories, features and scores only; or one array gone
DAMAGE = {"issue": ("image_ids", "item_ids", "sha256", "status", "reasons", "box_image", "boxes"),
          "features": ("features",)}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("layout", ["first", "current"])
def test_a_damaged_live_segment_is_recomputed_under_a_new_id(tmp_path, caplog, layout, damage):
    store = str(tmp_path / "store")
    entries = manifest_entries(10)
    first = _refresh(store, entries, layout=layout)
    damaged = first.new[1]
    group = damaged.url if layout == "first" else f"{damaged.url}/attempts/{_attempts(damaged.url)[0]}"
    for name in DAMAGE[damage]:
        _remove(f"{group}/{name}")
    assert "missing" in check_segment(damaged.url)
    with pytest.raises(SegmentDamaged, match=f"segment {damaged.url} is committed but damaged"):
        read_segment(damaged.url)
    with pytest.raises(SegmentDamaged, match="damaged"):
        gather_gallery(store, VERSION, [damaged.segment_id])

    with caplog.at_level(logging.WARNING, logger="clothret"):
        healed = _refresh(store, entries)
    assert damaged.segment_id in caplog.text and "cannot be used" in caplog.text
    assert damaged.segment_id in healed.damaged
    assert [len(s.entries) for s in healed.new] == [4] and healed.reasons["recompute_damaged"] == 4
    assert healed.new[0].segment_id != damaged.segment_id
    assert {s.segment_id for s in healed.live} == {first.new[0].segment_id, first.new[2].segment_id}
    assert _gallery_images(store) == {e.image_id for e in entries}
    again = _refresh(store, entries)
    assert not again.new and not again.damaged
    assert damaged.segment_id not in read_catalog(store, VERSION).segments


def test_a_planned_segment_committed_but_damaged_gets_a_salted_id(tmp_path, caplog):
    store = str(tmp_path / "store")
    entries = manifest_entries(4)
    plan = plan_refresh(entries, version=VERSION, store_url=store, segment_size=4)
    (seg,) = plan.new
    write_segment(seg.url, segment_result(list(seg.entries)))  # an interrupted run committed it ...
    fs, path = fsspec.core.url_to_fs(seg.url)
    chunk = next(p for p in fs.find(path) if "/features/c/" in p)
    fs.pipe_file(chunk, fs.cat_file(chunk)[:-3])  # ... then a file of it was truncated
    assert "bytes where its marker says" in check_segment(seg.url)
    with caplog.at_level(logging.WARNING, logger="clothret"):
        again = plan_refresh(entries, version=VERSION, store_url=store, segment_size=4)
    salted = again.new[0].segment_id
    assert salted != seg.segment_id and not again.committed and again.reasons["recompute_damaged"] == 4
    assert "committed but damaged" in caplog.text
    assert plan_refresh(entries, version=VERSION, store_url=store, segment_size=4).new[0].segment_id == salted


# --- the catalog by compare-and-swap ------------------------------------------------------------------------


def _config(tmp_path, manifest_entries_, name="manifest.jsonl"):
    from clothret.datasets.catalogue import write_manifest

    manifest = str(tmp_path / name)
    write_manifest(manifest_entries_, manifest)
    return RefreshConfig(manifest_url=manifest, bundle_url="unused.yaml", store_url=str(tmp_path / "store"),
                         index_url=str(tmp_path / "index"), segment_size=4)


def _embed(config, plan):
    for i, seg in enumerate(plan.new):
        if seg.segment_id not in plan.committed:
            write_segment(seg.url, segment_result(list(seg.entries), seed=i))
    return [s.segment_id for s in plan.new]


def _plan(config):
    from clothret.datasets.catalogue import read_manifest

    return plan_refresh(read_manifest(config.manifest_url), version=VERSION, store_url=config.store_url,
                        segment_size=config.segment_size)


def test_two_planners_of_the_same_work_commit_one_catalog(tmp_path):
    config = _config(tmp_path, manifest_entries(8))
    a, b = _plan(config), _plan(config)  # both from generation 0
    done = _embed(config, a)
    assert _embed(config, b) == done  # b finds a's segments committed (the same ids)
    first = commit_catalog(config, a, done)
    assert first.generation == 1
    second = commit_catalog(config, b, done)  # b lost the swap, planned again: nothing left to do
    assert second.generation == 1 and second.segments == first.segments


def test_a_planner_whose_work_is_committed_elsewhere_re_plans_and_commits(tmp_path):
    entries = manifest_entries(12)
    base = _config(tmp_path, entries[:8])
    commit_catalog(base, _plan(base), _embed(base, _plan(base)))
    a = _config(tmp_path, entries[:8] + entries[8:10], "a.jsonl")  # adds two images
    b = _config(tmp_path, entries[:8] + entries[10:12], "b.jsonl")  # adds two others
    plan_a, plan_b = _plan(a), _plan(b)
    done_b = _embed(b, plan_b)
    commit_catalog(a, plan_a, _embed(a, plan_a))
    catalog = commit_catalog(b, plan_b, done_b)  # b planned again on a's catalog: its segment is committed
    assert catalog.generation == 3 and catalog.writer["pid"] > 0
    assert _gallery_images(b.store_url) == {e.image_id for e in entries[:8] + entries[10:12]}  # b's manifest
    assert plan_a.new[0].segment_id not in catalog.segments  # a's two images are gone with their segment


def test_a_planner_that_cannot_merge_fails_with_store_changed(tmp_path):
    entries = manifest_entries(12)
    base = _config(tmp_path, entries[:8])
    commit_catalog(base, _plan(base), _embed(base, _plan(base)))
    a = _config(tmp_path, entries[:10], "a.jsonl")
    b = _config(tmp_path, entries[:8] + entries[10:12], "b.jsonl")
    plan_a, plan_b = _plan(a), _plan(b)
    commit_catalog(a, plan_a, _embed(a, plan_a))
    # b's segment failed: against a's catalog it would need a segment nobody committed
    with pytest.raises(StoreChanged, match="catalog of version v1 .* is at generation 2 .* planned from "
                                           "generation 1.* re-run the refresh"):
        commit_catalog(b, plan_b, [])
    assert read_catalog(b.store_url, VERSION).generation == 2


def test_catalog_swaps_under_interleaving_lose_no_segment(tmp_path):
    store = str(tmp_path / "store")
    write_catalog(store, [], [], VERSION)

    def add(i):
        while True:
            current = read_catalog(store, VERSION)
            if swap_catalog(store, current, [*current.segments, f"seg{i}"], current.deleted, run=f"r{i}"):
                return

    _run_threads(6, add)
    catalog = read_catalog(store, VERSION)
    assert sorted(catalog.segments) == [f"seg{i}" for i in range(6)] and catalog.generation == 7


# --- the index pointer by compare-and-swap ------------------------------------------------------------------


def _uniform(n, seed):
    feats = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _gallery(feats):
    n = len(feats)
    return Gallery(feats, np.array([f"img{i}" for i in range(n)]), np.array([f"item{i}" for i in range(n)]),
                   np.zeros((n, 4), np.float32), np.ones(n, np.int16), np.ones(n, np.float32))


def _write(root, seed, generation, version=VERSION):
    feats = _uniform(50, seed)
    manifest = {"model_version": version, "catalog_generation": generation}
    return publish(root, build_index(feats), _gallery(feats), manifest, activate=False)


@pytest.mark.parametrize("root", ["local", "s3"], indirect=True)
def test_a_build_from_an_older_catalog_does_not_replace_a_newer_one(root):
    first = _write(root, 0, 1)
    promote(root, first)
    since = read_pointer_state(root)  # both runs read the pointer before building
    newer, older = _write(root, 1, 3), _write(root, 2, 2)
    assert serve_new_build(root, newer, since).active
    out = serve_new_build(root, older, since)  # lost the swap to a build from a newer catalog
    assert not out.active and "catalog generation 3" in out.note and read_pointer(root)["build_id"] == newer
    newest = _write(root, 3, 4)
    assert serve_new_build(root, newest, since).active  # lost too, but its catalog is newer: swapped again
    pointer = read_pointer(root)
    assert pointer["build_id"] == newest and pointer["previous"] == newer
    assert pointer["served"] == [first, newer, newest]


@pytest.mark.parametrize("root", ["local", "memory"], indirect=True)
def test_concurrent_promotions_keep_the_whole_history(root):
    builds = [_write(root, i, i) for i in range(5)]
    _run_threads(5, lambda i: promote(root, builds[i]))
    pointer = read_pointer(root)
    assert sorted(pointer["served"]) == sorted(builds)  # every swap is in the history, none lost
    assert pointer["build_id"] == pointer["served"][-1] and pointer["previous"] == pointer["served"][-2]


def test_publish_build_serves_and_records_the_catalog_generation(tmp_path):
    root = str(tmp_path / "index")
    feats = _uniform(50, 0)
    out = publish_build(root, build_index(feats), _gallery(feats), {"model_version": VERSION, "catalog_generation": 5})
    assert out.active and read_pointer(root)["build_id"] == out.build_id
    with fsspec.open(f"{build_url(root, out.build_id)}/manifest.json") as f:
        assert json.load(f)["catalog_generation"] == 5


# --- the lease -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["local", "s3"], indirect=True)
def test_a_second_holder_meets_store_busy_naming_the_first(root):
    store = f"{root}/store"
    with hold_lease(store, VERSION, "run-a") as held:
        assert read_lease(store, VERSION).holder == "run-a"
        with pytest.raises(StoreBusy, match=rf"store {store} version {VERSION} is being refreshed by run run-a on "
                                            rf"host .* \(pid \d+\) since .*; it expires at"):
            acquire_lease(store, VERSION, "run-b")
        assert held.renew() and not held.lost
    assert read_lease(store, VERSION) is None  # released
    with hold_lease(store, VERSION, "run-b"):
        assert read_lease(store, VERSION).holder == "run-b"


def test_an_expired_lease_is_taken_over_and_its_old_holder_leaves_it(tmp_path):
    store = str(tmp_path / "store")
    old = acquire_lease(store, VERSION, "run-a", ttl_s=0.2)
    time.sleep(0.3)
    new = acquire_lease(store, VERSION, "run-b", ttl_s=60)
    assert not old.renew() and old.lost
    old.release()  # not ours any more: left alone
    assert read_lease(store, VERSION).holder == "run-b"
    new.release()
    assert read_lease(store, VERSION) is None


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    import socket

    store = str(tmp_path / "store")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    far = "2999-01-01T00:00:00+00:00"
    info = LeaseInfo("killed-run", socket.gethostname(), dead.pid, "2020-01-01T00:00:00+00:00", far)
    assert put_if_absent(lease_url(store, VERSION), info.to_json())
    with hold_lease(store, VERSION, "rerun"):
        assert read_lease(store, VERSION).holder == "rerun"
    elsewhere = LeaseInfo("other", "another-host", dead.pid, "2020-01-01T00:00:00+00:00", far)
    assert put_if_absent(lease_url(store, VERSION), elsewhere.to_json())
    with pytest.raises(StoreBusy, match="run other on host another-host"):
        acquire_lease(store, VERSION, "rerun")  # a process on another host may be alive


def test_the_heartbeat_keeps_a_short_lease_alive(tmp_path):
    store = str(tmp_path / "store")
    with hold_lease(store, VERSION, "run-a", ttl_s=0.6) as held:
        first_expiry = held.info.expires
        time.sleep(1.5)  # over twice the time to live
        with pytest.raises(StoreBusy):
            acquire_lease(store, VERSION, "run-b")
        assert held.info.expires > first_expiry and not held.lost


# --- clothret verify -------------------------------------------------------------------------------------------


def _messy_store(store):
    """A store with one of everything verify looks for, and one healthy referenced segment."""
    plan = _refresh(store, manifest_entries(8))
    good, damaged = plan.new
    _remove(f"{damaged.url}/attempts/{_attempts(damaged.url)[0]}/features")
    unreferenced = segment_url(store, VERSION, "unreferenced")
    write_segment(unreferenced, segment_result(manifest_entries(3, "u")))
    _put(f"{good.url}/attempts/0123456789abcdef/zarr.json", b"{}")  # a loser that crashed before cleaning up
    no_marker = segment_url(store, VERSION, "crashed")
    _put(f"{no_marker}/attempts/feedface/zarr.json", b"{}")
    return good, damaged, unreferenced, no_marker


def _put(url, data):
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


@pytest.mark.parametrize("root", ["local", "s3"], indirect=True)
def test_verify_reports_and_repairs(root, capsys):
    store = f"{root}/store"
    good, damaged, unreferenced, no_marker = _messy_store(store)
    report = verify_store(store)
    kinds = {(f.kind, f.url.split("/segments/")[1].split("/")[0]) for f in report.findings}
    assert kinds == {(DAMAGED, damaged.segment_id), (UNREFERENCED, "unreferenced"),
                     (STRAY_ATTEMPT, good.segment_id), (NO_MARKER, "crashed")}
    assert "missing" in next(f.reason for f in report.findings if f.kind == DAMAGED)
    assert main(["verify", "--store", store]) == 1
    assert "damaged" in capsys.readouterr().out

    young = verify_store(store, repair=True)  # everything is seconds old: kept
    assert not any(f.removed for f in young.findings) and all("younger" in f.skipped for f in young.findings)
    with hold_lease(store, VERSION, "a-running-refresh"):
        busy = verify_store(store, repair=True, min_age_s=0)
    assert not any(f.removed for f in busy.findings) and "a-running-refresh" in " ".join(busy.notes)

    assert main(["verify", "--store", store, "--repair", "--min-age", "0"]) == 0
    assert check_segment(good.url) is None and read_segment(good.url).image_ids
    assert _attempts(good.url) == [json.loads(fsspec.open(f"{good.url}/{MARKER}").open().read())["attempt"]]
    fs, _ = fsspec.core.url_to_fs(store)
    assert not fs.exists(fsspec.core.url_to_fs(unreferenced)[1]) and not fs.exists(fsspec.core.url_to_fs(no_marker)[1])
    left = verify_store(store)  # the catalog still lists the removed damaged segment until a refresh
    assert [f.kind for f in left.findings] == ["missing"]
    _refresh(store, manifest_entries(8))
    assert verify_store(store).clean and read_lease(store, VERSION) is None


def test_verify_repairs_a_damaged_segment_of_the_first_layout(tmp_path):
    store = str(tmp_path / "store")
    plan = _refresh(store, manifest_entries(8), layout="first")
    damaged = plan.new[0]
    _remove(f"{damaged.url}/image_ids")
    (finding,) = verify_store(store).findings
    assert finding.kind == DAMAGED and "arrays image_ids are missing" in finding.reason
    assert verify_store(store, repair=True, min_age_s=0).clean
    assert check_segment(damaged.url) == f"not committed (no {MARKER} marker)"
    assert check_segment(plan.new[1].url) is None  # the healthy one stays
