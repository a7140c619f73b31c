"""Write and read feature segments: one Zarr v3 group per segment, committed by one create-only step.

Layout under a store URL (a local path, ``s3://bucket/prefix`` or ``memory://...``)::

    <store>/<model version>/catalog.json                                 live segments, deleted images
    <store>/<model version>/_LEASE                                       who refreshes this version now
    <store>/<model version>/segments/<segment id>/attempts/<writer id>/  one writer's Zarr group
    <store>/<model version>/segments/<segment id>/_COMMITTED             the commit marker

Per image: ``image_ids``, ``item_ids``, ``sha256``, ``status``, ``reasons``. Per box: ``box_image``
(index into the images), ``boxes`` (pixel x1,y1,x2,y2), ``scores``, ``categories``, ``features``
(float16, l2-normalised).

Several writers of one segment id never share a folder: each writes its group under its own attempt
folder, lists what it wrote (every array's shape and dtype, every file and its size), then commits with
one create-only put of ``_COMMITTED`` naming its attempt and that list (format 2). The first put wins;
a loser deletes its attempt and uses the winner's segment. Readers open the attempt the marker names and
check the marker's list against what is there (:func:`check_segment`), so a segment with a missing or
truncated file reads as damaged, never as zeros. Segments of the first layout (arrays directly under the
segment folder, a marker holding only counts) are still read when every array is there.

A segment id is a hash of the model version, its images' ids and content hashes, and the segments
whose entries they replace: a re-run with the same inputs finds the committed segment and rewrites
nothing, while a retry of a failed image gets a new segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import zarr

from clothret.datasets.catalogue import ManifestEntry
from clothret.errors import SegmentDamaged
from clothret.pipeline.result import SegmentResult
from clothret.store.cas import put_if_absent
from clothret.store.writer import describe, writer_info

logger = logging.getLogger(__name__)

MARKER = "_COMMITTED"
ATTEMPTS = "attempts"
FORMAT = 2
_PER_IMAGE = ("image_ids", "item_ids", "sha256", "status", "reasons")
_PER_BOX = ("box_image", "boxes", "scores", "categories", "features")
ARRAYS = _PER_IMAGE + _PER_BOX


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
    """Whether a segment's commit marker exists (cheap; :func:`check_segment` checks what it names)."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(f"{path}/{MARKER}")


@dataclass(frozen=True)
class SegmentCommit:
    """How :func:`commit_segment` ended: the committed attempt, whether it is this writer's, its counts."""

    url: str
    attempt: str
    won: bool
    counts: dict


def attempt_url(url: str, attempt: str) -> str:
    return f"{url.rstrip('/')}/{ATTEMPTS}/{attempt}"


def load_marker(url: str) -> tuple[dict | None, str | None]:
    """A segment's marker and why it is unusable: ``(None, None)`` when there is none."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        raw = fs.cat_file(f"{path}/{MARKER}")
    except FileNotFoundError:
        return None, None
    try:
        marker = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        marker = None
    if not isinstance(marker, dict):
        return None, f"its {MARKER} marker is not a JSON object"
    return marker, None


def read_marker(url: str) -> dict | None:
    """A segment's commit marker as written, or ``None`` when it is not committed.

    Raises :class:`~clothret.errors.SegmentDamaged` when the marker is not a JSON object.
    """
    marker, problem = load_marker(url)
    if problem is not None:
        raise SegmentDamaged(f"segment {url} is damaged: {problem}")
    return marker


def marker_counts(marker: dict) -> dict:
    """The counts a marker records (the first layout's marker held only the counts)."""
    return dict(marker.get("counts") or {}) if marker.get("format") == FORMAT else dict(marker)


def group_url(url: str, marker: dict) -> str:
    """Where the Zarr group a marker commits lives."""
    return attempt_url(url, marker["attempt"]) if marker.get("format") == FORMAT else url


def _write_group(url: str, result: SegmentResult) -> dict:
    """Write a segment's arrays as a new Zarr group; returns ``{array: {shape, dtype}}``."""
    group = zarr.open_group(url, mode="w-", zarr_format=3)
    n_boxes = len(result.boxes)
    box_chunk = max(1, min(n_boxes, 65536))
    arrays = {}
    for name in _PER_IMAGE:
        data = np.array(getattr(result, name), dtype=np.dtypes.StringDType())
        group.create_array(name, data=data, chunks=(max(1, len(data)),))
        arrays[name] = {"shape": list(data.shape), "dtype": "str"}
    for name in _PER_BOX:
        data = getattr(result, name)
        group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(box_chunk, *data.shape[1:]))
        if n_boxes:
            group[name][...] = data
        arrays[name] = {"shape": list(data.shape), "dtype": str(data.dtype)}
    group.attrs.update({"seconds": result.seconds, "dim": int(result.features.shape[1])})
    return arrays


def _sizes(found: dict, root: str) -> dict[str, int]:
    """``{path relative to root: bytes}`` of an ``fs.find(root, detail=True)`` answer."""
    prefix = root.rstrip("/") + "/"
    return {p[len(prefix):]: int(info["size"]) for p, info in found.items() if p.startswith(prefix)}


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except OSError as exc:  # left for `clothret verify --repair`
        logger.warning("could not remove %s: %r", path, exc)


