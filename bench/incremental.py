"""Wall time of a full catalogue refresh against an incremental one after ~1% new images, and a no-op one.

Synthesizes a shop catalogue of N + n images and trains the demo detector and embedder for a few steps,
holds n ≈ 1% of the images (drawn across the catalogue) back, then runs the ``catalogue_refresh`` flow three
times against one feature store and index, with one temporary Prefect server started beforehand:

1. full: the N images on a fresh store (every segment computed);
2. incremental: the N + n images (only the new images are embedded, in new segments);
3. no-op: the same manifest again (nothing to embed): the fixed cost of a refresh (plan, index build over
   the whole catalogue, validate, publish). Prefect starts the Dask cluster at the first submitted task, so
   a no-op refresh starts none: incremental minus no-op is the cluster start, the model load in a worker
   and the new images' embedding.

The last line of output is one JSON object.

    python bench/incremental.py --quick    # 600 + 6 images in segments of 100 (~1-2 minutes on 2 cores)
    python bench/incremental.py            # 3000 + 30 images in segments of 250
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: I001 - sets OMP_WAIT_POLICY before torch is imported

QUICK = (600, 100)
"""--quick: images of the full refresh and segment size."""
FULL = (3000, 250)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]} images in segments of {QUICK[1]}")
    parser.add_argument("--images", type=int, default=None, help=f"images of the full refresh (default {FULL[0]}, quick {QUICK[0]})")
    parser.add_argument("--new-fraction", type=float, default=0.01, help="new images of the incremental refresh, as a fraction of --images")
    parser.add_argument("--segment-size", type=int, default=None, help=f"images per segment (default {FULL[1]}, quick {QUICK[1]})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per detector/embedder batch")
    parser.add_argument("--workers", type=int, default=None, help="Dask worker processes (CLOTHRET_DASK_WORKERS)")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each model")
    parser.add_argument("--seed", type=int, default=0, help="data set, training and hold-out seed")
    parser.add_argument("--workdir", default=None, help="keep data, models, store here (reused when settings match)")
    args = parser.parse_args(argv)
    n_images = args.images or (QUICK if args.quick else FULL)[0]
    segment_size = args.segment_size or (QUICK if args.quick else FULL)[1]
    n_new = max(1, round(n_images * args.new_fraction))
    workers = _common.set_workers(args.workers)
    _common.isolate_prefect()

    from clothret.datasets.catalogue import write_manifest
    from clothret.refresh import RefreshConfig
    from flows.catalogue_refresh import catalogue_refresh
    from flows.local_api import prefect_api

    _common.quiet_logging()  # after the imports: distributed sets its loggers' levels when imported

    with tempfile.TemporaryDirectory(prefix="bench_incremental_") as tmp:
        workdir = Path(args.workdir or tmp)
        bundle, entries = _common.prepare(workdir, n_images + n_new, seed=args.seed, steps=args.steps)
        base, _new = _common.split_new(entries, n_new, seed=args.seed)
        manifests = {"base": str(workdir / "catalogue" / "base.jsonl"), "all": str(workdir / "catalogue" / "with_new.jsonl")}
        write_manifest(base, manifests["base"])
        write_manifest(entries, manifests["all"])
        store, index = _common.fresh(workdir / "store"), _common.fresh(workdir / "index")

        def config(which: str) -> RefreshConfig:
            return RefreshConfig(
                manifest_url=manifests[which], bundle_url=str(bundle), store_url=store, index_url=index,
                segment_size=segment_size, batch_size=args.batch_size,
            )

        schedule = [("full", "base", len(base), len(base)), ("incremental", "all", len(entries), n_new),
                    ("no-op", "all", len(entries), 0)]  # run, manifest, images listed, images new to the store
        runs = []
        start = time.perf_counter()
        with prefect_api():
            server_s = time.perf_counter() - start
            for name, which, n, n_embed in schedule:
                build, seconds = _common.timed(catalogue_refresh, config(which))
                runs.append({"run": name, "images": n, "to_embed": n_embed, "seconds": seconds, **build})
                print(f"{name}: {seconds:.1f} s", flush=True)

    print()
    print(f"{len(base)} images, then {n_new} new ({n_new / len(base):.2%}); segments of {segment_size}, "
          f"batch {args.batch_size}, {workers} Dask workers; prefect server start {server_s:.1f} s")
    print(f"{'run':<14}{'images':>8}{'new':>6}{'embedded':>10}{'computed':>10}{'reused':>8}{'boxes':>8}{'seconds':>9}")
    for r in runs:
        print(f"{r['run']:<14}{r['images']:>8}{r['to_embed']:>6}{r['images_embedded']:>10}{r['segments_computed']:>10}"
              f"{r['segments_reused']:>8}{r['n_boxes']:>8}{r['seconds']:>9.1f}")
    full, incr, noop = runs
    print(f"incremental / full: {incr['seconds'] / full['seconds']:.2f}; incremental - no-op: "
          f"{incr['seconds'] - noop['seconds']:.1f} s for {n_new} new images")
    summary = {
        "full_seconds": round(full["seconds"], 2),
        "incremental_seconds": round(incr["seconds"], 2),
        "new_fraction": round(n_new / len(base), 4),
        "noop_seconds": round(noop["seconds"], 2),
        "images": len(base),
        "new_images": n_new,
        "segments_computed_full": full["segments_computed"],
        "segments_computed_incremental": incr["segments_computed"],
        "segments_computed_noop": noop["segments_computed"],
        "segment_size": segment_size,
        "workers": workers,
        "server_start_seconds": round(server_s, 2),
        "quick": args.quick,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
