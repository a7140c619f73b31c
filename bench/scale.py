"""A catalogue of N gallery boxes through plan, feature store, catalog, index, search and an incremental refresh.

The models are simulated (:mod:`clothret.simulated`: seeded, clustered 256-dim float16 features, a few boxes
per image, no pixel decoded), everything else is the production code: :func:`clothret.refresh.plan`, one
:func:`clothret.refresh.embed_segment` per segment (in worker processes, as Dask workers run them — not
through Prefect: the bench measures the data path, not the orchestration), the catalog's compare-and-swap
commit, :func:`clothret.refresh.build_and_publish` (autotuned index kind, recall@10 against exact search on
held-out queries, publish), and a memory-mapped :class:`~clothret.index.search.SearchIndex`. Then an
incremental refresh (1% new, 0.1% changed, 0.1% deleted images) runs the same steps, and autofaiss builds
its index over the same vectors in its own environment (``.venv-autofaiss``, made on first use) for build
time, recall@10 and index bytes side by side.

    python bench/scale.py --quick        # 1 million boxes
    python bench/scale.py                # 10 million boxes
    python bench/scale.py --n-boxes 30000 --autofaiss skip   # the smoke test's size

Each stage's wall time and the peak memory (RSS) of the process that ran it are printed as a table; the
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK, FULL = 1_000_000, 10_000_000
MEAN_BOXES = 3.0  # the simulated detector's 1..5 boxes per image
AUTOFAISS_ENV = ROOT / ".venv-autofaiss"
AUTOFAISS_PINS = ("autofaiss==2.18.0", "pyarrow<17", "faiss-cpu==1.7.4")
"""Its PyPI install pairs numpy 1.26 with a pyarrow that needs NumPy 2, and with a faiss-cpu whose OPQMatrix no
longer takes the keyword arguments autofaiss passes (its OPQ+IVF+PQ choice for large galleries fails)."""
_AUTOFAISS_CHECK = "import autofaiss, faiss, pyarrow; assert faiss.__version__ == '1.7.4'"

logger = logging.getLogger("bench.scale")


def rss_gb() -> float:
    """Resident memory of this process now, in GB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024 / 1e9
    except (OSError, StopIteration):
        return 0.0


def peak_rss_gb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest waited-for child) in GB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss * 1024 / 1e9


class Stages:
    """Wall time and peak memory per stage."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def run(self, name: str, fn, *args, children: bool = False, **kw):
        start = time.perf_counter()
        out = fn(*args, **kw)
        seconds = time.perf_counter() - start
        self.rows.append({"stage": name, "seconds": round(seconds, 2),
                          "peak_rss_gb": round(max(peak_rss_gb(), peak_rss_gb(True) if children else 0), 2),
                          "rss_after_gb": round(rss_gb(), 2)})
        logger.warning("%-28s %8.1f s", name, seconds)
        return out

    def seconds(self, *names: str) -> float:
        return round(sum(r["seconds"] for r in self.rows if r["stage"] in names), 2)

    def table(self) -> str:
        lines = [f"{'stage':<40}{'seconds':>10}{'peak RSS GB':>13}{'RSS after GB':>14}"]
        lines += [f"{r['stage']:<40}{r['seconds']:>10.1f}{r['peak_rss_gb']:>13.2f}{r['rss_after_gb']:>14.2f}"
                  for r in self.rows]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the refresh steps


def _embed_one(args: tuple) -> dict:
    """One segment in a worker process, as the embed-segment task runs it."""
    from clothret import refresh

    segment, bundle_url, version = args
    return refresh.embed_segment(segment, bundle_url=bundle_url, version=version, device="cpu", run="bench")


def embed_segments(plan, bundle_url: str, processes: int) -> list[dict]:
    work = [(s, bundle_url, plan.version) for s in plan.new]
    if processes <= 1:
        return [_embed_one(w) for w in work]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_embed_one, work, chunksize=1))


def _plan(config, manifest_entries):
    """:func:`clothret.refresh.plan` given the manifest's entries (read in their own stage)."""
    from clothret.models import load_bundle
    from clothret.pipeline.plan import plan_refresh
    from clothret.refresh import check_serving_version

    version = load_bundle(config.bundle_url).version()
    check_serving_version(config.index_url, version)
    return plan_refresh(manifest_entries, version=version, store_url=config.store_url,
                        segment_size=config.segment_size, retry_failed=config.retry_failed)


