"""Load a published index and search it with the features of query detections.

A build's ``index.faiss`` is memory-mapped where faiss can map its type (flat and HNSW storage with
``IO_FLAG_MMAP_IFC``, IVF lists with ``IO_FLAG_MMAP``), so loading is fast and pages are shared between
processes; other types are read into memory. A remote build (``s3://``, ``memory://``) is first copied to a
local cache directory keyed by its build id; a local one is mapped in place. The cache keeps the
``CACHE_KEEP_BUILDS`` builds used last: a nightly refresh publishes a new build each night, and a
searcher or an incremental builder would otherwise keep every one of them on its disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import fsspec
import numpy as np

from clothret.detection.types import Detections
from clothret.index.gallery import Gallery
from clothret.index.gpu import GPU_MAX_K, GpuIndex, to_gpu, use_gpu
from clothret.index.publish import build_url, current_build, read_build_manifest
from clothret.index.results import QueryResult
from clothret.store.files import read_bytes

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "clothret-index-cache"
CACHE_KEEP_BUILDS = 2
"""Builds kept in an index cache directory: the one just used and the one before it (a rollback)."""
_FLAT_CODES_FOURCC = (b"IxFI", b"IxF2", b"IxFl", b"IHNf")  # IndexFlatIP/L2/generic, IndexHNSWFlat


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def local_index_file(url: str, build_id: str, manifest: dict, cache_dir: str | Path | None = None) -> Path:
    """A local path of the index file at ``url``: the file itself when it is local, else a copy in
    ``cache_dir/<build id>/`` (downloaded once, checked against the manifest's sha256, renamed into place).
    The cache then keeps the :data:`CACHE_KEEP_BUILDS` builds used last (:func:`prune_index_cache`)."""
    fs, path = fsspec.core.url_to_fs(url)
    if _is_local(fs):
        return Path(path)
    expected = manifest.get("files", {}).get("index.faiss", {})
    cache = Path(cache_dir or DEFAULT_CACHE_DIR)
    target = cache / build_id / "index.faiss"
    if target.exists() and target.stat().st_size == expected.get("bytes", target.stat().st_size):
        logger.info("index build %s found in the cache %s", build_id, target.parent)
        os.utime(target)  # used now: the last to be pruned
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"index.faiss.tmp-{uuid.uuid4().hex[:12]}")
    try:
        fs.get_file(path, str(tmp))
        if "sha256" in expected:
            with tmp.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != expected["sha256"]:
                raise OSError(f"{url} downloaded with sha256 {digest}, its manifest says {expected['sha256']}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("index build %s copied from %s to %s", build_id, url, target)
    prune_index_cache(cache, keep=CACHE_KEEP_BUILDS, current=build_id)
    return target


def prune_index_cache(cache_dir: str | Path, *, keep: int = CACHE_KEEP_BUILDS, current: str | None = None) -> list[str]:
    """Delete the cached builds of ``cache_dir`` but the ``keep`` used last (never ``current``); returns the
    build ids deleted. Folders without an ``index.faiss`` (a download under way) are left alone, and a
    process that still maps a deleted build's file keeps reading it (the file goes when it is unmapped)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    cached = []
    for folder in Path(cache_dir).iterdir():
        try:
            cached.append((os.stat(folder / "index.faiss").st_mtime, folder.name))
        except OSError:  # not a build, a download under way, or pruned by another process just now
            continue
    by_use = [name for _, name in sorted(cached, reverse=True)]
    stale = [name for name in by_use[keep:] if name != current]
    for name in stale:
        shutil.rmtree(Path(cache_dir) / name, ignore_errors=True)
    if stale:
        logger.info("index cache %s: deleted %d older build(s) (%s), kept %d", cache_dir, len(stale),
                    ", ".join(stale), len(by_use) - len(stale))
    return stale


def mmap_flags(path: str | Path) -> int | None:
    """The faiss read flags that memory-map the index file at ``path``, or ``None`` for a type that cannot."""
    with open(path, "rb") as f:
        fourcc = f.read(4)
    read_only = getattr(faiss, "IO_FLAG_READ_ONLY", 0)
    if fourcc in _FLAT_CODES_FOURCC and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        return faiss.IO_FLAG_MMAP_IFC | read_only
    if fourcc.startswith(b"Iw"):  # every IVF type: its inverted lists map as OnDiskInvertedLists
        return faiss.IO_FLAG_MMAP | read_only
    return None


def read_index_file(path: str | Path, *, mmap: bool = True) -> tuple[faiss.Index, str]:
    """Read a local index file, memory-mapped when ``mmap`` and its type allow; returns it and ``"mmap"``
    or ``"memory"``."""
    flags = mmap_flags(path) if mmap else None
    if flags is not None:
        try:
            return faiss.read_index(str(path), flags), "mmap"
        except RuntimeError as exc:
            reason = (str(exc).splitlines() or [""])[0]
            logger.warning("cannot memory-map %s (%s): reading it into memory", path, reason)
    return faiss.read_index(str(path)), "memory"


@dataclass
class SearchIndex:
    """A published build: the FAISS index, its id map, its manifest, and how the index was loaded
    (``"mmap"``: memory-mapped from its file, ``"memory"``: read or built in memory). :meth:`on_device`
    makes it search on the GPU."""

    index: faiss.Index
    gallery: Gallery
    manifest: dict
    load_mode: str = "memory"
    _gpu: GpuIndex | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        index_root: str,
        build_id: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        mmap: bool = True,
        device: str = "auto",
    ) -> SearchIndex:
        """Load the current build (or a named one) of an index root, memory-mapped where possible
        (``mmap=False`` reads it into memory); remote builds are cached under ``cache_dir``. ``device``:
        where it searches (:meth:`on_device`)."""
        build_id = build_id or current_build(index_root)
        if build_id is None:
            raise FileNotFoundError(f"no index published under {index_root}: run a catalogue refresh first")
        manifest = read_build_manifest(index_root, build_id)
        base = build_url(index_root, build_id)
        path = local_index_file(f"{base}/index.faiss", build_id, manifest, cache_dir)
        index, mode = read_index_file(path, mmap=mmap)
        gallery = Gallery.id_map_from_bytes(read_bytes(f"{base}/idmap.npz"), index.d)
        if len(gallery) != index.ntotal:
            raise ValueError(f"build {build_id}: id map has {len(gallery)} rows but the index {index.ntotal} vectors")
        logger.info("loaded index build %s (%d vectors, %s, %s)", build_id, index.ntotal, type(index).__name__, mode)
        return cls(index, gallery, manifest, mode).on_device(device)

    def on_device(self, device: str = "auto") -> SearchIndex:
        """Search on the GPU (``"gpu"``; ``"auto"``: when faiss has one) or the CPU (``"cpu"``); an index the
        GPU refuses searches on the CPU. Returns this index."""
        self._gpu = to_gpu(self.index) if use_gpu(device) else None
        return self

    @property
    def device(self) -> str:
        """``"gpu"`` or ``"cpu"``: where :meth:`search` runs."""
        return "gpu" if self._gpu is not None else "cpu"

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k similarities and gallery rows for (q, dim) features; rows are -1 where fewer exist."""
        if features.ndim != 2 or features.shape[1] != self.index.d:
            raise ValueError(f"query features must be (q, {self.index.d}), got {features.shape}")
        if len(features) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        index = self._gpu.index if self._gpu is not None and k <= GPU_MAX_K else self.index
        return index.search(np.ascontiguousarray(features, dtype=np.float32), k)

    def query_results(
        self, image_id: str, detections: Detections, features: np.ndarray, *, k: int = 20
    ) -> list[QueryResult]:
        """One :class:`QueryResult` per detection of a query image, its top-k gallery boxes ranked."""
        sims, rows = self.search(features, k)
        out = []
        for j in range(len(detections)):
            valid = rows[j] >= 0
            r = rows[j][valid]
            out.append(
                QueryResult(
                    query_image_id=image_id,
                    box=tuple(float(v) for v in detections.boxes[j]),
                    score=float(detections.scores[j]),
                    category_id=int(detections.labels[j]),
                    gallery_image_ids=[str(v) for v in self.gallery.image_ids[r]],
                    gallery_boxes=self.gallery.boxes[r],
                    gallery_item_ids=[str(v) for v in self.gallery.item_ids[r]],
                    similarities=sims[j][valid],
                )
            )
        return out


def top_items(result: QueryResult, n: int) -> list[tuple[str, str, float, np.ndarray]]:
    """The best ``n`` distinct shop items of a result: (item id, image id, similarity, box), best box per item."""
    seen: set[str] = set()
    out = []
    for item, image, sim, box in zip(
        result.gallery_item_ids, result.gallery_image_ids, result.similarities, result.gallery_boxes
    ):
        if item in seen:
            continue
        seen.add(item)
        out.append((item, image, float(sim), box))
        if len(out) == n:
            break
    return out


def flatten(results: Sequence[Sequence[QueryResult]]) -> list[QueryResult]:
    return [r for per_image in results for r in per_image]
