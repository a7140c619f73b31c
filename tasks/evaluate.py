"""Task that scores one index build on an evaluation split."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clothret.evaluation.split import EvaluateConfig, evaluate_build
from tasks.retry import RETRY_OPTIONS


@task(name="evaluate-build", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def evaluate(config: EvaluateConfig) -> dict:
    scores = evaluate_build(config)
    get_run_logger().info(
        "build %s on %s: %s", scores["build_id"], config.split_url,
        ", ".join(f"{k}={v:.4f}" for k, v in scores.items() if k.startswith("acc@")),
    )
    return scores
