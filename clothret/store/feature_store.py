"""Write and read feature segments: one Zarr v3 group per segment, committed by a marker written last.

Layout under a store URL (a local path, ``s3://bucket/prefix`` or ``memory://...``)::

    <store>/<model version>/catalog.json                      live segments, deleted images
    <store>/<model version>/segments/<segment id>/            Zarr group (arrays below)
    <store>/<model version>/segments/<segment id>/_COMMITTED  JSON counts, written last

Per image: ``image_ids``, ``item_ids``, ``sha256``, ``status``, ``reasons``. Per box: ``box_image``
(index into the images), ``boxes`` (pixel x1,y1,x2,y2), ``scores``, ``categories``, ``features``
(float16, l2-normalised).

A segment id is a hash of the model version, its images' ids and content hashes, and the segments
whose entries they replace: a re-run with the same inputs finds the committed segment and rewrites
nothing, while a retry of a failed image gets a new segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import zarr

from clothret.datasets.catalogue import ManifestEntry
from clothret.pipeline.result import SegmentResult

logger = logging.getLogger(__name__)

MARKER = "_COMMITTED"
_PER_IMAGE = ("image_ids", "item_ids", "sha256", "status", "reasons")
_PER_BOX = ("box_image", "boxes", "scores", "categories", "features")


@dataclass(frozen=True)
class ImageTable:
    """The per-image arrays of a segment: what planning needs, without features."""

    image_ids: list[str]
    sha256: list[str]
    status: list[str]
    reasons: list[str]


def segment_id(version: str, entries: Sequence[ManifestEntry], replaces: Sequence[str] | None = None) -> str:
    """A stable id from the model version, the (image id, sha256) of every image in the segment and,
    per image, the id of the segment whose entry it replaces ("" for an image new to the catalog)."""
    replaces = replaces if replaces is not None else [""] * len(entries)
    if len(replaces) != len(entries):
        raise ValueError(f"replaces has {len(replaces)} ids for {len(entries)} entries")
    digest = hashlib.sha256(version.encode())
    for e, previous in zip(entries, replaces):
        digest.update(f"\n{e.image_id}\t{e.sha256}\t{previous}".encode())
    return digest.hexdigest()[:20]


def version_url(store_url: str, version: str) -> str:
    return f"{store_url.rstrip('/')}/{version}"


def segments_url(store_url: str, version: str) -> str:
    return f"{version_url(store_url, version)}/segments"


def segment_url(store_url: str, version: str, seg_id: str) -> str:
    return f"{segments_url(store_url, version)}/{seg_id}"


def is_committed(url: str) -> bool:
    """Whether a segment's commit marker exists."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path}/{MARKER}")


def write_segment(url: str, result: SegmentResult) -> dict:
    """Write a segment's arrays (overwriting a half-written one), then its commit marker."""
    n_images = len(result.image_ids)
    for name in _PER_IMAGE:
        if len(getattr(result, name)) != n_images:
            raise ValueError(f"segment {url}: {name} has {len(getattr(result, name))} values for {n_images} images")
    group = zarr.open_group(url, mode="w", zarr_format=3)
    n_boxes = len(result.boxes)
    box_chunk = max(1, min(n_boxes, 65536))
    for name in _PER_IMAGE:
        data = np.array(getattr(result, name), dtype=np.dtypes.StringDType())
        group.create_array(name, data=data, chunks=(max(1, len(data)),))
    for name in _PER_BOX:
        data = getattr(result, name)
        group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(box_chunk, *data.shape[1:]))
        if n_boxes:
            group[name][...] = data
    group.attrs.update({"seconds": result.seconds, "dim": int(result.features.shape[1])})
    counts = dict(result.counts)
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/{MARKER}", json.dumps(counts).encode())
    logger.info("committed segment %s (%d images, %d boxes)", url, len(result.image_ids), n_boxes)
    return counts


def read_segment(url: str) -> SegmentResult:
    """Read a committed segment back; an uncommitted one raises ``FileNotFoundError``."""
    if not is_committed(url):
        raise FileNotFoundError(f"segment {url} is not committed (no {MARKER} marker)")
    group = zarr.open_group(url, mode="r")
    fs, path = fsspec.core.url_to_fs(url)
    counts = json.loads(fs.cat_file(f"{path}/{MARKER}"))
    per_image = {name: [str(v) for v in group[name][:]] for name in _PER_IMAGE}
    per_box = {name: group[name][:] for name in _PER_BOX}
    return SegmentResult(**per_image, **per_box, seconds=float(group.attrs.get("seconds", 0.0)), counts=counts)


def read_image_table(url: str) -> ImageTable:
    """The per-image arrays of a committed segment (ids, content hashes, status, reasons)."""
    if not is_committed(url):
        raise FileNotFoundError(f"segment {url} is not committed (no {MARKER} marker)")
    group = zarr.open_group(url, mode="r")
    return ImageTable(*([str(v) for v in group[name][:]] for name in ("image_ids", "sha256", "status", "reasons")))


def committed_segments(store_url: str, version: str) -> list[str]:
    """Ids of the committed segments of a model version (sorted)."""
    fs, path = fsspec.core.url_to_fs(segments_url(store_url, version))
    if not fs.exists(path):
        return []
    ids = []
    for child in fs.ls(path, detail=False):
        if fs.exists(f"{child}/{MARKER}"):
            ids.append(child.rstrip("/").rsplit("/", 1)[-1])
    return sorted(ids)