def commit_segment(url: str, result: SegmentResult, *, run: str = "", info: dict | None = None) -> SegmentCommit:
    """Write a segment under a new attempt folder, then commit it with one create-only put of its marker.

    ``info`` (e.g. the bundle URL that produced the features) is recorded in the marker as information only.

    When another writer committed the segment first, this writer's attempt is deleted and the winner's
    segment is used: the returned commit has ``won=False`` and the winner's counts.
    """
    n_images = len(result.image_ids)
    for name in _PER_IMAGE:
        if len(getattr(result, name)) != n_images:
            raise ValueError(f"segment {url}: {name} has {len(getattr(result, name))} values for {n_images} images")
    attempt = uuid.uuid4().hex
    target = attempt_url(url, attempt)
    arrays = _write_group(target, result)
    fs, path = fsspec.core.url_to_fs(url)
    attempt_path = f"{path}/{ATTEMPTS}/{attempt}"
    files = _sizes(fs.find(attempt_path, detail=True), attempt_path)
    counts = dict(result.counts)
    marker = {
        "format": FORMAT, "attempt": attempt, "writer": writer_info(run), "arrays": arrays, "files": files,
        "counts": counts, **({"info": info} if info else {}),
    }
    if put_if_absent(f"{url.rstrip('/')}/{MARKER}", json.dumps(marker, indent=1).encode()):
        logger.info("committed segment %s (%d images, %d boxes)", url, n_images, len(result.boxes))
        return SegmentCommit(url, attempt, True, counts)
    _remove(fs, attempt_path)
    winner = read_marker(url) or {}
    reason = check_segment(url)
    if reason is not None:
        raise SegmentDamaged(
            f"segment {url} was committed by another writer but is damaged ({reason}); re-run the refresh: "
            f"planning gives its images a new segment id"
        )
    logger.info("segment %s was committed first by %s: this writer's copy is discarded", url,
                describe(winner.get("writer")))
    return SegmentCommit(url, str(winner.get("attempt", "")), False, marker_counts(winner))


def write_segment(url: str, result: SegmentResult) -> dict:
    """Write and commit a segment (see :func:`commit_segment`); returns the committed segment's counts."""
    return commit_segment(url, result).counts


def _check_attempt(url: str, marker: dict, found: dict | None) -> str | None:
    attempt, files, arrays = marker.get("attempt"), marker.get("files"), marker.get("arrays")
    if not isinstance(attempt, str) or not attempt or not isinstance(files, dict) or not isinstance(arrays, dict):
        return f"its {MARKER} marker names no attempt, files or arrays"
    absent = [name for name in ARRAYS if name not in arrays or f"{name}/zarr.json" not in files]
    if absent or "zarr.json" not in files:
        return f"its {MARKER} marker lists no {', '.join(absent) or 'group metadata'}"
    fs, path = fsspec.core.url_to_fs(url)
    attempt_path = f"{path}/{ATTEMPTS}/{attempt}"
    sizes = _sizes(found if found is not None else fs.find(attempt_path, detail=True), attempt_path)
    missing = sorted(name for name in files if name not in sizes)
    if missing:
        return (f"{len(missing)} of the {len(files)} files its marker lists are missing from {ATTEMPTS}/{attempt} "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    for name, size in sorted(files.items()):
        if sizes[name] != size:
            return f"{ATTEMPTS}/{attempt}/{name} has {sizes[name]} bytes where its marker says {size}"
    return None


def _check_first_layout(url: str, marker: dict) -> str | None:
    try:
        group = zarr.open_group(url, mode="r")
        # each array looked up by name: listing the group would read the marker beside the arrays too, and zarr
        # warns (from its own thread, past any warnings filter here) that it is not a part of the hierarchy
        present = {name for name in ARRAYS if name in group}
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeNotFoundError) as exc:
        return f"no readable Zarr group under the segment ({type(exc).__name__})"
    missing = [name for name in ARRAYS if name not in present]
    if missing:
        return f"arrays {', '.join(missing)} are missing (it has {', '.join(sorted(present)) or 'none'})"
    n_images = {group[name].shape[0] for name in _PER_IMAGE}
    n_boxes = {group[name].shape[0] for name in _PER_BOX}
    if len(n_images) != 1 or len(n_boxes) != 1:
        return f"array lengths disagree: per image {sorted(n_images)}, per box {sorted(n_boxes)}"
    for key, found in (("images", n_images), ("boxes", n_boxes)):
        if key in marker and marker[key] not in found:
            return f"its marker counts {marker[key]} {key} but the arrays hold {found.pop()}"
    return None


def check_marker(url: str, marker: dict, found: dict | None = None) -> str | None:
    """Why the segment a loaded marker commits cannot be used (``None``: complete); see :func:`check_segment`."""
    if marker.get("format") == FORMAT:
        return _check_attempt(url, marker, found)
    if "format" in marker:
        return f"its {MARKER} marker has format {marker['format']!r}; this version reads 2 and the first layout"
    return _check_first_layout(url, marker)


