"""Train one torchvision detector on a data set in the DeepFashion2 layout; weights + model card on any URL."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from clothret.detection.train_job import TrainDetectorJob
from tasks.train import train_detector as train_detector_task


@flow(name="train-detector")
def train_detector(config: TrainDetectorJob) -> dict:
    """Train ``config.model`` on ``config.data_url`` and write ``config.weights_url`` (a retry resumes)."""
    metrics = train_detector_task(config)
    rows = [
        ("weights", f"`{metrics['weights_url']}`"),
        ("detector", f"{config.model.architecture} / {config.model.backbone}"),
        ("data", f"`{metrics['split_url']}`: {metrics['n_images']} images, {metrics['n_items']} items"),
        ("steps", f"{metrics['steps']} (resumed from {metrics['resumed_from']})"),
        ("time", f"{metrics['seconds']:.0f} s, {metrics['images_per_s']:.1f} images/s"),
        ("final loss", f"{metrics['final_loss']:.4f}"),
    ]
    create_markdown_artifact(
        key="train-detector",
        markdown="| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n",
        description="detector training",
    )
    return metrics
