"""Images/s of one segment through the refresh's segment path on one device, against the models' own ceilings.

Builds paper-sized models from random init with the project's builders (no downloads; throughput does not
depend on the weights): FCOS, RetinaNet and Faster R-CNN on ResNet-50-FPN at 800-1333 px, score threshold 0
so each returns its 100 boxes; a ResNet-50-D CGD embedder (GeM + MAC, 224 px, 1024 dimensions); weighted
boxes fusion with ``conf_type max`` and at most 10 boxes per image. Writes synthetic 1024x768 JPEGs, then
measures on the same images:

- end to end: :func:`clothret.pipeline.segment.run_segment` (the segment engine) with the given engine
  settings, and the old path (reader thread pool -> ``map_batch`` per batch) as the baseline;
- the stage table of the engine's path: read + decode, each detector on device-resident batches, fusion
  on one thread, crops cut on the device, the embedder on those crops;
- the ceilings: the same networks as torchvision and timm run them, on device-resident float tensors, in
  float32 and under bf16 autocast (the embedder also channels-last), and the ratios to them;
- with norm folding on (the default), the detectors once more with their batch norms unfolded, and with
  convolution fusion on (the default) once more with each convolution's bias, ReLU and residual add as
  kernels of their own;
- ``--profile``: torch.profiler over two batches of each detector: wall time, time the device was busy, the
  costliest operators (full tables in ``DIR/profile_<name>.txt``);
- ``--mixed-orientation``: every other image portrait, as in a real catalogue (try it with
  ``--variants group_by_shape=false`` to see what batching by shape saves);
- ``--variants``: end to end again under other engine settings, one row each, e.g.
  ``--variants 'cudnn_benchmark=true;concurrent_detectors=false;batch_size=32;compile=max-autotune-no-cudagraphs'``
  (each variant's line goes to the log as soon as it is measured, so a time limit keeps the ones done).

The last line printed is one JSON object (also written to ``DIR/gpu_throughput.json``); the table and the
log go to ``DIR/gpu_throughput.txt``. ``--small`` runs tiny models on small images: a CPU smoke run;
``--size mid`` ResNet-18-FPN detectors at 320-533 px on 640x480 images, a CPU run of minutes.

    python3 bench/gpu_throughput.py --out /tmp/gpu_bench          # on a GPU machine (~1-3 minutes)
    python3 bench/gpu_throughput.py --small --out /tmp/gpu_small  # seconds, on the CPU
    python3 bench/gpu_throughput.py --size mid --mixed-orientation --skip-old --variants group_by_shape=false \
        --out /tmp/gpu_mid                                         # what batching by shape saves, CPU minutes
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow torch on a shared CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clothret.cuda_graphs import CAPTURE_ON_SIGHTING, GraphedCalls  # noqa: E402
from clothret.datasets.catalogue import ManifestEntry  # noqa: E402
from clothret.detection.crops import crop_resized  # noqa: E402
from clothret.detection.fusion import FusionConfig  # noqa: E402
from clothret.detection.torchvision_backend import (  # noqa: E402
    TorchvisionDetector,
    TorchvisionDetectorConfig,
    build_detector_model,
)
from clothret.embedding.config import EmbedderConfig  # noqa: E402
from clothret.embedding.model import Embedder, EmbeddingNet  # noqa: E402
from clothret.models import LoadedModels  # noqa: E402
from clothret.op_count import OpCounter  # noqa: E402
from clothret.pipeline.decode import decode_on_device, decode_on_host, for_device  # noqa: E402
from clothret.pipeline.engine import prepare_models  # noqa: E402
from clothret.pipeline.engine_config import EngineConfig, engine_config_from  # noqa: E402
from clothret.pipeline.fusion_pool import auto_processes  # noqa: E402
from clothret.pipeline.mapper import fuse_images, map_batch  # noqa: E402
from clothret.pipeline.reader import ImageFailure, iter_images, read_bytes  # noqa: E402
from clothret.pipeline.segment import run_segment  # noqa: E402

logger = logging.getLogger("gpu_throughput")

PAPER = {
    "image_size": (1024, 768),
    "images": 192,
    "detector": {"backbone": "resnet50", "fpn_channels": 256, "min_size": 800, "max_size": 1333, "score_thresh": 0.0},
    "per_architecture": {
        "fcos": {"min_level": 3, "max_level": 7, "head_convs": 4, "head_norm": "group"},
        "retinanet": {"min_level": 3, "max_level": 7, "head_convs": 4, "head_norm": "none"},
        "faster_rcnn": {"min_level": 2, "max_level": 6, "anchor_scale": 2.0, "roi_head_dim": 1024},
    },
    "embedder": {"backbone": "resnet50d", "backbone_kwargs": {}, "descriptors": "GM", "dim": 1024, "input_size": 224},
    "embedder_batch": 256,
}
SMALL = {
    "image_size": (160, 120),
    "images": 48,
    "detector": {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 128, "max_size": 192, "score_thresh": 0.0},
    "per_architecture": {"fcos": {}, "retinanet": {"head_convs": 1}, "faster_rcnn": {"roi_head_dim": 64}},
    "embedder": {"backbone": "resnet10t", "backbone_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
                 "descriptors": "GM", "dim": 64, "input_size": 48},
    "embedder_batch": 128,
}
MID = {
    "image_size": (640, 480),
    "images": 64,
    "detector": {"backbone": "resnet18", "fpn_channels": 128, "min_size": 320, "max_size": 533, "score_thresh": 0.0},
    "per_architecture": {
        "fcos": {"min_level": 3, "max_level": 7, "head_convs": 2, "head_norm": "group"},
        "retinanet": {"min_level": 3, "max_level": 7, "head_convs": 2, "head_norm": "none"},
        "faster_rcnn": {"min_level": 2, "max_level": 6, "roi_head_dim": 256},
    },
    "embedder": {"backbone": "resnet18", "backbone_kwargs": {}, "descriptors": "GM", "dim": 256, "input_size": 112},
    "embedder_batch": 128,
}
SIZES = {"paper": PAPER, "mid": MID, "small": SMALL}
FUSION = FusionConfig(conf_type="max", max_boxes_per_image=10)


# --------------------------------------------------------------------------------------------- set-up


def build_models(sizes: dict, device: torch.device, batch_size: int, seed: int = 0) -> LoadedModels:
    """Random-init detectors and embedder of ``sizes``, built by the project's own builders."""
    torch.manual_seed(seed)
    detectors = []
    for architecture, extra in sizes["per_architecture"].items():
        config = TorchvisionDetectorConfig(architecture=architecture, **sizes["detector"], **extra)
        detectors.append(
            TorchvisionDetector(build_detector_model(config), config, name=architecture, device=str(device),
                                batch_size=batch_size)
        )
    net = EmbeddingNet(EmbedderConfig(**sizes["embedder"]), pretrained=False)
    embedder = Embedder(net, name="cgd", device=str(device), batch_size=sizes["embedder_batch"])
    return LoadedModels("bench", detectors, [1.0] * len(detectors), FUSION, [embedder])


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0, *, mixed: bool = False
                ) -> list[ManifestEntry]:
    """``n`` baseline JPEGs of ``size`` (width, height): smooth colour fields with a few rectangles; with
    ``mixed`` every other one is turned on its side (height x width)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        width, height = size[::-1] if mixed and i % 2 else size
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(img).copy()
        for _ in range(4):
            x1, y1 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
            x2, y2 = x1 + int(rng.integers(width // 8, width // 3)), y1 + int(rng.integers(height // 8, height // 3))
            pixels[y1:y2, x1:x2] = rng.integers(0, 256, size=3, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        entries.append(ManifestEntry(f"{i:05d}", str(path), f"{i:064x}", f"item{i}"))
    return entries


# --------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable, *args, **kwargs) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return out, time.perf_counter() - start


def time_detector(detector: TorchvisionDetector, batches: list[list[torch.Tensor]], dtype) -> tuple[list, float]:
    """The first batch twice to warm up (the second time captures its CUDA graph, with ``cuda_graphs`` on),
    then every batch through ``detect_resident``: the detections per batch, seconds."""
    for _ in range(CAPTURE_ON_SIGHTING):
        detector.detect_resident(batches[0], autocast_dtype=dtype)
    return timed(detector.device, lambda: [detector.detect_resident(b, autocast_dtype=dtype) for b in batches])


def host_ops_per_batch(detector: TorchvisionDetector, batch: list[torch.Tensor], dtype) -> tuple[int, int]:
    """The torch operations one ``detect_resident`` call issues for ``batch`` and how many of them wait for the
    device (after the warm-up; a CUDA graph's replay counts as none: its kernels go in one launch)."""
    with OpCounter() as counter:
        detector.detect_resident(batch, autocast_dtype=dtype)
    return counter.ops, counter.waits


def old_path(entries: list, models: LoadedModels, batch_size: int) -> int:
    """Today's loop before the engine: reader thread pool -> map_batch (numpy images, per-image conversion)."""
    n_ok, batch = 0, []
    for _, image in iter_images([e.uri for e in entries]):
        if isinstance(image, ImageFailure):
            continue
        batch.append(image)
        if len(batch) >= batch_size:
            n_ok += len(map_batch(models, batch))
            batch = []
    if batch:
        n_ok += len(map_batch(models, batch))
    return n_ok


def set_layout(models: LoadedModels, channels_last: bool) -> None:
    """Every network's weights in channels-last or the default memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for det in models.detectors:
        det.model.to(memory_format=fmt)
    for embedder in models.embedders:
        embedder.net.to(memory_format=fmt)


def decode_all(entries: list, device: torch.device, batch_size: int) -> list[list[torch.Tensor]]:
    """Read and decode every image onto ``device`` the way the engine does, in batches."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        data = list(pool.map(read_bytes, [e.uri for e in entries]))
    batches = []
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        jpegs = [for_device(d) for d in chunk] if device.type == "cuda" else [None] * len(chunk)
        if all(j is not None for j in jpegs):
            batches.append(decode_on_device(jpegs, device))
        else:
            batches.append([torch.from_numpy(np.array(decode_on_host(d, "bench"))).permute(2, 0, 1).to(device)
                            for d in chunk])
    return batches


def ceiling_detector(detector: TorchvisionDetector, batches: list[list[torch.Tensor]], dtype) -> float:
    """Images/s of torchvision's own forward on device-resident float images (``dtype``: autocast or None)."""
    model, device = detector.model, detector.device
    model.to(memory_format=torch.contiguous_format)
    floats = [[img.float().div(255.0) for img in batch] for batch in batches]
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(floats[0])  # warm-up
        _, seconds = timed(device, lambda: [model(batch) for batch in floats])
    return sum(len(b) for b in floats) / seconds


def torchvision_host_ops(detector: TorchvisionDetector, batch: list[torch.Tensor]) -> tuple[int, int]:
    """:func:`host_ops_per_batch` of torchvision's own forward (float32 images made first)."""
    floats = [img.float().div(255.0) for img in batch]
    with torch.inference_mode(), OpCounter() as counter:
        detector.model(floats)
    return counter.ops, counter.waits


def ceiling_embedder(embedder: Embedder, crops: torch.Tensor, dtype, channels_last: bool) -> float:
    """Crops/s of the embedding network alone on device-resident, normalised crops."""
    net, device = embedder.net, embedder.device
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = (crops / 255.0 - 0.45) / 0.225
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    chunks = list(x.split(embedder.batch_size))
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        net(chunks[0])
        _, seconds = timed(device, lambda: [net(c) for c in chunks])
    return len(x) / seconds


def profile_detectors(models: LoadedModels, batches: list, dtype, out: Path, n_batches: int = 2) -> dict:
    """torch.profiler over ``n_batches`` batches of each detector (after the timed runs): each one's wall time,
    the time its device was busy, and its costliest operators, written to ``out/profile_<name>.txt``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = models.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    results = {}
    for det in models.detectors:
        chunk = batches[:n_batches]
        with profile(activities=activities) as prof:
            _, seconds = timed(models.device, lambda d=det: [d.detect_resident(b, autocast_dtype=dtype) for b in chunk])
        averages = prof.key_averages()
        (out / f"profile_{det.name}.txt").write_text(averages.table(sort_by=sort_key, row_limit=40) + "\n")
        kernels = [e for e in prof.events() if getattr(e, "device_type", None) is not None
                   and str(e.device_type).endswith("CUDA")]
        busy_ms = sum(e.device_time for e in kernels) / 1e3 if cuda else float("nan")
        top = sorted(averages, key=lambda e: getattr(e, "self_device_time_total" if cuda else "self_cpu_time_total", 0),
                     reverse=True)[:8]
        results[det.name] = {
            "images": sum(len(b) for b in chunk),
            "wall_ms": round(seconds * 1e3, 1),
            "device_busy_ms": round(busy_ms, 1),
            "top_ms": {e.key: round(getattr(e, "self_device_time_total" if cuda else "self_cpu_time_total", 0) / 1e3, 2)
                       for e in top},
        }
    return results


def parse_variants(text: str, base: EngineConfig) -> list[tuple[str, EngineConfig]]:
    """``'a=1,b=x;c=true'`` -> named engine settings: the run's own with each variant's overrides (validated)."""
    variants = []
    for spec in filter(None, (part.strip() for part in text.split(";"))):
        try:
            settings = engine_config_from(filter(None, (kv.strip() for kv in spec.split(","))), base=base,
                                          option="--variants")
        except ValueError as exc:
            raise SystemExit(f"--variants: {spec!r}: {exc}\nsettings: {sorted(EngineConfig.model_fields)}") from None
        variants.append((spec, settings))
    return variants


@dataclass
class EndToEnd:
    """One timed :func:`run_segment` over every image (after a warm-up run)."""

    result: object  # the SegmentResult
    seconds: float
    peak_gb: float  # reserved by the caching allocator: what the process holds
    peak_allocated_gb: float  # in tensors: reserved minus this is the allocator's own (per-stream pools, gaps)
    warm_up_s: float
    graphs: dict | None = None  # CUDA graphs of the timed run (:func:`graph_counts`), when any network has them

    def summary(self) -> dict:
        out = {"e2e_images_per_s": round(len(self.result.image_ids) / self.seconds, 2),
               "peak_gpu_memory_gb": round(self.peak_gb, 2),
               "peak_gpu_allocated_gb": round(self.peak_allocated_gb, 2), "warm_up_s": round(self.warm_up_s, 1),
               "failed": self.result.n_failed}
        return out | ({"cuda_graphs": self.graphs} if self.graphs else {})


def _graphed_calls(models: LoadedModels) -> dict[str, GraphedCalls]:
    """The networks that run through CUDA graphs now, by name."""
    found = {}
    for detector in models.detectors:
        graphs = getattr(getattr(detector, "_parts", None), "graphs", None)
        if isinstance(graphs, GraphedCalls):
            found[detector.name] = graphs
    for embedder in models.embedders:
        if isinstance(getattr(embedder, "_forward", None), GraphedCalls):
            found[f"embedder {embedder.name}"] = embedder._forward
    return found


def graph_counts(models: LoadedModels, before: dict[str, tuple[int, int]] | None = None) -> dict:
    """Per network with CUDA graphs: captures and replays (since ``before``, a snapshot of ``(captures,
    replays)`` by name), graphs held, and why it stopped capturing or runs eagerly, if it does."""
    out = {}
    for name, calls in _graphed_calls(models).items():
        captures, replays = (before or {}).get(name, (0, 0))
        out[name] = {"captures": calls.captures - captures, "replays": calls.replays - replays,
                     "held": calls.graphs}
        if calls.disabled or calls.stopped_capturing:
            out[name]["off"] = calls.disabled or "stopped capturing: shapes vary too much"
    return out


def end_to_end(entries: list, models: LoadedModels, engine: EngineConfig, device: torch.device) -> EndToEnd:
    """:func:`run_segment` under ``engine``, warmed up (cuDNN, allocator, compilation, CUDA graphs: the first
    batches of each shape, seen twice), timed, its peak memory."""
    warm = entries[: 2 * CAPTURE_ON_SIGHTING * engine.batch_size]
    torch.backends.cudnn.benchmark = engine.cudnn_benchmark
    if device.type == "cuda":  # what earlier runs left cached is not this run's memory
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    run_segment(warm, models, engine=engine)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = {name: (calls.captures, calls.replays) for name, calls in _graphed_calls(models).items()}
    result, seconds = timed(device, run_segment, entries, models, engine=engine)
    cuda = device.type == "cuda"
    peak_gb = torch.cuda.max_memory_reserved(device) / 1e9 if cuda else 0.0
    allocated_gb = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else 0.0
    return EndToEnd(result, seconds, peak_gb, allocated_gb, warm_s, graph_counts(models, before))


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the images, the table/log and the JSON")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper",
                        help="models and images: the paper's (default), mid (ResNet-18-FPN at 320-533 px on 640x480, "
                        "minutes on 2 CPU cores) or small")
    parser.add_argument("--small", action="store_true", help="--size small: tiny models and images, a CPU smoke run")
    parser.add_argument("--images", type=int, default=None, help="number of images (default 192, mid 64, small 48)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (the default batch size)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:N]")
    parser.add_argument("--batches-in-flight", type=int, default=EngineConfig().batches_in_flight)
    parser.add_argument("--autocast", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--compile", default="off", help="torch.compile mode for the networks (default off)")
    parser.add_argument("--no-concurrent-detectors", action="store_true",
                        help="run the detectors one after the other (default: each on its own CUDA stream)")
    parser.add_argument("--fusion-processes", type=int, default=None,
                        help="fusion worker processes (default: the engine's auto, 0 on the CPU)")
    parser.add_argument("--no-device-decode", action="store_true", help="decode every image with Pillow")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN times its algorithms per shape")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--skip-old", action="store_true", help="do not run the old path (it is slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--mixed-orientation", action="store_true",
                        help="every other image portrait (the stage rows then batch in arrival order)")
    parser.add_argument("--profile", action="store_true",
                        help="profile two batches of each detector (DIR/profile_<name>.txt, a table row each)")
    parser.add_argument("--no-fold-norms", action="store_true", help="run the networks with their batch norms")
    parser.add_argument("--no-fuse-convs", action="store_true",
                        help="run each convolution's bias, ReLU and residual add as separate kernels")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="run the backbones and heads through CUDA graphs (the stage table then also times the "
                        "detectors without them; without this flag, with them)")
    parser.add_argument(
        "--variants", default="",
        help="end to end again under other engine settings, ';'-separated, each a ','-separated list of "
        "setting=value overrides of the run's settings, e.g. 'cudnn_benchmark=true;batch_size=32;"
        "compile=max-autotune-no-cudagraphs' (a table row and a JSON entry each)",
    )
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_throughput.txt"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)],
    )
    for name in ("clothret",):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    size_name = "small" if args.small else args.size
    sizes = SIZES[size_name]
    n_images = args.images or sizes["images"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    device_name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    engine = EngineConfig(
        batch_size=args.batch_size, batches_in_flight=args.batches_in_flight, autocast=args.autocast,
        compile=args.compile, concurrent_detectors=not args.no_concurrent_detectors, fusion_processes=args.fusion_processes,
        decode_on_device=not args.no_device_decode, channels_last=not args.no_channels_last,
        cudnn_benchmark=args.cudnn_benchmark, fold_norms=not args.no_fold_norms,
        fuse_convs=not args.no_fuse_convs, cuda_graphs=args.cuda_graphs,
    )
    variants = parse_variants(args.variants, engine)
    dtype = engine.autocast_dtype(device)
    fusion_processes = auto_processes(device.type) if engine.fusion_processes is None else engine.fusion_processes
    low = dtype or torch.bfloat16  # the ceilings' reduced precision
    t0 = time.perf_counter()
    entries = write_jpegs(out / "images", n_images, sizes["image_size"], mixed=args.mixed_orientation)
    models = build_models(sizes, device, args.batch_size)
    logger.info("set-up: %d JPEGs %dx%d and %d detectors + 1 embedder built in %.1f s on %s", n_images,
                *sizes["image_size"], len(models.detectors), time.perf_counter() - t0, device_name)

    # ---- end to end, new path
    run = end_to_end(entries, models, engine, device)
    result, e2e_s, peak_gb = run.result, run.seconds, run.peak_gb
    e2e = n_images / e2e_s
    logger.info("engine: %d images in %.2f s, %d boxes, %d failed", n_images, e2e_s, len(result.boxes), result.n_failed)
    if run.graphs:
        logger.info("engine: CUDA graphs in the timed run: %s", json.dumps(run.graphs))

    # ---- stages of the new path
    batches, decode_s = timed(device, decode_all, entries, device, args.batch_size)
    prepare_models(models, engine)
    stage: dict[str, float] = {"read + decode": n_images / decode_s}
    per_detector = []
    all_s = 0.0
    for det in models.detectors:
        dets, seconds = time_detector(det, batches, dtype)
        per_detector.append(dets)
        stage[f"detect {det.name}"] = n_images / seconds
        all_s += seconds
    stage["detect, all detectors"] = n_images / all_s
    host_ops = {det.name: host_ops_per_batch(det, batches[0], dtype) for det in models.detectors}
    host_ops_torchvision = {det.name: torchvision_host_ops(det, batches[0]) for det in models.detectors}
    copy_settings = {"channels_last": engine.channels_last, "compile": engine.compile, "fold_norms": engine.fold_norms,
                     "fuse_convs": engine.fuse_convs, "cuda_graphs": engine.cuda_graphs}

    def all_detectors_per_s(**overrides) -> float:  # the detectors under other copy settings, then restored
        seconds = 0.0
        for det in models.detectors:
            det.configure(**{**copy_settings, **overrides})
            seconds += time_detector(det, batches, dtype)[1]
            det.configure(**copy_settings)
        return n_images / seconds

    if engine.fold_norms and engine.fuse_convs:  # what fusing the convolutions gains
        stage["detect, all detectors, convs not fused"] = all_detectors_per_s(fuse_convs=False)
    if engine.fold_norms:  # the same detectors on their own weights, norms not folded: what folding gains
        stage["detect, all detectors, norms not folded"] = all_detectors_per_s(fold_norms=False)
    if device.type == "cuda" and engine.compile == "off":  # what CUDA graphs gain (or cost)
        other = not engine.cuda_graphs
        stage[f"detect, all detectors, {'' if other else 'no '}CUDA graphs"] = all_detectors_per_s(cuda_graphs=other)
    profiles = profile_detectors(models, batches, dtype, out) if args.profile else {}
    sizes_wh = [[(int(i.shape[2]), int(i.shape[1])) for i in b] for b in batches]
    fused, fuse_s = timed(device, lambda: [
        fuse_images(models, [dets[k] for dets in per_detector], sizes_wh[k]) for k in range(len(batches))
    ])
    stage["fusion (one thread)"] = n_images / fuse_s
    boxes = [[d.boxes for d in f] for f in fused]
    n_crops = sum(len(b) for bb in boxes for b in bb)
    embedder = models.embedders[0]
    size = embedder.config.input_size
    crops, crop_s = timed(device, lambda: [crop_resized(b, bx, size) for b, bx in zip(batches, boxes)])
    stage["crop (roi_align), crops/s"] = n_crops / crop_s
    all_crops = torch.cat(crops)
    _, embed_s = timed(device, embedder.embed_pixels, all_crops, autocast_dtype=dtype)
    stage["embed, crops/s"] = n_crops / embed_s
    _, path_s = timed(device, lambda: [
        models.embed_boxes(b, bx, autocast_dtype=dtype) for b, bx in zip(batches, boxes)
    ])
    embed_path = n_crops / path_s
    stage["crop + embed path, crops/s"] = embed_path

    # ---- ceilings: the networks as torchvision / timm run them, on device-resident tensors
    ceilings: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    for det in models.detectors:
        ceilings["fp32"][det.name] = ceiling_detector(det, batches, None)
        ceilings["bf16"][det.name] = ceiling_detector(det, batches, low)
    ceiling_all = {p: 1.0 / sum(1.0 / v for v in c.values()) for p, c in ceilings.items()}
    embed_ceiling_fp32 = ceiling_embedder(embedder, all_crops, None, False)
    embed_ceiling = ceiling_embedder(embedder, all_crops, low, True)
    set_layout(models, engine.channels_last)  # back to the engine's layout

    # ---- the old path, same images and models
    old_e2e = None
    if not args.skip_old:
        set_layout(models, False)  # as the old path ran: torchvision's and timm's defaults
        old_path(entries[: 2 * args.batch_size], models, args.batch_size)
        n_old, old_s = timed(device, old_path, entries, models, args.batch_size)
        old_e2e = n_old / old_s
        set_layout(models, engine.channels_last)

    # ---- end to end under other settings (same images and models)
    variant_results: dict[str, dict] = {}
    for name, settings in variants:
        variant_results[name] = end_to_end(entries, models, settings, device).summary()
        logger.info("variant %s: %s", name, json.dumps(variant_results[name]))
    torch.backends.cudnn.benchmark = engine.cudnn_benchmark

    lines = [
        f"device {device_name}; {n_images} JPEGs {sizes['image_size'][0]}x{sizes['image_size'][1]}"
        f"{' and turned on their side, alternating' if args.mixed_orientation else ''}, batch "
        f"{args.batch_size}, autocast {dtype}, channels_last {engine.channels_last}, compile {engine.compile}, "
        f"batches in flight {engine.batches_in_flight}, fusion processes {fusion_processes}, device decode {engine.decode_on_device and device.type == 'cuda'}, "
        f"concurrent detectors {engine.concurrent_detectors}, CUDA graphs {engine.cuda_graphs}, "
        f"cuDNN benchmark (ceilings too) {engine.cudnn_benchmark}",
        "",
        f"{'end to end':<44}{'images/s':>12}",
        f"{'  engine (run_segment)':<44}{e2e:>12.1f}",
        f"{'  old path (reader -> map_batch)':<44}{old_e2e if old_e2e is not None else float('nan'):>12.1f}",
        "",
        f"{'stage (engine path)':<44}{'per s':>12}",
        *[f"{'  ' + k:<44}{v:>12.1f}" for k, v in stage.items()],
        "",
        f"{'ceiling: torchvision/timm on resident tensors':<44}{'fp32':>12}{str(low).replace('torch.', ''):>12}",
        *[f"{'  ' + name:<44}{ceilings['fp32'][name]:>12.1f}{ceilings['bf16'][name]:>12.1f}" for name in ceilings["fp32"]],
        f"{'  all detectors':<44}{ceiling_all['fp32']:>12.1f}{ceiling_all['bf16']:>12.1f}",
        f"{'  embedder, crops/s (low: channels_last)':<44}{embed_ceiling_fp32:>12.1f}{embed_ceiling:>12.1f}",
        "",
        f"{'host operations per batch (of which waits)':<44}{'engine':>12}{'torchvision':>16}",
        *[f"{'  ' + name:<44}{f'{ops} ({waits})':>12}{'{} ({})'.format(*host_ops_torchvision[name]):>16}"
          for name, (ops, waits) in host_ops.items()],
        "",
        f"ratios: end to end / fp32 ceiling {e2e / ceiling_all['fp32']:.2f}, / low-precision ceiling "
        f"{e2e / ceiling_all['bf16']:.2f}; embed path / embedder ceiling {embed_path / embed_ceiling:.2f}"
        + (f"; engine / old path {e2e / old_e2e:.2f}" if old_e2e else ""),
        f"peak GPU memory, end to end: {peak_gb:.2f} GB reserved, {run.peak_allocated_gb:.2f} GB in tensors",
    ]
    if profiles:
        lines += ["", f"{'profile, two batches (profile_<name>.txt)':<44}{'wall ms':>10}{'busy ms':>10}  costliest"]
        lines += [f"{'  ' + name:<44}{r['wall_ms']:>10.1f}{r['device_busy_ms']:>10.1f}  "
                  + ", ".join(f"{k} {v:.1f}" for k, v in list(r["top_ms"].items())[:3]) for name, r in profiles.items()]
    if variant_results:
        lines += ["", f"{'end to end under other settings':<64}{'images/s':>10}{'x run':>8}{'peak GB':>9}"
                  f"{'tensors':>9}"]
        lines += [f"{'  ' + name:<64}{r['e2e_images_per_s']:>10.1f}{r['e2e_images_per_s'] / e2e:>8.2f}"
                  f"{r['peak_gpu_memory_gb']:>9.2f}{r['peak_gpu_allocated_gb']:>9.2f}"
                  for name, r in variant_results.items()]
    table = "\n".join(lines)
    print(table)
    with open(log_path, "a") as f:
        f.write("\n" + table + "\n")
    summary = {
        "e2e_images_per_s": round(e2e, 2),
        "old_e2e_images_per_s": round(old_e2e, 2) if old_e2e else None,
        "ceiling_fp32_images_per_s": round(ceiling_all["fp32"], 2),
        "ceiling_bf16_images_per_s": round(ceiling_all["bf16"], 2),
        "ceilings_per_detector": {p: {k: round(v, 2) for k, v in c.items()} for p, c in ceilings.items()},
        "e2e_over_fp32_ceiling": round(e2e / ceiling_all["fp32"], 3),
        "e2e_over_bf16_ceiling": round(e2e / ceiling_all["bf16"], 3),
        "embed_path_crops_per_s": round(embed_path, 1),
        "embed_ceiling_crops_per_s": round(embed_ceiling, 1),
        "embed_ceiling_fp32_crops_per_s": round(embed_ceiling_fp32, 1),
        "embed_path_over_ceiling": round(embed_path / embed_ceiling, 3),
        "stages_per_s": {k: round(v, 1) for k, v in stage.items()},
        "host_ops_per_batch": {name: ops for name, (ops, _) in host_ops.items()},
        "host_waits_per_batch": {name: waits for name, (_, waits) in host_ops.items()},
        "torchvision_host_ops_per_batch": {name: ops for name, (ops, _) in host_ops_torchvision.items()},
        "torchvision_host_waits_per_batch": {name: waits for name, (_, waits) in host_ops_torchvision.items()},
        "device": device_name,
        "peak_gpu_memory_gb": round(peak_gb, 2),
        "peak_gpu_allocated_gb": round(run.peak_allocated_gb, 2),
        "cuda_graphs": run.graphs,
        "images": n_images,
        "boxes": int(len(result.boxes)),
        "failed": result.n_failed,
        "engine": engine.model_dump(mode="json"),
        "variants": variant_results,
        "profiles": profiles,
        "small": size_name == "small",
        "size": size_name,
        "mixed_orientation": args.mixed_orientation,
    }
    (out / "gpu_throughput.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
