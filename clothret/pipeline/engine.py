"""The segment engine: read → decode → detect → fuse → crop → embed over a segment, stages overlapped.

::

    reader threads ──► loader thread ────────► [decoded batches] ──► model thread ──► fuser
    (read; Pillow      (batches by shape;        batches_in_flight    detect(b)         fuse(b-1)
     decodes)           nvJPEG on the GPU;                            embed(b-1) ◄──    (a thread, or worker
                        upload once)                                                     processes)

The loader cuts batches of images of similar aspect ratio (:mod:`clothret.pipeline.batching`: less padding,
and an image of a common size gets what it would get alone). The images go to the models' device once, as
uint8. There the detectors run batched
(:meth:`~clothret.detection.torchvision_backend.TorchvisionDetector.detect_resident`), and after fusion the
crops are cut and resized from the resident images and embedded (:meth:`~clothret.models.LoadedModels.embed_boxes`).
While the detectors work on batch ``b`` (CUDA kernels and torch's CPU kernels release the GIL), the fuser
(:mod:`clothret.pipeline.fusion_pool`) fuses batch ``b - 1`` and the loader decodes ``b + 1``; then the
model thread embeds ``b - 1``. On CUDA with several detectors (``concurrent_detectors``) each detector has a
lane of its own (a thread and a stream) that takes the batches in order, so the model thread hands a batch
over and goes on embedding, a fast detector starts the next batch while a slow one finishes this one, and
one detector's post-processing on the host overlaps another's network on the GPU. Every queue is bounded
(``batches_in_flight``), so memory stays flat. The same code runs on the CPU, where Pillow decodes and the
networks run in float32, one detector after another.

One model error on one image is that image's failure: a batch that raises anywhere after decoding runs
again image by image (:func:`~clothret.pipeline.mapper.map_one_by_one`). Detector and embedder objects
without the device-resident methods (other backends) get numpy images and crops instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from clothret.detection.types import Detections
from clothret.models import LoadedModels
from clothret.pipeline.batching import RawBatch, ShapeBatcher
from clothret.pipeline.decode import DeviceJpeg, decode_on_device, decode_on_host, for_device
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.fusion_pool import Fuser, auto_processes
from clothret.pipeline.host_memory import reuse_freed_memory
from clothret.pipeline.mapper import ImageOutput, fuse_images, map_one_by_one
from clothret.pipeline.reader import BAD_INPUT, ImageFailure, ImageLimits, UnusableImage, read_bytes

logger = logging.getLogger(__name__)

OnOutput = Callable[[int, "ImageOutput | ImageFailure"], None]
"""``on_output(index, output or failure)``, called once per image from the model thread."""

_END = object()

SHAPE_WINDOW_BATCHES = 4
"""Images held back to group batches by shape: at most this many batches' worth..."""
SHAPE_WINDOW_BYTES = 1 << 30
"""... and at most this much memory (decoded images on the host; JPEG bytes for the GPU's decoder)."""


@dataclass
class _Batch:
    """Decoded images on the device, their segment indices and names, and the failures read before them."""

    indices: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    failures: list[tuple[int, ImageFailure]] = field(default_factory=list)
    ready: object | None = None  # a CUDA event the model stream waits for


# --------------------------------------------------------------------------------------------- models


def _detect(models: LoadedModels, images: Sequence[torch.Tensor], dtype) -> list[list[Detections]]:
    """Every detector on the batch, one after another: device-resident when it can, numpy images otherwise."""
    host: list[np.ndarray] | None = None
    out = []
    for detector in models.detectors:
        if hasattr(detector, "detect_resident"):
            out.append(detector.detect_resident(images, autocast_dtype=dtype))
        else:
            if host is None:
                host = [img.permute(1, 2, 0).cpu().numpy() for img in images]
            out.append(detector.detect(host))
    return out


