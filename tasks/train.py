"""Task that trains one detector on a split in the DeepFashion2 layout (resumable: a retry continues)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clothret.detection.train_job import TrainDetectorJob, run_train_job
from tasks.retry import RETRY_OPTIONS


@task(name="train-detector", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def train_detector(config: TrainDetectorJob) -> dict:
    logger = get_run_logger()
    logger.info("training %s/%s on %s -> %s", config.model.architecture, config.model.backbone, config.data_url,
                config.weights_url)
    metrics = run_train_job(config, progress=False)
    logger.info(
        "trained %d steps (from step %d) on %d images in %.0f s, %.1f img/s, final loss %.3f",
        metrics["steps"], metrics["resumed_from"], metrics["n_images"], metrics["seconds"], metrics["images_per_s"],
        metrics["final_loss"],
    )
    return metrics