def refresh_once(stages: Stages, config, prefix: str, processes: int) -> dict:
    """manifest read → plan → segment writes → catalog commit → index build, check and publish (the steps of
    :func:`clothret.refresh.plan` and the refresh flow); returns the build manifest."""
    from clothret import refresh
    from clothret.datasets.catalogue import read_manifest

    manifest_entries = stages.run(f"{prefix}manifest read", read_manifest, config.manifest_url)
    plan = stages.run(f"{prefix}plan", _plan, config, manifest_entries)
    del manifest_entries
    counts = stages.run(f"{prefix}segment writes", embed_segments, plan, config.bundle_url, processes, children=True)
    stages.run(f"{prefix}catalog commit", refresh.commit_catalog, config, plan, [c["segment_id"] for c in counts],
               run="bench")
    extra, version, reasons = refresh.refresh_counts(plan, counts), plan.version, dict(plan.reasons)
    del plan, counts  # millions of manifest entries: not kept through the index build
    manifest = stages.run(f"{prefix}index build+check+publish", refresh.build_and_publish, config, version,
                          extra=extra, run="bench")
    manifest["plan_reasons"] = reasons
    return manifest


# ------------------------------------------------------------------------------------------ search


def held_out_queries(models, n: int, seed: int) -> "np.ndarray":
    """Query boxes of new photos of catalogue items (not in the gallery), float32."""
    import numpy as np

    from clothret.datasets.catalogue import ManifestEntry

    entries = [ManifestEntry(f"query-{seed}-{i}", "sim://street", f"q{i}", f"it{i * 7919 % 1000:09d}")
               for i in range(n)]
    _, _, _, _, feats = models.features.simulate(entries)
    return feats[:n].astype(np.float32)


def measure_search(index_url: str, queries, *, batch: int = 64) -> dict:
    import faiss
    import numpy as np

    from clothret.index.search import SearchIndex

    loaded = SearchIndex.load(index_url, mmap=True)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    passes = []
    for _ in range(2):  # cold: lists paged in from the file as queries touch them; warm: all in the page cache
        latencies = []
        for q in queries:
            start = time.perf_counter()
            loaded.search(q[None], 10)
            latencies.append(time.perf_counter() - start)
        passes.append(np.array(latencies) * 1000)
    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    n_batches = max(1, len(queries) // batch)
    for b in range(n_batches):
        loaded.search(queries[b * batch : (b + 1) * batch], 10)
    batch_seconds = time.perf_counter() - start
    cold, ms = passes
    return {
        "load_mode": loaded.load_mode, "single_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "single_p99_ms": round(float(np.percentile(ms, 99)), 3), "single_qps": round(len(ms) / (ms.sum() / 1000), 1),
        "cold_p50_ms": round(float(np.percentile(cold, 50)), 3), "cold_p99_ms": round(float(np.percentile(cold, 99)), 3),
        "batch64_qps": round(n_batches * batch / batch_seconds, 1), "batch_threads": threads,
    }


# ------------------------------------------------------------------------------------------ autofaiss


def ensure_autofaiss_env() -> Path:
    """``.venv-autofaiss`` with autofaiss and a pyarrow that works with its numpy (made once)."""
    python = AUTOFAISS_ENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", _AUTOFAISS_CHECK], capture_output=True).returncode == 0:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AUTOFAISS_ENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *AUTOFAISS_PINS], check=True)
    return python


def export_vectors(store_url: str, version: str, catalog, folder: Path) -> Path:
    """The gallery's vectors in index row order as one float32 .npy (autofaiss's input)."""
    import numpy as np

    from clothret.index.scan import iter_feature_blocks, scan_gallery

    scan = scan_gallery(store_url, version, catalog.segments, deleted_image_ids=catalog.deleted)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vectors.npy"
    with open(path, "wb") as f:  # plain writes: a memory map would count the whole file in this process's RSS
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (len(scan), scan.dim)})
        for _, block in iter_feature_blocks(scan):
            f.write(block.astype(np.float32).tobytes())
    return folder


