"""Post-processing through `clothret search` and `clothret evaluate`, on a published build of the tiny models:
the build's own settings by default, flags that override them, and gallery-side settings stored with a build."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from clothret.cli import main
from clothret.datasets.catalogue import manifest_from_records
from clothret.datasets.deepfashion2 import read_split
from clothret.evaluation.split import evaluate_split
from clothret.index.gallery import Gallery
from clothret.index.publish import publish, read_build_manifest
from clothret.index.search import SearchIndex
from clothret.models import load_bundle, load_models
from clothret.pipeline.segment import run_segment
from clothret.rerank import PostProcessConfig, postprocess_build, with_postprocessing


def _gallery(tiny_workdir: Path, models) -> Gallery:
    entries = manifest_from_records(read_split(str(tiny_workdir / "data" / "validation"), source="shop"))
    seg = run_segment(entries, models)
    image_ids, item_ids = np.asarray(seg.image_ids), np.asarray(seg.item_ids)
    return Gallery(seg.features.astype(np.float32), image_ids[seg.box_image], item_ids[seg.box_image], seg.boxes,
                   seg.categories, seg.scores)


def _publish(root: str, gallery: Gallery, version: str, config: PostProcessConfig) -> str:
    gallery, finish, fields = postprocess_build(gallery, config)
    flat = faiss.IndexFlatIP(gallery.features.shape[1])
    flat.add(gallery.features)
    return publish(root, finish(flat), gallery, {"model_version": version, **fields})


@pytest.fixture(scope="module")
def built(tiny_workdir, tmp_path_factory):
    bundle = str(tiny_workdir / "models" / "bundle.yaml")
    models = load_models(load_bundle(bundle))
    gallery = _gallery(tiny_workdir, models)
    root = tmp_path_factory.mktemp("indexes")
    plain = str(root / "plain")
    _publish(plain, gallery, models.version, PostProcessConfig())
    whitened = str(root / "whitened")
    _publish(whitened, gallery, models.version, PostProcessConfig(whiten=True, whiten_dim=16, qe_k=1))
    return {"bundle": bundle, "models": models, "plain": plain, "whitened": whitened,
            "split": str(tiny_workdir / "data" / "validation")}


def _evaluate(built, index: str, out: Path, *flags: str) -> tuple[dict, list]:
    assert main(["evaluate", "--split", built["split"], "--bundle", built["bundle"], "--index", index,
                 "--out", str(out), *flags]) == 0
    return json.loads((out / "scores.json").read_text()), json.loads((out / "submission.json").read_text())


def test_evaluate_flags_post_process_like_the_library(built, tmp_path, capsys):
    scores, entries = _evaluate(built, built["plain"], tmp_path / "plain")
    assert scores["postprocess"] == "none"
    assert any(len(set(e["gallery_image_id"])) < len(e["gallery_image_id"]) for e in entries)  # boxes of one image

    flags = ["--rerank", "--k1", "6", "--k2", "2", "--qe", "2", "--dedupe", "image"]
    scores, entries = _evaluate(built, built["plain"], tmp_path / "post", *flags)
    assert scores["postprocess"] == "αQE-2 + k-reciprocal + dedupe-image"
    assert all(len(set(e["gallery_image_id"])) == len(e["gallery_image_id"]) for e in entries)
    options = PostProcessConfig(qe_k=2, rerank=True, k1=6, k2=2, dedupe="image")
    expected = evaluate_split(built["split"], built["models"], with_postprocessing(SearchIndex.load(built["plain"]), options))
    assert {k: v for k, v in scores.items() if k.startswith("acc@")} == {
        k: v for k, v in expected.scores.items() if k.startswith("acc@")}
    assert [e["gallery_image_id"] for e in entries] == [
        [int(g) for g in r.gallery_image_ids[:20]] for r in expected.results]
    capsys.readouterr()


def test_a_build_made_with_whitening_searches_with_it(built, tmp_path, capsys):
    manifest = read_build_manifest(built["whitened"], SearchIndex.load(built["whitened"]).manifest["build_id"])
    assert manifest["postprocess"]["config"]["whiten_dim"] == 16 and manifest["postprocess"]["indexed_dim"] == 16
    scores, _ = _evaluate(built, built["whitened"], tmp_path / "w")
    assert scores["postprocess"] == "whiten-16 + αQE-1"
    scores, _ = _evaluate(built, built["whitened"], tmp_path / "w2", "--no-postprocess")
    assert scores["postprocess"] == "whiten-16"  # the whitening is in the build's vectors; query-side options off
    assert main(["evaluate", "--split", built["split"], "--bundle", built["bundle"], "--index", built["whitened"],
                 "--out", str(tmp_path / "w3"), "--whiten-dim", "8"]) == 2
    assert "same gallery-side settings" in capsys.readouterr().err


def test_search_prints_post_processed_results(built, tiny_workdir, capsys):
    image = sorted((tiny_workdir / "data" / "validation" / "image").glob("*.jpg"))[-1]
    assert main(["search", str(image), "--bundle", built["bundle"], "--index", built["plain"], "--rerank",
                 "--candidates", "30", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert " 1. item " in out and "similarity" in out


def test_evaluate_with_engine_settings(built, tmp_path):
    """``--engine`` reaches the queries' engine: in bf16 (on the CPU too; twice the detectors' speed on CPUs
    with AVX-512 BF16) the boxes move by rounding and the scores stay close to float32's."""
    plain, plain_submission = _evaluate(built, built["plain"], tmp_path / "fp32", "--engine", "autocast=fp32")
    low, low_submission = _evaluate(built, built["plain"], tmp_path / "bf16", "--engine", "autocast=bf16",
                                    "--engine", "batch_size=4")
    assert low_submission and low_submission != plain_submission  # another precision ran
    for k in ("acc@1", "acc@10"):
        assert abs(low[k] - plain[k]) <= 0.1, (k, low[k], plain[k])
