"""The real catalogue-refresh flow on a tiny synthetic catalogue, a real local Dask cluster and a real
temporary Prefect server."""

import json
import shutil

import numpy as np
import pytest

from clothret.datasets.catalogue import ManifestEntry, file_sha256, read_manifest, write_manifest
from clothret.demo import build_catalogue
from clothret.index.search import SearchIndex
from clothret.refresh import RefreshConfig
from clothret.store.feature_store import committed_segments, read_segment, segment_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalogue(tiny_workdir, tmp_path_factory):
    """The tiny validation split's shop images plus one corrupt file and one missing file."""
    root = tmp_path_factory.mktemp("catalogue")
    manifest = str(root / "manifest.jsonl")
    build_catalogue(str(tiny_workdir / "data" / "validation"), manifest)
    entries = read_manifest(manifest)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff this is not a jpeg")
    entries.append(ManifestEntry("zz-corrupt", str(corrupt), file_sha256(str(corrupt)), "broken-item"))
    entries.append(ManifestEntry("zz-missing", str(root / "missing.jpg"), "0" * 64, "gone-item"))
    write_manifest(entries, manifest)
    return root, manifest, entries


def test_refresh_builds_searchable_index_and_reuses_segments(prefect_server, tiny_workdir, catalogue):
    from flows.catalogue_refresh import catalogue_refresh

    root, manifest, entries = catalogue
    config = RefreshConfig(
        manifest_url=manifest,
        bundle_url=str(tiny_workdir / "models" / "bundle.yaml"),
        store_url=str(root / "store"),
        index_url=str(root / "index"),
        segment_size=4,
    )
    first = catalogue_refresh(config)
    n_segments = -(-len(entries) // 4)
    assert first["segments_computed"] == n_segments and first["segments_reused"] == 0
    assert first["images_failed"] == 2  # the corrupt and the missing file; everything else went through
    assert first["n_images"] <= len(entries) - 2 and first["n_boxes"] > 0
    assert first["recall_at_10"] == pytest.approx(1.0)

    version = first["model_version"]
    seg_ids = committed_segments(config.store_url, version)
    assert sorted(seg_ids) == sorted(first["segments"]) and len(seg_ids) == n_segments
    last = read_segment(segment_url(config.store_url, version, sorted(first["segments"])[-1]))
    statuses = dict(zip(last.image_ids, zip(last.status, last.reasons)))
    if "zz-corrupt" in statuses:
        assert statuses["zz-corrupt"] == ("bad_input", "not a recognised image (JPEG, PNG, WebP, BMP, GIF, TIFF, ...)")

    index = SearchIndex.load(config.index_url)
    assert index.index.ntotal == first["n_boxes"] and index.version == version
    # a gallery feature finds itself first
    seg = read_segment(segment_url(config.store_url, version, seg_ids[0]))
    sims, rows = index.search(seg.features[:1].astype(np.float32), 3)
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-2)

    second = catalogue_refresh(config)
    assert second["segments_reused"] == n_segments and second["segments_computed"] == 0
    assert second["plan"]["skipped_bad_input"] == 2  # bad input waits for a new content hash
    assert second["build_id"] != first["build_id"] and second["n_boxes"] == first["n_boxes"]


