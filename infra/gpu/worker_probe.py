"""Probe the Dask cluster the flows would use on this machine: start it, then run, step by step, what a
segment task does in a worker (import the project, initialise CUDA, load a bundle's models, run a segment),
checking after each step that the worker is still the same process.

    python infra/gpu/worker_probe.py --workdir /tmp/probe [--bundle B --manifest M]

Without ``--bundle`` it synthesises a tiny data set and trains tiny models first (about a minute). It prints
one line per step and, for a worker that died, the death the nanny saw; run it with
``DASK_LOGGING__DISTRIBUTED=info`` to see every nanny and worker line too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _worker_facts() -> dict:
    import resource

    import psutil

    proc = psutil.Process()
    return {
        "pid": os.getpid(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "affinity": len(os.sched_getaffinity(0)),
        "rss_gb": round(proc.memory_info().rss / 2**30, 2),
        "maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": proc.num_threads(),
    }


def step_import() -> dict:
    import tasks.refresh  # noqa: F401 - what a segment task's deserialisation imports

    return _worker_facts()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def step_cuda() -> dict:
    import torch

    x = torch.randn(1024, 1024, device=_device())
    (x @ x).sum().item()
    name = torch.cuda.get_device_name() if _device() == "cuda" else "cpu"
    return {**_worker_facts(), "device": name, "torch": torch.__version__}


def step_segment(bundle_url: str, manifest_url: str) -> dict:
    from clothret.datasets.catalogue import read_manifest
    from clothret.models import cached_models, load_bundle
    from clothret.pipeline.segment import run_segment

    version = load_bundle(bundle_url).version()
    models = cached_models(bundle_url, version, _device())
    result = run_segment(read_manifest(manifest_url)[:32], models, batch_size=8)
    return {**_worker_facts(), "boxes": int(len(result.boxes)), "failed": result.n_failed}


def _tiny_models(workdir: Path) -> tuple[str, str]:
    from clothret.datasets.synthetic import SyntheticSizes
    from clothret.demo import build_catalogue, synthesize, train_models

    splits = {"train": SyntheticSizes(n_pairs=10, street_per_pair=2), "validation": SyntheticSizes(n_pairs=8, street_per_pair=1)}
    data = synthesize(workdir, seed=0, splits=splits)
    bundle = train_models(data, workdir / "models", detector_overrides={"steps": 8, "batch_size": 4, "model": {"fpn_channels": 32}},
                          embedder_overrides={"steps": 8, "p_identities": 4, "k_instances": 2})
    manifest = str(workdir / "manifest.jsonl")
    build_catalogue(str(data / "validation"), manifest)
    return str(bundle), manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clothret-probe")
    parser.add_argument("--bundle")
    parser.add_argument("--manifest")
    parser.add_argument("--step-timeout", type=float, default=120)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bundle, manifest = (args.bundle, args.manifest) if args.bundle else _tiny_models(workdir)

    import dask
    from distributed import Client
    from prefect.utilities.importtools import from_qualified_name

    from flows.cluster import cluster_settings, cluster_spec
    from flows.worker_logs import WorkerDeathWatch

    address, class_name, kwargs = cluster_spec()
    if address:
        raise SystemExit("CLOTHRET_DASK_ADDRESS is set: this probe starts the cluster the flows would create")
    print(json.dumps({"cluster_class": class_name, "cluster_kwargs": {k: str(v) for k, v in kwargs.items()}}), flush=True)
    cluster_class = from_qualified_name(class_name)
    with dask.config.set(cluster_settings()), cluster_class(**kwargs) as cluster, Client(cluster) as client:
        WorkerDeathWatch(client, on_death=lambda death: print(death.report(), flush=True))
        info = client.scheduler_info()["workers"]
        print(json.dumps({"workers": {a: {"resources": w.get("resources"), "memory_limit_gb": round((w.get("memory_limit") or 0) / 2**30, 1)}
                                      for a, w in info.items()}}), flush=True)
        steps = [("import", step_import, ()), ("cuda", step_cuda, ()), ("segment", step_segment, (bundle, manifest)),
                 ("segment-again", step_segment, (bundle, manifest))]
        pids = client.run(os.getpid)
        status = 0
        for label, fn, fn_args in steps:
            start = time.perf_counter()
            future = client.submit(fn, *fn_args, resources=kwargs.get("resources"),
                                   pure=False)
            try:
                out = future.result(timeout=args.step_timeout)
                line = {"step": label, "ok": True, "seconds": round(time.perf_counter() - start, 1), **out}
            except Exception as exc:  # noqa: BLE001 - a probe reports whatever happened
                line = {"step": label, "ok": False, "seconds": round(time.perf_counter() - start, 1), "error": repr(exc)[:2000]}
                status = 1
            now = client.run(os.getpid) if client.scheduler_info()["workers"] else {}
            line["worker_restarted"] = now != pids
            pids = now
            print(json.dumps(line), flush=True)
            if not line["ok"]:
                for addr, lines in client.get_worker_logs(nanny=True).items():
                    for level, text in lines[-20:]:
                        print(f"nanny {addr} {level}: {text}", flush=True)
                break
    return status


if __name__ == "__main__":
    raise SystemExit(main())
