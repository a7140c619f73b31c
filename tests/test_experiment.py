"""clothret experiment at its tiny size, end to end: the JSON's shape, numbers in range, the same numbers for
the same seed, the report, and the experiment flow with its table artifacts."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from clothret.cli import main
from clothret.experiments.run import ExperimentConfig, run_experiment
from clothret.experiments.tables import TABLES

pytestmark = pytest.mark.slow

TIMING_KEYS = {"train_seconds", "infer_ms_per_image", "fusion_ms_per_image", "ms_per_query"}


def _without_timings(tables: dict) -> dict:
    return {name: [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows] if isinstance(rows, list)
            else {k: v for k, v in rows.items() if k not in TIMING_KEYS} for name, rows in tables.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["experiment", "--size", "tiny", "--out", str(out), "--threads", "1", "--samples", "2"]) == 0
    return out, json.loads((out / "experiment.json").read_text()), printed.getvalue()


def test_tiny_experiment_writes_every_table_with_numbers_in_range(tiny_run):
    out, summary, printed = tiny_run
    tables = summary["tables"]
    assert set(TABLES) <= set(tables)
    assert [r["detector"].split("-")[0] for r in tables["detection"]] == ["fcos", "retinanet"]
    assert [r["n"] for r in tables["fusion"]] == [1, 2]
    assert [r["configuration"] for r in tables["embedders_gt"]] == [
        "gem", "cgd-gm", "cgd-gms", "cgd-gm-softmax", "r18d-cgd-gm", "concat-a-b"]
    assert [r["configuration"] for r in tables["one_vs_concat"]] == [
        "A: ResNet-10-T CGD", "B: ResNet-18-D CGD", "A + B concatenated"]
    options = [r["option"] for r in tables["postprocess"]]
    assert options[0] == "none" and "αQE (k=2, α=3)" in options and "DBA (k=2, α=3)" in options
    assert any(o.startswith("PCA whitening to ") for o in options) and "k-reciprocal (k1=20, k2=6, λ=0.3)" in options
    assert "one box per gallery image (not in the paper)" in options
    assert [(r["max_boxes_per_image"], r["rerank"]) for r in tables["box_count"]] == [
        (cap, rr) for cap in ("all", 5, 3, 1) for rr in (False, True)]
    sizes = [r["gallery_boxes"] for r in tables["box_count"][::2]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == tables["one_vs_concat"][-1]["gallery_boxes"]

    for name in ("detection", "fusion"):
        for row in tables[name]:
            assert 0.0 <= row["ap"] <= row["ap50"] <= 1.0 and 0.0 <= row["recall50"] <= 1.0
    for row in tables["embedders_gt"]:
        assert 0.0 <= row["acc@1"] <= row["acc@10"] <= 1.0
    for name in ("one_vs_concat", "postprocess", "box_count"):
        for row in tables[name]:
            assert 0.0 <= row["acc@1"] <= row["acc@10"] <= row["acc@20"] <= 1.0
    curves = summary["curves"]
    assert curves["ks"] == list(range(1, 21)) and summary["best"] in curves["acc"] and summary["worst"] in curves["acc"]
    for values in curves["acc"].values():
        assert len(values) == 20 and values == sorted(values) and 0.0 <= values[0] and values[-1] <= 1.0
    assert summary["data"]["query_items"] > 0 and summary["config"]["size"] == "tiny"

    page = (out / "report.html").read_text()
    assert page.count("<svg") == 1 and page.count("<polyline") == len(curves["acc"])
    assert "Table 3" in page and "Table 6" in page and "Table 7" in page
    assert "<h3>Best: " in page and "<h3>Worst: " in page and "data:image/jpeg;base64," in page
    assert "Post-processing on A + B (Table 7)" in printed and f"{out}/report.html" in printed


def test_the_same_seed_gives_the_same_numbers(tiny_run, tmp_path):
    _, first, _ = tiny_run
    second = run_experiment(ExperimentConfig(out_dir=str(tmp_path), size="tiny", threads=1, n_samples=0))
    assert _without_timings(second["tables"]) == _without_timings(first["tables"])
    assert second["curves"] == first["curves"]


def test_experiment_flow_publishes_the_tables(tiny_run, prefect_server):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.experiment import experiment

    out, summary, _ = tiny_run  # the flow reuses the data and the trained models in the same work folder
    result = experiment(ExperimentConfig(out_dir=str(out), size="tiny", threads=1, n_samples=1))
    assert _without_timings(result["tables"]) == _without_timings(summary["tables"])

    async def read(key: str):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    artifacts = run_coro_as_sync(read("experiment-postprocess"))
    assert artifacts and artifacts[0].type == "table"
    rows = artifacts[0].data if isinstance(artifacts[0].data, list) else json.loads(artifacts[0].data)
    assert rows[0]["option"] == "none" and {"Acc@1", "Acc@10"} <= set(rows[0])
