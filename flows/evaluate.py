"""Evaluate an index build on a split in the DeepFashion2 layout and show the figures in the UI."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from clothret.evaluation.split import EvaluateConfig
from tasks.evaluate import evaluate as evaluate_task


@flow(name="evaluate")
def evaluate(config: EvaluateConfig) -> dict:
    """Acc@k of the serving build (or ``config.build_id``) on ``config.split_url``."""
    scores = evaluate_task(config)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in scores.items() if k.startswith("acc@"))
    create_markdown_artifact(
        key="evaluation",
        markdown=f"Build `{scores['build_id']}` on `{config.split_url}`\n\n| | |\n|---|---|\n{rows}\n"
        f"| query items | {scores['n_query_items']} |\n| missed by detection | {scores['n_missed']} |",
        description="DeepFashion2 retrieval accuracy",
    )
    return scores
