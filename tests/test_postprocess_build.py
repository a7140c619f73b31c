"""Post-processing stored with an index build by the refresh steps: whitening in the build's index (queries
whitened by the index itself), query-side defaults in its manifest, the Acc@10 gate measured with them."""

from __future__ import annotations

import numpy as np

from clothret.demo import build_catalogue
from clothret.evaluation.split import evaluate_split
from clothret.index.gallery import gather_gallery
from clothret.index.publish import read_build_manifest
from clothret.index.search import SearchIndex
from clothret.models import load_bundle, load_models
from clothret.refresh import RefreshConfig, build_and_publish, commit_catalog, embed_segment, plan
from clothret.rerank import PostProcessConfig, load_index
from clothret.rerank.search import PostProcessedIndex
from clothret.rerank.whitening import apply_whitening, learn_pca_whitening
from clothret.store.catalog import read_catalog


def test_a_refresh_build_stores_its_post_processing(tiny_workdir, tmp_path):
    split = str(tiny_workdir / "data" / "validation")
    manifest_url = str(tmp_path / "manifest.jsonl")
    build_catalogue(split, manifest_url)
    options = PostProcessConfig(whiten=True, whiten_dim=12, rerank=True, k1=6, k2=2, candidates=40)
    config = RefreshConfig(manifest_url=manifest_url, bundle_url=str(tiny_workdir / "models" / "bundle.yaml"),
                           store_url=str(tmp_path / "store"), index_url=str(tmp_path / "index"), segment_size=100,
                           device="cpu", eval_split_url=split, postprocess=options)
    refresh_plan = plan(config)
    done = [embed_segment(s, bundle_url=config.bundle_url, version=refresh_plan.version, device="cpu")["segment_id"]
            for s in refresh_plan.new]
    commit_catalog(config, refresh_plan, done)
    built = build_and_publish(config, refresh_plan.version)
    assert built["postprocess"]["config"] == options.model_dump(mode="json")
    assert built["postprocess"]["indexed_dim"] == 12
    models = load_models(load_bundle(config.bundle_url))
    assert read_build_manifest(config.index_url, built["build_id"])["dim"] == models.dim  # queries: raw features

    # the published index whitens raw queries itself, like the gallery's whitening learned on the raw features
    catalog = read_catalog(config.store_url, refresh_plan.version)
    raw = gather_gallery(config.store_url, refresh_plan.version, catalog.segments).features
    whitening = learn_pca_whitening(raw, dim=12)
    queries = raw[:7] + np.float32(0.01)
    plain = SearchIndex.load(config.index_url)
    expected = apply_whitening(queries, whitening) @ apply_whitening(raw, whitening).T
    np.testing.assert_array_equal(plain.search(queries, 5)[1], np.argsort(-expected, axis=1, kind="stable")[:, :5])

    # loading the build searches with its query-side settings; the gate measured the same figures
    served = load_index(config.index_url)
    assert isinstance(served, PostProcessedIndex) and served.options == options
    assert evaluate_split(split, models, served).scores["acc@10"] == built["acc@10"]


def test_refresh_and_backfill_take_the_build_post_processing_from_the_command_line(tmp_path, capsys):
    from clothret.cli import _refresh_config, build_parser, main

    common = ["--manifest", "m.jsonl", "--bundle", "b.yaml", "--store", "s", "--index", "i"]
    args = build_parser().parse_args(["refresh", *common, "--whiten", "--whiten-dim", "64", "--qe", "2", "--dedupe", "image"])
    config = _refresh_config(args)
    assert config.postprocess == PostProcessConfig(whiten=True, whiten_dim=64, qe_k=2, dedupe="image")
    backfill = _refresh_config(build_parser().parse_args(["backfill", *common, "--rerank", "--k1", "8"]))
    assert backfill.postprocess == PostProcessConfig(rerank=True, k1=8)
    assert _refresh_config(build_parser().parse_args(["refresh", *common])).postprocess == PostProcessConfig()

    # a setting that needs another is refused in one line, before anything runs
    assert main(["refresh", *common, "--whiten-dim", "64"]) == 2
    assert "whiten_dim is set but whiten is False" in capsys.readouterr().err
