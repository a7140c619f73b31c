"""Train one embedder on a data set in the DeepFashion2 layout; weights + model card (and a new bundle) on any URL."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from clothret.embedding.train_job import TrainEmbedderJob
from tasks.train import train_embedder as train_embedder_task


@flow(name="train-embedder")
def train_embedder(config: TrainEmbedderJob) -> dict:
    """Train ``config.model`` on ``config.data_url``, write ``config.weights_url`` and, when set, ``config.bundle_url``."""
    metrics = train_embedder_task(config)
    rows = [
        ("weights", f"`{metrics['weights_url']}`"),
        ("embedder", f"{metrics['name']}: {config.model.backbone}, descriptors {config.model.descriptors}, "
                     f"dim {config.model.dim}, {config.model.input_size} px"),
        ("data", f"`{metrics['split_url']}`: {metrics['n_images']} images, {metrics['num_crops']} crops of "
                 f"{metrics['num_identities']} identities"),
        ("steps", f"{metrics['steps']} x {config.train.p_identities} x {config.train.k_instances} crops"),
        ("time", f"{metrics['seconds']:.0f} s, {metrics['train_images_per_second']:.0f} crops/s"),
        ("loss", f"{metrics['loss_first']:.4f} -> {metrics['loss_final']:.4f}"),
    ]
    if "bundle_url" in metrics:
        rows.append(("bundle", f"`{metrics['bundle_url']}` (model version {metrics['model_version']}): backfill it, "
                               "then promote the build"))
    create_markdown_artifact(
        key="train-embedder",
        markdown="| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n",
        description="embedder training",
    )
    return metrics
