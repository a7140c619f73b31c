"""Set-up shared by the refresh benches: a private Prefect home, a synthetic catalogue, briefly trained models.

Import this module before anything that imports torch or prefect: it sets ``OMP_WAIT_POLICY`` (libgomp reads
it once) and, through :func:`isolate_prefect`, the Prefect settings that must precede the first prefect import.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# On a CPU shared with other jobs, spinning OpenMP threads make torch ~8x slower; see bench/embedder_quality.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHOP_PER_PAIR = 1.5
"""A little under the synthetic generator's mean number of shop images per pair (one per garment, 1-3)."""


def isolate_prefect() -> str:
    """A throw-away Prefect home, no inherited API, no analytics, quiet Prefect loggers (call before importing prefect)."""
    home = tempfile.mkdtemp(prefix="clothret-bench-prefect-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = home
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # inherited by the Dask workers too
    return home


def quiet_logging() -> None:
    """WARNING for everything, so the tables stay readable."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("distributed", "prefect", "clothret"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the local cluster's scheduler moves its HTTP server off 8787 when another cluster holds it: harmless here
    warnings.filterwarnings("ignore", message="Port 8787 is already in use", category=UserWarning)


def set_workers(workers: int | None) -> int:
    """Export ``CLOTHRET_DASK_WORKERS`` (default: the flow's own default) and return it."""
    n = workers or int(os.environ.get("CLOTHRET_DASK_WORKERS", max(2, (os.cpu_count() or 2) // 2)))
    os.environ["CLOTHRET_DASK_WORKERS"] = str(n)
    return n


def prepare(workdir: Path, n_images: int, *, seed: int = 0, steps: int = 30) -> tuple[Path, list]:
    """Synthesize a catalogue of at least ``n_images`` shop images, train the demo models for ``steps`` steps.

    Returns the bundle path and exactly ``n_images`` manifest entries (the first ones of the split). Both the
    data set and the models are reused from ``workdir`` when they were made with the same settings.
    """
    from clothret.datasets.catalogue import read_manifest
    from clothret.datasets.synthetic import SyntheticSizes
    from clothret.demo import DEMO_DETECTOR, DEMO_EMBEDDER, build_catalogue, synthesize, train_models

    n_pairs = math.ceil(n_images / SHOP_PER_PAIR) + 2
    t0 = time.perf_counter()
    while True:
        splits = {
            "train": SyntheticSizes(n_pairs=30, street_per_pair=2),
            "validation": SyntheticSizes(n_pairs=n_pairs, street_per_pair=0),
        }
        data = synthesize(workdir, seed=seed, splits=splits)
        manifest = str(workdir / "catalogue" / "all.jsonl")
        if build_catalogue(str(data / "validation"), manifest) >= n_images:
            break
        n_pairs = math.ceil(n_pairs * 1.2)
    t1 = time.perf_counter()
    bundle = train_models(
        data, workdir / "models", seed=seed,
        detector_overrides={**DEMO_DETECTOR, "steps": steps}, embedder_overrides={**DEMO_EMBEDDER, "steps": steps},
    )
    t2 = time.perf_counter()
    print(f"set-up: {n_images} shop images synthesized in {t1 - t0:.1f} s; demo detector and embedder "
          f"trained for {steps} steps in {t2 - t1:.1f} s", flush=True)
    return bundle, read_manifest(manifest)[:n_images]


def split_new(entries: list, n_new: int, *, seed: int = 0) -> tuple[list, list]:
    """Hold ``n_new`` entries, drawn across the whole list, back as the 'new' images: (base, new)."""
    held = set(random.Random(seed).sample(range(len(entries)), n_new))
    return [e for i, e in enumerate(entries) if i not in held], [e for i, e in enumerate(entries) if i in held]


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def fresh(path: Path) -> str:
    """Remove ``path`` if it exists and return it as a string (a fresh store or index root)."""
    shutil.rmtree(path, ignore_errors=True)
    return str(path)
