"""The paper's tables side by side on a DeepFashion2-layout data set; each table also as an artifact."""

from __future__ import annotations

from prefect import flow

from clothret.experiments.run import ExperimentConfig
from tasks import experiment as stages


@flow(name="experiment")
def experiment(config: ExperimentConfig) -> dict:
    """Detectors and their fusion, embedders on ground-truth boxes, detection-aware retrieval with and without
    post-processing; writes ``experiment.json`` and ``report.html`` into ``config.out_dir``."""
    data, data_s = stages.prepare_data(config)
    detection, detection_s = stages.detectors(config, data)
    embedders, embedders_s = stages.embedders(config, data)
    retrieval, retrieval_s = stages.retrieval(config, data, detection, embedders)
    seconds = {"data": data_s, "detectors": detection_s, "embedders": embedders_s, "retrieval": retrieval_s}
    return stages.report(config, data, detection, embedders, retrieval, seconds)
