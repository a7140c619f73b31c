"""Tasks that train one detector (resumable: a retry continues) or one embedder on a split in the DeepFashion2 layout."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from clothret.detection.train_job import TrainDetectorJob, run_train_job
from clothret.embedding.train_job import TrainEmbedderJob, run_train_embedder_job
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


@task(name="train-embedder", cache_policy=NO_CACHE, **RETRY_OPTIONS)
def train_embedder(config: TrainEmbedderJob) -> dict:
    logger = get_run_logger()
    logger.info("training embedder %s on %s -> %s", config.embedder_name(), config.data_url, config.weights_url)
    metrics = run_train_embedder_job(config, progress=False)
    logger.info(
        "trained %d steps on %d crops of %d identities in %.0f s, %.0f img/s, loss %.3f -> %.3f%s",
        metrics["steps"], metrics["num_crops"], metrics["num_identities"], metrics["seconds"],
        metrics["train_images_per_second"], metrics["loss_first"], metrics["loss_final"],
        f"; bundle {metrics['bundle_url']} (model version {metrics['model_version']})" if "bundle_url" in metrics else "",
    )
    return metrics