def test_demo_end_to_end_on_tiny_data(prefect_server, tiny_workdir, tiny_recipe, tmp_path, capsys):
    from clothret.cli import _run_refresh_flow, main
    from clothret.demo import run_demo

    workdir = tmp_path / "demo"
    shutil.copytree(tiny_workdir / "data", workdir / "data")  # same data: synthesis is skipped
    shutil.copytree(tiny_workdir / "models", workdir / "models")  # same recipe: training is reused
    summary = run_demo(workdir, _run_refresh_flow, segment_size=8, **tiny_recipe)
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == summary
    for key in ("acc@1", "acc@10", "n_gallery_images", "n_gallery_boxes", "n_query_items", "seconds"):
        assert key in summary
    assert 0.0 <= summary["acc@1"] <= summary["acc@10"] <= 1.0
    assert summary["n_query_items"] > 0 and summary["n_gallery_images"] > 0
    assert summary["timings"]["train"] < 30  # reused, not retrained
    html = (workdir / "report.html").read_text()
    assert "<img" in html and "acc@10" in html
    submission = json.loads((workdir / "submission.json").read_text())
    assert submission and len(submission[0]["gallery_image_id"]) == min(20, summary["n_gallery_boxes"])

    from clothret.evaluation.split import EvaluateConfig
    from flows.evaluate import evaluate

    scores = evaluate(EvaluateConfig(split_url=str(workdir / "data" / "validation"),
                                     bundle_url=str(workdir / "models" / "bundle.yaml"), index_url=str(workdir / "index")))
    assert scores["acc@10"] == pytest.approx(summary["acc@10"]) and scores["build_id"] == summary["index_build"]

    # the demo's models change (another embedder recipe): its index switches version by backfill + promote
    recipe = {**tiny_recipe, "embedder_overrides": {**tiny_recipe["embedder_overrides"], "steps": 9}}
    changed = run_demo(workdir, _run_refresh_flow, segment_size=8, **recipe)
    assert changed["model_version"] != summary["model_version"]
    assert SearchIndex.load(str(workdir / "index")).version == changed["model_version"]
    summary = run_demo(workdir, _run_refresh_flow, segment_size=8, **recipe)  # and the plain refresh again
    assert summary["model_version"] == changed["model_version"]

    query = sorted((workdir / "data" / "validation" / "image").iterdir())[-1]
    code = main(["search", str(query), "--bundle", str(workdir / "models" / "bundle.yaml"),
                 "--index", str(workdir / "index"), "--top", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"{query.stem}: category" in out and " 1. item p" in out


def test_acc_gate_refuses_a_build_worse_than_the_serving_one(tiny_workdir, tmp_path):
    """The library steps of a refresh without Prefect, with an evaluation split configured."""
    from clothret import refresh
    from clothret.errors import PublishRefused
    from clothret.index.publish import build_url, current_build

    manifest = str(tmp_path / "manifest.jsonl")
    split = str(tiny_workdir / "data" / "validation")
    build_catalogue(split, manifest)
    config = RefreshConfig(
        manifest_url=manifest, bundle_url=str(tiny_workdir / "models" / "bundle.yaml"),
        store_url=str(tmp_path / "store"), index_url=str(tmp_path / "index"), segment_size=8,
        device="cpu", eval_split_url=split, max_acc_drop=0.05,
    )
    plan = refresh.plan(config)
    counts = [refresh.embed_segment(s, bundle_url=config.bundle_url, version=plan.version, device="cpu")
              for s in plan.new]
    refresh.commit_catalog(config, plan, [c["segment_id"] for c in counts])
    first = refresh.build_and_publish(config, plan.version)
    assert first["eval_split"] == split and 0.0 <= first["acc@1"] <= first["acc@10"] <= 1.0
    assert "serving_acc@10" not in first  # nothing served before

    # the serving build claims a far better Acc@10 on the same split: the next build is refused
    manifest_file = tmp_path / "index" / "builds" / first["build_id"] / "manifest.json"
    assert build_url(config.index_url, first["build_id"]) == str(manifest_file.parent)
    on_disk = json.loads(manifest_file.read_text())
    on_disk["acc@10"] = first["acc@10"] + 0.2
    manifest_file.write_text(json.dumps(on_disk))
    with pytest.raises(PublishRefused, match=rf"Acc@10 {first['acc@10']:.4f} .* {on_disk['acc@10']:.4f}"):
        refresh.build_and_publish(config, plan.version)
    assert current_build(config.index_url) == first["build_id"]

    lenient = config.model_copy(update={"max_acc_drop": 0.5})
    second = refresh.build_and_publish(lenient, plan.version)
    assert second["serving_acc@10"] == pytest.approx(on_disk["acc@10"])
    assert current_build(config.index_url) == second["build_id"]