def run_autofaiss(python: Path, vectors: Path, out: Path, memory_gb: float, timeout_s: float) -> dict:
    """autofaiss.build_index in its environment; returns its build seconds and index bytes, or why it has
    none (``error``: it failed or ran past ``timeout_s``)."""
    script = f"""
import json, time
from autofaiss import build_index
start = time.perf_counter()
build_index(embeddings={str(vectors)!r}, index_path={str(out / 'knn.index')!r},
            index_infos_path={str(out / 'infos.json')!r}, metric_type="ip",
            max_index_memory_usage="{memory_gb:.0f}G", current_memory_available="{memory_gb + 4:.0f}G",
            min_nearest_neighbors_to_retrieve=10, save_on_disk=True, verbose=30)
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""
    start = time.perf_counter()
    try:
        done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout_s:.0f} s", "seconds": time.perf_counter() - start}
    if done.returncode != 0:
        logger.warning("autofaiss failed: %s", done.stderr[-3000:])
        return {"error": f"exit status {done.returncode}", "seconds": time.perf_counter() - start}
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    infos = json.loads((out / "infos.json").read_text()) if (out / "infos.json").exists() else {}
    return {"seconds": seconds, "bytes": (out / "knn.index").stat().st_size, "key": infos.get("index_key")}


def autofaiss_recall(index_path: Path, build_url: str) -> float:
    """recall@10 of the autofaiss index on the build's own held-out queries and exact neighbours."""
    import faiss
    import numpy as np

    from clothret.index.streamed import TRUTH_FILE
    from clothret.index.truth import GroundTruth
    from clothret.store.files import read_bytes

    from clothret.index.publish import MANIFEST

    truth = GroundTruth.from_bytes(read_bytes(f"{build_url}/{TRUTH_FILE}"))
    n_q = json.loads(read_bytes(f"{build_url}/{MANIFEST}"))["recall_queries"]
    index = faiss.read_index(str(index_path))
    return truth.recall(index, 10, queries=np.arange(n_q))


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} boxes instead of {FULL:,}")
    parser.add_argument("--n-boxes", type=int, default=None, help="gallery boxes (about 3 per image)")
    parser.add_argument("--segment-size", type=int, default=10_000, help="images per segment")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the segment writes")
    parser.add_argument("--memory-budget-mb", type=float, default=6144, help="the index's RAM budget (auto kind)")
    parser.add_argument("--stream-above", type=int, default=None,
                        help="boxes from which the index is built streamed (default: IndexConfig's)")
    parser.add_argument("--queries", type=int, default=2000, help="search latency queries")
    parser.add_argument("--autofaiss", choices=("run", "skip"), default="run", help="build autofaiss's index too")
    parser.add_argument("--autofaiss-timeout", type=float, default=3600, help="seconds autofaiss may build for")
    parser.add_argument("--workdir", default=None, help="where store, index and manifests go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--item-spread", type=float, default=None,
                        help="simulated items' spread around their cluster (default: SimulatedConfig's; "
                        "larger = neighbours less clustered, a harder index)")
    args = parser.parse_args(argv)
    n_boxes = args.n_boxes or (QUICK if args.quick else FULL)
    n_images = max(10, round(n_boxes / MEAN_BOXES))

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np

    from clothret.datasets.catalogue import write_manifest
    from clothret.index.config import IndexConfig
    from clothret.index.publish import build_url
    from clothret.index.streamed import release_freed_memory
    from clothret.models import load_bundle, load_models
    from clothret.refresh import RefreshConfig
    from clothret.simulated import simulated_manifest, write_simulated_bundle
    from clothret.store.catalog import read_catalog

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="clothret-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    spread = {} if args.item_spread is None else {"item_spread": args.item_spread}
    bundle_url = write_simulated_bundle(str(workdir / "models"), seed=args.seed, **spread)
    version = load_bundle(bundle_url).version()
    models = load_models(load_bundle(bundle_url))
    manifest_url = str(workdir / "manifest.jsonl")

    stages.run("manifest write", lambda: write_manifest(simulated_manifest(n_images, seed=args.seed), manifest_url))
    config = RefreshConfig(
        manifest_url=manifest_url, bundle_url=bundle_url, store_url=str(workdir / "store"),
        index_url=str(workdir / "index"), segment_size=args.segment_size, device="cpu",
        index=IndexConfig(memory_budget_mb=args.memory_budget_mb, seed=args.seed,
                          **({} if args.stream_above is None else {"stream_above": args.stream_above})),
    )
    started = time.perf_counter()
    full = refresh_once(stages, config, "", args.processes)
    full_seconds = time.perf_counter() - started
    queries = held_out_queries(models, args.queries, args.seed)
    search = stages.run("search (mmap)", measure_search, config.index_url, queries)

    # incremental: 1% new, 0.1% changed, 0.1% deleted images, the same store and index
    rng = np.random.default_rng(args.seed + 1)
    n_changed = n_deleted = max(1, n_images // 1000)
    picked = rng.choice(n_images, size=n_changed + n_deleted, replace=False)
    changed, deleted = set(picked[:n_changed].tolist()), set(picked[n_changed:].tolist())

    def next_manifest():
        out = []
        for i, e in enumerate(simulated_manifest(n_images, seed=args.seed)):
            if i in deleted:
                continue
            out.append(simulated_manifest(1, seed=args.seed, start=i, revision=1)[0] if i in changed else e)
        out += simulated_manifest(max(1, n_images // 100), seed=args.seed, start=n_images)
        write_manifest(out, manifest_url)

    stages.run("incremental manifest write", next_manifest)
    started = time.perf_counter()
    incremental = refresh_once(stages, config, "incremental ", args.processes)
    incremental_seconds = time.perf_counter() - started
    build = build_url(config.index_url, incremental["build_id"])

    af: dict = {}
    if args.autofaiss == "run":
        python = stages.run("autofaiss env", ensure_autofaiss_env)
        vectors = stages.run("export vectors (.npy)", export_vectors, config.store_url, version,
                             read_catalog(config.store_url, version), workdir / "autofaiss-in")
        release_freed_memory()  # autofaiss gets the memory the export scanned with
        af = stages.run("autofaiss build", run_autofaiss, python, vectors, workdir / "autofaiss-out",
                        args.memory_budget_mb / 1024, args.autofaiss_timeout, children=True)
        if "error" not in af:
            af["recall_at_10"] = stages.run("autofaiss recall", autofaiss_recall,
                                            workdir / "autofaiss-out" / "knn.index", build)
        shutil.rmtree(workdir / "autofaiss-in", ignore_errors=True)

    summary = {
        "n_boxes": full["n_boxes"], "n_images": full["n_images"], "dim": full["dim"],
        "simulated": load_bundle(bundle_url).identity()["embedders"][0]["model"].get("config"),
        "index_kind": full["index_kind"], "nlist": full.get("nlist"), "nprobe": full.get("nprobe"),
        "quantizer": full.get("quantizer"), "n_train": full.get("n_train"),
        "recall_at_10": full["recall_at_10"], "build_seconds": full["build_seconds"],
        "index_stage_seconds": full.get("stage_seconds"), "index_bytes": full["index_bytes"],
        "plan_seconds": stages.seconds("plan"), "manifest_read_seconds": stages.seconds("manifest read"), "segment_write_seconds": stages.seconds("segment writes"),
        "full_seconds": round(full_seconds, 2),
        "incremental_seconds": round(incremental_seconds, 2),
        "incremental_plan_seconds": stages.seconds("incremental plan"),
        "incremental_recall_at_10": incremental["recall_at_10"], "incremental_updated_from": incremental.get("updated_from"),
        "incremental_rows_added": incremental.get("rows_added"), "incremental_rows_removed": incremental.get("rows_removed"),
        "incremental_index_stage_seconds": incremental.get("stage_seconds"),
        "incremental_plan": incremental["plan_reasons"],
        "search_p50_ms": search["single_p50_ms"], "search_p99_ms": search["single_p99_ms"],
        "search_cold_p50_ms": search["cold_p50_ms"], "search_cold_p99_ms": search["cold_p99_ms"],
        "search_qps": search["single_qps"], "search_batch64_qps": search["batch64_qps"],
        "search_load_mode": search["load_mode"],
        "autofaiss_build_seconds": round(af["seconds"], 2) if af and "error" not in af else None,
        "autofaiss_recall_at_10": af.get("recall_at_10"), "autofaiss_index_bytes": af.get("bytes"),
        "autofaiss_index_key": af.get("key"), "autofaiss_error": af.get("error"),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in stages.rows),
        "stages": stages.rows,
    }
    print(stages.table())
    print(f"\nn_boxes {summary['n_boxes']:,}  index {summary['index_kind']} (nlist {summary['nlist']}, nprobe "
          f"{summary['nprobe']}, quantizer {summary['quantizer']})  recall@10 {summary['recall_at_10']:.4f}  "
          f"build {summary['build_seconds']:.1f} s  index {summary['index_bytes'] / 1e9:.2f} GB")
    print(f"search: single p50/p99 {search['single_p50_ms']:.2f}/{search['single_p99_ms']:.2f} ms warm, "
          f"{search['cold_p50_ms']:.2f}/{search['cold_p99_ms']:.2f} ms cold "
          f"({search['single_qps']:.0f} q/s, 1 thread); batches of 64: {search['batch64_qps']:.0f} q/s "
          f"({search['batch_threads']} threads), {search['load_mode']}")
    print(f"full refresh {full_seconds:.1f} s; incremental {incremental_seconds:.1f} s "
          f"(recall@10 {incremental['recall_at_10']:.4f}, updated from {incremental.get('updated_from')})")
    if af and "error" in af:
        print(f"autofaiss: {af['error']} ({af['seconds']:.0f} s)")
    elif af:
        print(f"autofaiss {af.get('key')}: build {af['seconds']:.1f} s, recall@10 {af['recall_at_10']:.4f}, "
              f"index {af['bytes'] / 1e9:.2f} GB")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
