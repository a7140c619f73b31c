"""Tasks of the experiment flow: one per stage (each returns its result and its seconds), and the tables as
artifacts."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from clothret.experiments import run
from clothret.experiments.tables import TABLES, table_rows


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - t0, 1)


@task(name="experiment-data", cache_policy=NO_CACHE)
def prepare_data(config: run.ExperimentConfig):
    data, seconds = _timed(run.prepare_data, config)
    get_run_logger().info("data: %s", data.summary())
    return data, seconds


@task(name="experiment-detectors", cache_policy=NO_CACHE)
def detectors(config: run.ExperimentConfig, data: run.ExperimentData):
    stage, seconds = _timed(run.detector_stage, config, data)
    get_run_logger().info("detectors: %s", [(r["detector"], r["ap50"]) for r in stage.detectors])
    return stage, seconds


@task(name="experiment-embedders", cache_policy=NO_CACHE)
def embedders(config: run.ExperimentConfig, data: run.ExperimentData):
    stage, seconds = _timed(run.embedder_stage, config, data)
    get_run_logger().info("embedders (GT-box Acc@10): %s", {k: round(v["acc@10"], 3) for k, v in stage.table.items()})
    return stage, seconds


@task(name="experiment-retrieval", cache_policy=NO_CACHE)
def retrieval(config: run.ExperimentConfig, data, detection, embedder_stage):
    stage, seconds = _timed(run.retrieval_stage, config, data, detection, embedder_stage)
    get_run_logger().info("retrieval (Acc@10): %s", {r["configuration"]: r["acc@10"] for r in stage.one_vs_concat})
    return stage, seconds


@task(name="experiment-report", cache_policy=NO_CACHE)
def report(config: run.ExperimentConfig, data, detection, embedder_stage, retrieval_stage, seconds: dict) -> dict:
    summary = run.summarise(config, data, detection, embedder_stage, retrieval_stage, seconds)
    paths = run.write_outputs(config, summary, data, retrieval_stage)
    for key, (title, _) in TABLES.items():
        create_table_artifact(key=f"experiment-{key.replace('_', '-')}", table=table_rows(key, summary["tables"][key]),
                              description=title)
    create_markdown_artifact(
        key="experiment", description="experiment outputs",
        markdown=f"Best: **{summary['best']}**; worst: {summary['worst']}\n\n"
                 f"Report `{paths['report']}`, figures `{paths['json']}`",
    )
    get_run_logger().info("experiment written to %s", paths["report"])
    return {**paths, "best": summary["best"], "worst": summary["worst"], "tables": summary["tables"]}
