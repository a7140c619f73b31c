"""Publish an index build atomically, choose which build serves, and list the builds.

Layout under an index root URL::

    <root>/builds/<build id>/index.faiss   the FAISS index
    <root>/builds/<build id>/idmap.npz     row → image id, item id, box, category, score
    <root>/builds/<build id>/manifest.json counts, model version, checksums, validation figures (written last)
    <root>/CURRENT                         {"build_id", "previous", "served"}: the pointer readers follow

A build is complete once its manifest exists. Readers follow CURRENT, which is swapped (one atomic write)
only after a build is complete, so a crash at any point before the swap leaves them on the old build.
Builds are never deleted here: the previous one stays for :func:`rollback`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

import faiss
import fsspec

from clothret.index.gallery import Gallery
from clothret.store.files import atomic_write

logger = logging.getLogger(__name__)

POINTER = "CURRENT"
MANIFEST = "manifest.json"


def build_url(index_root: str, build_id: str) -> str:
    return f"{index_root.rstrip('/')}/builds/{build_id}"


def _pointer_url(index_root: str) -> str:
    return f"{index_root.rstrip('/')}/{POINTER}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalars in the caller's figures
        return value.item()
    raise TypeError(f"manifest value {value!r} of type {type(value).__name__} is not JSON serializable")


def _file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def publish(index_root: str, index: faiss.Index, gallery: Gallery, manifest: dict, *, activate: bool = True) -> str:
    """Write a new build (index, id map, then its manifest) and, with ``activate``, swap the pointer to it;
    returns the build id. ``activate=False`` leaves the serving build alone (a backfill): :func:`promote` later."""
    if len(gallery) != index.ntotal:
        raise ValueError(f"the gallery has {len(gallery)} rows but the index {index.ntotal} vectors: they must match")
    index_bytes = faiss.serialize_index(index).tobytes()
    idmap_bytes = gallery.to_bytes()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    build_id = f"{stamp}-{hashlib.sha256(index_bytes).hexdigest()[:8]}"
    fs, path = fsspec.core.url_to_fs(build_url(index_root, build_id))
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/index.faiss", index_bytes)
    fs.pipe_file(f"{path}/idmap.npz", idmap_bytes)
    full = {
        **manifest,
        "build_id": build_id,
        "created": _now(),
        "n_vectors": int(index.ntotal),
        "dim": int(index.d),
        "files": {"index.faiss": _file_entry(index_bytes), "idmap.npz": _file_entry(idmap_bytes)},
    }
    fs.pipe_file(f"{path}/{MANIFEST}", json.dumps(full, indent=2, default=_json_default).encode())
    logger.info("wrote index build %s (%d vectors) under %s", build_id, index.ntotal, index_root)
    if activate:
        promote(index_root, build_id)
    else:
        logger.info("build %s is not serving: promote it to serve it", build_id)
    return build_id


def read_pointer(index_root: str) -> dict | None:
    """The pointer's content (``build_id``, ``previous``, ``served``), or ``None`` before the first publish."""
    fs, path = fsspec.core.url_to_fs(_pointer_url(index_root))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def current_build(index_root: str) -> str | None:
    """The build id the pointer names, or ``None`` when nothing was published yet."""
    pointer = read_pointer(index_root)
    return None if pointer is None else pointer["build_id"]


def build_exists(index_root: str, build_id: str) -> bool:
    """Whether ``build_id`` is a complete build (its manifest, written last, exists)."""
    fs, path = fsspec.core.url_to_fs(f"{build_url(index_root, build_id)}/{MANIFEST}")
    return fs.exists(path)


def _require_build(index_root: str, build_id: str) -> None:
    if not build_exists(index_root, build_id):
        known = [b["build_id"] for b in list_builds(index_root)]
        raise FileNotFoundError(
            f"no complete build {build_id!r} under {index_root} (no {MANIFEST}); complete builds: {known or 'none'}"
        )


def _swap(index_root: str, build_id: str, pointer: dict | None) -> None:
    current = None if pointer is None else pointer["build_id"]
    served = list(pointer.get("served", [current])) if pointer else []
    content = {"build_id": build_id, "previous": current, "served": [*served, build_id], "swapped_at": _now()}
    atomic_write(_pointer_url(index_root), json.dumps(content).encode())


def promote(index_root: str, build_id: str) -> None:
    """Make a complete build the serving one; the build it replaces becomes the rollback target."""
    _require_build(index_root, build_id)
    pointer = read_pointer(index_root)
    if pointer is not None and pointer["build_id"] == build_id:
        logger.info("build %s serves already under %s", build_id, index_root)
        return
    _swap(index_root, build_id, pointer)
    logger.info("index %s serves build %s (was %s)", index_root, build_id, pointer and pointer["build_id"])


def rollback(index_root: str) -> str:
    """Serve the build that served before the current one again; returns its id. The current build becomes
    the rollback target, so a second rollback undoes the first."""
    pointer = read_pointer(index_root)
    if pointer is None:
        raise FileNotFoundError(f"no index published under {index_root}: nothing to roll back")
    previous = pointer.get("previous")
    if not previous:
        raise ValueError(
            f"index {index_root} serves build {pointer['build_id']} and has no previous build to roll back to"
        )
    _require_build(index_root, previous)
    _swap(index_root, previous, pointer)
    logger.info("index %s rolled back from build %s to %s", index_root, pointer["build_id"], previous)
    return previous


def read_build_manifest(index_root: str, build_id: str) -> dict:
    url = f"{build_url(index_root, build_id)}/{MANIFEST}"
    try:
        with fsspec.open(url, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"build {build_id} under {index_root} has no {MANIFEST}: not a complete build"
        ) from None


def list_builds(index_root: str) -> list[dict]:
    """The complete builds, oldest first: build id, model version, created, active (serving now), served
    (has served at some point), vector/box counts, index kind and recall where the manifest has them."""
    fs, path = fsspec.core.url_to_fs(f"{index_root.rstrip('/')}/builds")
    if not fs.exists(path):
        return []
    pointer = read_pointer(index_root) or {}
    served = set(pointer.get("served", [pointer.get("build_id")]))
    out = []
    for entry in fs.ls(path, detail=False):
        build_id = entry.rstrip("/").rsplit("/", 1)[-1]
        if not fs.exists(f"{path}/{build_id}/{MANIFEST}"):
            logger.info("build %s under %s has no manifest (incomplete): not listed", build_id, index_root)
            continue
        manifest = json.loads(fs.cat_file(f"{path}/{build_id}/{MANIFEST}"))
        info = {
            "build_id": build_id,
            "model_version": manifest.get("model_version"),
            "created": manifest.get("created", ""),
            "active": build_id == pointer.get("build_id"),
            "served": build_id in served,
        }
        info.update({k: manifest[k] for k in ("n_vectors", "n_boxes", "index_kind", "recall_at_10") if k in manifest})
        out.append(info)
    return sorted(out, key=lambda b: (b["created"], b["build_id"]))


def latest_unserved_build(index_root: str) -> str:
    """The newest complete build that has never served (e.g. a backfill's), for :func:`promote`."""
    unserved = [b["build_id"] for b in list_builds(index_root) if not b["served"]]
    if not unserved:
        raise FileNotFoundError(
            f"every complete build under {index_root} has served already: name the build to promote"
        )
    return unserved[-1]