class _DetectorLanes:
    """Each detector on a thread of its own (and on CUDA a stream of its own), taking batches in order: one
    detector's post-processing on the host overlaps another's network on the device, and a fast detector
    goes on to the next batch while a slow one finishes this one (no wait for the slowest per batch)."""

    def __init__(self, detectors: Sequence, device: torch.device, dtype) -> None:
        self.detectors, self.dtype = detectors, dtype
        cuda = device.type == "cuda"
        self.streams = [torch.cuda.Stream(device) if cuda else None for _ in detectors]
        self.threads = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clothret-detect-{i}")
                        for i in range(len(detectors))]

    def submit(self, batch: _Batch) -> list[Future]:
        """Futures of each detector's detections of ``batch``."""
        return [thread.submit(self._run, detector, stream, batch)
                for detector, stream, thread in zip(self.detectors, self.streams, self.threads)]

    def _run(self, detector, stream, batch: _Batch) -> list[Detections]:
        if stream is None:
            return detector.detect_resident(batch.images, autocast_dtype=self.dtype)
        if batch.ready is not None:  # the upload, not whatever else the model thread's stream has queued since
            stream.wait_event(batch.ready)
        else:
            stream.wait_stream(torch.cuda.current_stream(stream.device))
        with torch.cuda.stream(stream):
            for img in batch.images:
                img.record_stream(stream)
            return detector.detect_resident(batch.images, autocast_dtype=self.dtype)

    def shutdown(self) -> None:
        for thread in self.threads:
            thread.shutdown(wait=True, cancel_futures=True)


def _outputs(fused: Sequence[Detections], features: np.ndarray) -> list[ImageOutput]:
    out, start = [], 0
    for dets in fused:
        out.append(ImageOutput(dets, features[start : start + len(dets)]))
        start += len(dets)
    return out


