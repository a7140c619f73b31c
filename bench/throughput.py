"""Images/s of the catalogue-refresh flow against a bare single-process loop over the same images.

Synthesizes a shop catalogue and trains the demo detector and embedder for a few steps (throughput does not
depend on their quality), then measures, on the same images with the same models and batch size:

- bare: one process, no orchestration, no store writes: load the models, then read → detect → fuse → embed
  with the per-batch path the segment engine replaced (reader thread pool → ``map_batch``: numpy images,
  torchvision's forward, PIL-resized crops); the baseline ``ratio`` divides by;
- bare engine: the same in one process through the segment engine
  (``clothret.pipeline.segment.run_segment`` over all images, without the Prefect task around it);
- flow: ``catalogue_refresh`` on a fresh feature store and index, one task per segment on a local Dask
  cluster of ``--workers`` processes, with the temporary Prefect server already started (its start-up is
  reported apart). Its wall time includes the Dask cluster start (Prefect starts it at the first task),
  the model load in each worker, store writes, index build and publish: ~10 s on 2 cores, which is why
  --quick uses 800 images (the bare loop does ~50 images/s there).

The last line of output is one JSON object; ``ratio`` is flow / bare images per second.

    python bench/throughput.py --quick    # 800 images in segments of 100 (~2 minutes on 2 cores)
    python bench/throughput.py            # 4000 images in segments of 250
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: I001 - sets OMP_WAIT_POLICY before torch is imported

QUICK = (800, 100)
"""--quick: images and segment size. The flow's fixed costs are ~10 s on 2 cores; the bare loop does ~50 img/s."""
FULL = (4000, 250)


def bare_loop(entries: list, bundle_url: str, *, batch_size: int, device: str) -> dict:
    """Load the models and run read → detect → fuse → embed over every image in one process."""
    from clothret.models import load_bundle, load_models
    from clothret.pipeline.mapper import map_batch
    from clothret.pipeline.reader import ImageFailure, iter_images

    models = load_models(load_bundle(bundle_url), device=device)
    n_ok = n_boxes = 0
    batch: list = []

    def flush() -> None:
        nonlocal n_ok, n_boxes
        outputs = map_batch(models, batch)
        n_ok += len(outputs)
        n_boxes += sum(len(o.detections) for o in outputs)
        batch.clear()

    for _, image in iter_images([e.uri for e in entries]):
        if isinstance(image, ImageFailure):
            continue
        batch.append(image)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return {"images_ok": n_ok, "boxes": n_boxes}


def bare_engine(entries: list, bundle_url: str, *, batch_size: int, device: str) -> dict:
    """Load the models and run every image through the segment engine (run_segment) in one process."""
    from clothret.models import load_bundle, load_models
    from clothret.pipeline.segment import run_segment

    models = load_models(load_bundle(bundle_url), device=device)
    result = run_segment(entries, models, batch_size=batch_size)
    return {"images_ok": result.counts["images_ok"], "boxes": result.counts["boxes"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]} images in segments of {QUICK[1]}")
    parser.add_argument("--images", type=int, default=None, help=f"catalogue size (default {FULL[0]}, quick {QUICK[0]})")
    parser.add_argument("--segment-size", type=int, default=None, help=f"images per segment (default {FULL[1]}, quick {QUICK[1]})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per detector/embedder batch, both modes")
    parser.add_argument("--workers", type=int, default=None, help="Dask worker processes (CLOTHRET_DASK_WORKERS)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads of the bare loop")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each model")
    parser.add_argument("--seed", type=int, default=0, help="data set and training seed")
    parser.add_argument("--workdir", default=None, help="keep data, models, store here (reused when settings match)")
    args = parser.parse_args(argv)
    n_images = args.images or (QUICK if args.quick else FULL)[0]
    segment_size = args.segment_size or (QUICK if args.quick else FULL)[1]
    workers = _common.set_workers(args.workers)
    _common.isolate_prefect()

    import torch

    from clothret.datasets.catalogue import write_manifest
    from clothret.refresh import RefreshConfig, resolve_device
    from flows.catalogue_refresh import catalogue_refresh
    from flows.local_api import prefect_api

    _common.quiet_logging()  # after the imports: distributed sets its loggers' levels when imported

    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        workdir = Path(args.workdir or tmp)
        bundle, entries = _common.prepare(workdir, n_images, seed=args.seed, steps=args.steps)
        manifest = str(workdir / "catalogue" / "throughput.jsonl")
        write_manifest(entries, manifest)
        device = resolve_device("auto")

        torch.set_num_threads(args.threads)
        bare, bare_s = _common.timed(bare_loop, entries, str(bundle), batch_size=args.batch_size, device=device)
        engine, engine_s = _common.timed(bare_engine, entries, str(bundle), batch_size=args.batch_size, device=device)

        config = RefreshConfig(
            manifest_url=manifest, bundle_url=str(bundle), store_url=_common.fresh(workdir / "store"),
            index_url=_common.fresh(workdir / "index"), segment_size=segment_size, batch_size=args.batch_size,
        )
        start = time.perf_counter()
        with prefect_api():
            server_s = time.perf_counter() - start
            build, flow_s = _common.timed(catalogue_refresh, config)

    flow_ips, bare_ips, engine_ips = n_images / flow_s, n_images / bare_s, n_images / engine_s
    print()
    print(f"{n_images} images, segments of {segment_size}, batch {args.batch_size}, device {device}; flow: "
          f"{workers} Dask workers ({build['segments_computed']} segments computed); bare: {args.threads} torch threads")
    print(f"{'mode':<28}{'images':>8}{'seconds':>10}{'images/s':>10}{'boxes':>8}")
    print(f"{'prefect server start':<28}{'':>8}{server_s:>10.1f}")
    print(f"{'flow (catalogue_refresh)':<28}{n_images:>8}{flow_s:>10.1f}{flow_ips:>10.1f}{build['boxes_new']:>8}")
    print(f"{'bare loop (1 process)':<28}{n_images:>8}{bare_s:>10.1f}{bare_ips:>10.1f}{bare['boxes']:>8}")
    print(f"{'bare engine (1 process)':<28}{n_images:>8}{engine_s:>10.1f}{engine_ips:>10.1f}{engine['boxes']:>8}")
    print(f"ratio flow / bare: {flow_ips / bare_ips:.2f}; bare engine / bare: {engine_ips / bare_ips:.2f}")
    summary = {
        "flow_images_per_s": round(flow_ips, 2),
        "bare_images_per_s": round(bare_ips, 2),
        "bare_engine_images_per_s": round(engine_ips, 2),
        "ratio": round(flow_ips / bare_ips, 3),
        "images": n_images,
        "segment_size": segment_size,
        "workers": workers,
        "batch_size": args.batch_size,
        "bare_threads": args.threads,
        "flow_seconds": round(flow_s, 2),
        "bare_seconds": round(bare_s, 2),
        "bare_engine_seconds": round(engine_s, 2),
        "server_start_seconds": round(server_s, 2),
        "device": str(device),
        "quick": args.quick,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