def check_segment(url: str, *, found: dict | None = None) -> str | None:
    """Why a segment cannot be used (``None``: committed and complete).

    A format-2 segment is compared with its marker's list of files and byte sizes (one listing of its
    attempt; ``found``, an ``fs.find(..., detail=True)`` answer covering the attempt, saves it). A segment
    of the first layout must hold every array, with agreeing lengths.
    """
    marker, problem = load_marker(url)
    if problem is not None:
        return problem
    if marker is None:
        return f"not committed (no {MARKER} marker)"
    return check_marker(url, marker, found)


def _damaged(url: str, reason: str) -> SegmentDamaged:
    return SegmentDamaged(
        f"segment {url} is committed but damaged: {reason}; the next refresh re-embeds its images under a "
        f"new segment id, and `clothret verify --store STORE --repair` removes it"
    )


def _open_checked(url: str) -> tuple[zarr.Group, dict] | str:
    """The Zarr group of a committed, complete segment and its marker, or why it cannot be used.

    Raises ``FileNotFoundError`` when the segment is not committed.
    """
    marker, reason = load_marker(url)
    if marker is None and reason is None:
        raise FileNotFoundError(f"segment {url} is not committed (no {MARKER} marker)")
    reason = reason or check_marker(url, marker)
    if reason is not None:
        return reason
    return zarr.open_group(group_url(url, marker), mode="r"), marker


def _read_arrays(group: zarr.Group, names: Sequence[str]) -> dict[str, np.ndarray] | str:
    try:
        return {name: group[name][:] for name in names}
    except (KeyError, FileNotFoundError, ValueError) as exc:
        return f"reading it failed ({type(exc).__name__}: {exc})"


def read_segment(url: str) -> SegmentResult:
    """Read a committed segment back; an uncommitted one raises ``FileNotFoundError``, a damaged one
    :class:`~clothret.errors.SegmentDamaged`."""
    opened = _open_checked(url)
    if isinstance(opened, str):
        raise _damaged(url, opened)
    group, marker = opened
    data = _read_arrays(group, ARRAYS)
    if isinstance(data, str):
        raise _damaged(url, data)
    per_image = {name: [str(v) for v in data[name]] for name in _PER_IMAGE}
    per_box = {name: data[name] for name in _PER_BOX}
    return SegmentResult(
        **per_image, **per_box, seconds=float(group.attrs.get("seconds", 0.0)), counts=marker_counts(marker)
    )


def open_segment(url: str) -> tuple[zarr.Group, str]:
    """The Zarr group of a committed, complete segment and its URL (its attempt's folder); an uncommitted
    segment raises ``FileNotFoundError``, a damaged one :class:`~clothret.errors.SegmentDamaged`."""
    opened = _open_checked(url)
    if isinstance(opened, str):
        raise _damaged(url, opened)
    group, marker = opened
    return group, group_url(url, marker)


def image_table_or_reason(url: str) -> ImageTable | str:
    """The per-image arrays of a committed segment, or why it cannot be used (not committed, damaged)."""
    try:
        opened = _open_checked(url)
    except FileNotFoundError as exc:
        return str(exc).removeprefix(f"segment {url} is ")
    if isinstance(opened, str):
        return opened
    names = ("image_ids", "sha256", "status", "reasons")
    data = _read_arrays(opened[0], names)
    if isinstance(data, str):
        return data
    return ImageTable(*(np.asarray(data[name]).astype(np.dtypes.StringDType()).tolist() for name in names))


def read_image_table(url: str) -> ImageTable:
    """The per-image arrays of a committed, complete segment (ids, content hashes, status, reasons)."""
    table = image_table_or_reason(url)
    if isinstance(table, str):
        if table.startswith("not committed"):
            raise FileNotFoundError(f"segment {url} is {table}")
        raise _damaged(url, table)
    return table


def damaged_image_ids(url: str) -> list[str] | None:
    """The image ids a damaged segment holds, when they can still be read whole; ``None`` otherwise."""
    try:
        marker = read_marker(url)
        if marker is None:
            return None
        if marker.get("format") == FORMAT:
            files = {k: v for k, v in marker.get("files", {}).items() if k.startswith("image_ids/")}
            fs, path = fsspec.core.url_to_fs(url)
            root = f"{path}/{ATTEMPTS}/{marker['attempt']}"
            sizes = _sizes(fs.find(f"{root}/image_ids", detail=True), root)
            if not files or any(sizes.get(k) != v for k, v in files.items()):
                return None
        ids = [str(v) for v in zarr.open_group(group_url(url, marker), mode="r")["image_ids"][:]]
    except Exception as exc:  # noqa: BLE001 - best effort on a segment known to be damaged
        logger.debug("image ids of damaged segment %s unreadable: %r", url, exc)
        return None
    expected = marker_counts(marker).get("images")
    if not all(ids) or (expected is not None and expected != len(ids)):
        return None
    return ids


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
