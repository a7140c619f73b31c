"""Shared fixtures: a private Prefect home, a tiny synthetic data set and tiny trained models.

Everything runs locally: the Prefect API is a real temporary server, Dask clusters are real local
worker processes, nothing touches the network.
"""

import atexit
import os
import shutil
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="clothret-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("CLOTHRET_DASK_WORKERS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads made torch ~8x slower on a busy machine

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from clothret.datasets.synthetic import SyntheticSizes  # noqa: E402
pytest_plugins = ["s3_server"]  # tests/s3_server.py: s3_endpoint, s3_bucket

TINY_SPLITS = {
    "train": SyntheticSizes(n_pairs=10, street_per_pair=2),
    "validation": SyntheticSizes(n_pairs=8, street_per_pair=1),
}
TINY_DETECTOR = {"steps": 8, "batch_size": 4, "model": {"fpn_channels": 32}}
TINY_EMBEDDER = {"steps": 8, "p_identities": 4, "k_instances": 2}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where torch sees no CUDA GPU (``-m gpu`` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def at_most_two_torch_threads():
    """torch on at most two threads for the test (CI's machine has two cores), as before afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_recipe() -> dict:
    """The tiny data and training settings, as keyword arguments of ``run_demo``."""
    return {"splits": TINY_SPLITS, "detector_overrides": TINY_DETECTOR, "embedder_overrides": TINY_EMBEDDER}


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> Path:
    """A work folder with tiny synthetic data and tiny models trained by the project's own code."""
    from clothret.demo import synthesize, train_models

    workdir = tmp_path_factory.mktemp("tiny")
    data = synthesize(workdir, seed=0, splits=TINY_SPLITS)
    train_models(data, workdir / "models", detector_overrides=TINY_DETECTOR, embedder_overrides=TINY_EMBEDDER)
    return workdir


@pytest.fixture(scope="session")
def prefect_server():
    """One real temporary Prefect server for the session; Dask workers report to it too."""
    from flows.local_api import prefect_api

    with prefect_api() as url:
        yield url
