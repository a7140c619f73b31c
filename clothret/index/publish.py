"""Publish an index build atomically and find the current one.

Layout under an index root URL::

    <root>/builds/<build id>/index.faiss   the FAISS index
    <root>/builds/<build id>/idmap.npz     row → image id, item id, box, category, score
    <root>/builds/<build id>/manifest.json counts, model version, validation figures (written last)
    <root>/CURRENT                         {"build_id": ...}: the pointer readers follow

Readers follow CURRENT, which is swapped only after a build is fully written, so they never see a
half-written index; earlier builds stay for rollback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

import faiss
import fsspec

from clothret.index.gallery import Gallery

logger = logging.getLogger(__name__)

POINTER = "CURRENT"


def atomic_write(url: str, data: bytes) -> None:
    """Write bytes so a reader sees the old or the new content, never a part: temp name then rename
    on file systems; object stores (s3) make a single put atomic already."""
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" in protocols or "local" in protocols:
        tmp = f"{path}.tmp-{hashlib.sha1(data).hexdigest()[:8]}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def build_url(index_root: str, build_id: str) -> str:
    return f"{index_root.rstrip('/')}/builds/{build_id}"


def publish(index_root: str, index: faiss.Index, gallery: Gallery, manifest: dict) -> str:
    """Write a new build and swap the pointer to it; returns the build id."""
    index_bytes = faiss.serialize_index(index).tobytes()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    build_id = f"{stamp}-{hashlib.sha256(index_bytes).hexdigest()[:8]}"
    base = build_url(index_root, build_id)
    fs, path = fsspec.core.url_to_fs(base)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/index.faiss", index_bytes)
    fs.pipe_file(f"{path}/idmap.npz", gallery.to_bytes())
    full = {**manifest, "build_id": build_id, "n_vectors": int(index.ntotal), "dim": int(index.d)}
    fs.pipe_file(f"{path}/manifest.json", json.dumps(full, indent=2).encode())
    previous = current_build(index_root)
    atomic_write(f"{index_root.rstrip('/')}/{POINTER}", json.dumps({"build_id": build_id, "previous": previous}).encode())
    logger.info("published index build %s (%d vectors)", build_id, index.ntotal)
    return build_id


def current_build(index_root: str) -> str | None:
    """The build id the pointer names, or ``None`` when nothing was published yet."""
    fs, path = fsspec.core.url_to_fs(f"{index_root.rstrip('/')}/{POINTER}")
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))["build_id"]


def read_build_manifest(index_root: str, build_id: str) -> dict:
    with fsspec.open(f"{build_url(index_root, build_id)}/manifest.json", "r") as f:
        return json.load(f)