def _sizes(images: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    return [(int(img.shape[2]), int(img.shape[1])) for img in images]


def map_resident(models: LoadedModels, images: Sequence[torch.Tensor], *, config: EngineConfig = EngineConfig()
                 ) -> list[ImageOutput]:
    """Detect, fuse, crop and embed uint8 (3, H, W) images on the models' device, in one go (no overlap)."""
    dtype = config.autocast_dtype(models.device)
    fused = fuse_images(models, _detect(models, images, dtype), _sizes(images))
    features = models.embed_boxes(list(images), [d.boxes for d in fused], autocast_dtype=dtype)
    return _outputs(fused, features)


def prepare_models(models: LoadedModels, config: EngineConfig) -> None:
    """Put the models in the memory format, compile mode, CUDA graphs, norm folding and convolution fusion of
    ``config`` (models without the settings are left alone), give the device-resident detectors the batch
    size of ``config`` (when set: the batches that compiled parts and CUDA graphs are filled up to); turn
    cuDNN's benchmark mode on when ``config`` asks for it."""
    if config.cudnn_benchmark and models.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config.batch_size is not None:
        for detector in models.detectors:
            if hasattr(detector, "detect_resident") and hasattr(detector, "batch_size"):
                detector.batch_size = config.batch_size
    for model in (*models.detectors, *models.embedders):
        if hasattr(model, "configure"):
            model.configure(channels_last=config.channels_last, compile=config.compile, fold_norms=config.fold_norms,
                            fuse_convs=config.fuse_convs, cuda_graphs=config.cuda_graphs)


# --------------------------------------------------------------------------------------------- reading


def _read(uri: str, limits: ImageLimits, on_device: bool) -> np.ndarray | DeviceJpeg | ImageFailure:
    data = read_bytes(uri)
    if isinstance(data, ImageFailure):
        return data
    if on_device:
        try:
            jpeg = for_device(data, limits=limits)
        except UnusableImage as exc:
            return ImageFailure(uri, BAD_INPUT, str(exc))
        if jpeg is not None:
            return jpeg
    return decode_on_host(data, uri, limits=limits)


def _read_ahead(uris: Sequence[str], limits: ImageLimits, on_device: bool, threads: int, ahead: int,
                stop: threading.Event) -> Iterator[tuple[int, np.ndarray | DeviceJpeg | ImageFailure]]:
    """``(index, result)`` in input order, up to ``ahead`` files read ahead by ``threads`` threads."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clothret-read") as pool:
        pending: deque = deque()
        next_index = 0
        try:
            while (next_index < len(uris) or pending) and not stop.is_set():
                while next_index < len(uris) and len(pending) < ahead:
                    pending.append((next_index, pool.submit(_read, uris[next_index], limits, on_device)))
                    next_index += 1
                index, future = pending.popleft()
                yield index, future.result()
        finally:
            for _, future in pending:
                future.cancel()


# --------------------------------------------------------------------------------------------- engine


class SegmentEngine:
    """Runs :func:`run_engine`; one instance per segment run."""

    def __init__(self, models: LoadedModels, config: EngineConfig, limits: ImageLimits) -> None:
        self.models, self.config, self.limits = models, config, limits
        self.device = models.device
        self.cuda = self.device.type == "cuda"
        self.dtype = config.autocast_dtype(self.device)
        self.decoded: queue.Queue = queue.Queue(maxsize=config.batches_in_flight)
        self.stop = threading.Event()
        self.concurrent = (
            self.cuda and config.concurrent_detectors and len(models.detectors) > 1
            and all(hasattr(d, "detect_resident") for d in models.detectors)
        )
        """Detectors on lanes of their own (:class:`_DetectorLanes`); otherwise one after another on the model
        thread."""

    # ---- loader thread

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.decoded.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _materialise(self, raw: RawBatch) -> _Batch:
        """Decode the batch's device JPEGs on the GPU (Pillow when that fails) and move every image there."""
        batch = _Batch(failures=raw.failures)
        jpegs = [item for item in raw.items if isinstance(item, DeviceJpeg)]
        decoded: dict[int, torch.Tensor] = {}
        if jpegs:
            try:
                for item, img in zip(jpegs, decode_on_device(jpegs, self.device)):
                    decoded[id(item)] = img
            except Exception as exc:  # noqa: BLE001 - Pillow decodes them instead, and says what is wrong
                logger.warning("GPU decoding of %d JPEGs failed (%s): decoding them with Pillow", len(jpegs), exc)
        for index, name, item in zip(raw.indices, raw.names, raw.items):
            if isinstance(item, DeviceJpeg):
                img = decoded.get(id(item))
                if img is None:
                    host = decode_on_host(item.data, name, limits=self.limits)
                    if isinstance(host, ImageFailure):
                        batch.failures.append((index, host))
                        continue
                    img = self._upload(host)
            else:
                img = self._upload(item)
            batch.indices.append(index)
            batch.names.append(name)
            batch.images.append(img)
        return batch

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        if not (image.flags.writeable and image.flags.c_contiguous):  # Pillow's arrays are read-only
            image = np.array(image)
        tensor = torch.from_numpy(image)
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(2, 0, 1)

    def _load(self, uris: Sequence[str], names: Sequence[str]) -> None:
        """The loader thread: read ahead, cut batches of similar shape, decode and upload them, hand them to the
        model thread."""
        on_device = self.cuda and self.config.decode_on_device
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        size = self.config.batch_size
        ahead = size * (self.config.batches_in_flight + 1)
        batcher: ShapeBatcher = ShapeBatcher(size, size * SHAPE_WINDOW_BATCHES, by_shape=self.config.group_by_shape,
                                             max_bytes=SHAPE_WINDOW_BYTES)

        def hand_on(batches) -> bool:
            return all(self._put(self._ready(self._materialise(raw), stream)) for raw in batches)

        try:
            with torch.cuda.device(self.device) if self.cuda else _nothing(), \
                    torch.cuda.stream(stream) if self.cuda else _nothing():
                for index, item in _read_ahead(uris, self.limits, on_device, self.config.read_threads, ahead, self.stop):
                    if isinstance(item, ImageFailure):
                        ready = batcher.add_failure(index, item)
                    else:
                        if isinstance(item, DeviceJpeg):
                            height, width, nbytes = item.height, item.width, len(item.data)
                        else:
                            (height, width), nbytes = item.shape[:2], item.nbytes
                        ready = batcher.add(index, names[index], item, height, width, nbytes)
                    if not hand_on(ready):
                        return
                if not hand_on(batcher.drain()):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the model thread, which raises it
            self._put(exc)

    def _ready(self, batch: _Batch, stream) -> _Batch:
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
            batch.ready = event
        return batch

    # ---- model thread

    def _take(self) -> _Batch | None:
        item = self.decoded.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        if item.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(item.ready)
            for img in item.images:
                img.record_stream(current)
        return item

    def _isolate(self, batch: _Batch, exc: Exception) -> list[ImageOutput | ImageFailure]:
        def one(models: LoadedModels, images: Sequence[torch.Tensor]) -> list[ImageOutput]:
            return map_resident(models, images, config=self.config)

        return map_one_by_one(self.models, batch.images, batch.names, exc, map_fn=one)

    def _embed(self, batch: _Batch, fused: Future) -> list[ImageOutput | ImageFailure]:
        try:
            dets = fused.result()
            features = self.models.embed_boxes(batch.images, [d.boxes for d in dets], autocast_dtype=self.dtype)
            return list(_outputs(dets, features))
        except Exception as exc:  # noqa: BLE001 - sorted out image by image
            return self._isolate(batch, exc)

    def run(self, uris: Sequence[str], names: Sequence[str], on_output: OnOutput) -> None:
        reuse_freed_memory()
        prepare_models(self.models, self.config)
        loader = threading.Thread(target=self._load, args=(uris, names), name="clothret-load", daemon=True)
        processes = self.config.fusion_processes
        fusion = Fuser(self.models.wbf_weights, self.models.fusion,
                       processes=auto_processes(self.device.type) if processes is None else processes)
        lanes = _DetectorLanes(self.models.detectors, self.device, self.dtype) if self.concurrent else None
        ahead = self.config.batches_in_flight
        detecting: deque[tuple[_Batch, list[Future]]] = deque()  # on the lanes
        fusing: deque[tuple[_Batch, Future]] = deque()

        def finish(batch: _Batch, results: Sequence[ImageOutput | ImageFailure]) -> None:
            for index, failure in batch.failures:
                on_output(index, failure)
            for index, result in zip(batch.indices, results):
                on_output(index, result)

        def detected(batch: _Batch, per_detector: Callable[[], list[list[Detections]]]) -> None:
            try:
                found = per_detector()
            except Exception as exc:  # noqa: BLE001 - sorted out image by image
                finish(batch, self._isolate(batch, exc))
            else:
                fusing.append((batch, fusion.submit(found, _sizes(batch.images))))

        def embed_fused(*, all_of_them: bool = False) -> None:
            while fusing and (all_of_them or len(fusing) > ahead or fusing[0][1].done()):
                done, fused = fusing.popleft()
                finish(done, self._embed(done, fused))

        def take_detected(*, all_of_them: bool = False) -> None:
            while detecting and (all_of_them or len(detecting) > ahead or all(f.done() for f in detecting[0][1])):
                done, futures = detecting.popleft()
                detected(done, lambda futures=futures: [f.result() for f in futures])
                embed_fused()

        loader.start()
        try:
            while (batch := self._take()) is not None:
                if not batch.images:
                    finish(batch, [])
                    continue
                if lanes is not None:
                    detecting.append((batch, lanes.submit(batch)))
                    take_detected()
                else:
                    detected(batch, lambda batch=batch: _detect(self.models, batch.images, self.dtype))
                embed_fused()
            take_detected(all_of_them=True)
            embed_fused(all_of_them=True)
        finally:
            self.stop.set()
            while True:  # unblock a loader waiting on a full queue
                try:
                    self.decoded.get_nowait()
                except queue.Empty:
                    break
            loader.join()
            if lanes is not None:
                lanes.shutdown()
            fusion.shutdown()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_engine(
    uris: Sequence[str],
    names: Sequence[str],
    models: LoadedModels,
    on_output: OnOutput,
    *,
    config: EngineConfig = EngineConfig(),
    limits: ImageLimits = ImageLimits(),
) -> None:
    """Run every image through the models, calling ``on_output(index, output or failure)`` once per image.

    Read and decode failures are bad input or transient as the reader says; model failures are sorted out
    image by image. Transient errors that are not about one image are raised.
    """
    if len(uris) != len(names):
        raise ValueError(f"got {len(uris)} URIs but {len(names)} names")
    SegmentEngine(models, config.with_batch_size(None), limits).run(uris, names, on_output)


__all__ = ["OnOutput", "SegmentEngine", "map_resident", "prepare_models", "run_engine"]
