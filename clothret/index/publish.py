"""Publish an index build atomically, choose which build serves, and list the builds.

Layout under an index root URL::

    <root>/builds/<build id>/index.faiss   the FAISS index
    <root>/builds/<build id>/idmap.npz     row → image id, item id, box, category, score
    <root>/builds/<build id>/manifest.json counts, model version, checksums, validation figures (written last)
    <root>/CURRENT                         {"build_id", "previous", "served", "swapped_at", "swapped_by"}:
                                           the pointer readers follow

A build is complete once its manifest exists. Readers follow CURRENT, which is swapped (one atomic write)
only after a build is complete, so a crash at any point before the swap leaves them on the old build.
Builds are never deleted here: the previous one stays for :func:`rollback`.

CURRENT changes by compare-and-swap against the version read (an ETag on S3), so two runs swapping at
once never lose a swap or the ``previous``/``served`` history. A refresh reads the pointer before it
builds; when another run swapped in the meantime a build of the same model version made from a catalog
generation at least as new as its own (``catalog_generation`` in the manifests), that build stays
serving and the refresh's build is written but not served (:class:`Published` says why).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import fsspec

from clothret.errors import StoreChanged
from clothret.index.gallery import Gallery
from clothret.store.cas import put_if_match, read_versioned
from clothret.store.files import is_local
from clothret.store.writer import describe, writer_info

logger = logging.getLogger(__name__)

POINTER = "CURRENT"
MANIFEST = "manifest.json"
_SWAP_TRIES = 10


@dataclass(frozen=True)
class PointerState:
    """The pointer as read (``None`` before the first publish) and the token of that version."""

    pointer: dict | None
    token: str | None

    @property
    def build_id(self) -> str | None:
        return None if self.pointer is None else self.pointer["build_id"]


@dataclass(frozen=True)
class Published:
    """A written build: its id, whether it serves, and why not when serving was asked for."""

    build_id: str
    active: bool
    note: str = ""


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


def write_build(index_root: str, index: faiss.Index, gallery: Gallery, manifest: dict) -> str:
    """Write a new build (index, id map, then its manifest, which completes it); returns its id."""
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
    return build_id


def _file_digest(path: Path) -> dict:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"sha256": digest, "bytes": path.stat().st_size}


@contextmanager
def build_folder(index_root: str) -> Iterator[Path]:
    """A local folder to write a build's files into before :func:`write_build_files` publishes them: inside
    ``<root>/builds/`` for a local root (so publishing is a rename, not a copy), a temporary folder
    otherwise. Removed on exit unless it was published."""
    fs, path = fsspec.core.url_to_fs(f"{index_root.rstrip('/')}/builds")
    if is_local(fs):
        fs.makedirs(path, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".writing-", dir=path))
    else:
        folder = Path(tempfile.mkdtemp(prefix="clothret-build-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_build_files(index_root: str, files: dict[str, Path], manifest: dict, *, n_vectors: int, dim: int) -> str:
    """Publish a build written as local files (``index.faiss``, ``idmap.npz`` and any others), streamed
    rather than held in memory: checksums, then the files (a rename into place for a local root, an
    upload otherwise), then the manifest, which completes the build. Returns its id."""
    if "index.faiss" not in files or "idmap.npz" not in files:
        raise ValueError(f"a build needs index.faiss and idmap.npz, got {sorted(files)}")
    entries = {name: _file_digest(Path(p)) for name, p in files.items()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    build_id = f"{stamp}-{entries['index.faiss']['sha256'][:8]}"
    fs, path = fsspec.core.url_to_fs(build_url(index_root, build_id))
    fs.makedirs(path, exist_ok=True)
    for name, local in files.items():
        if is_local(fs):
            Path(local).replace(Path(path) / name)
        else:
            fs.put_file(str(local), f"{path}/{name}")
    full = {**manifest, "build_id": build_id, "created": _now(), "n_vectors": int(n_vectors), "dim": int(dim),
            "files": entries}
    fs.pipe_file(f"{path}/{MANIFEST}", json.dumps(full, indent=2, default=_json_default).encode())
    logger.info("wrote index build %s (%d vectors, from files) under %s", build_id, n_vectors, index_root)
    return build_id


def publish_build(
    index_root: str,
    index: faiss.Index,
    gallery: Gallery,
    manifest: dict,
    *,
    activate: bool = True,
    since: PointerState | None = None,
    run: str = "",
    files: dict[str, Path] | None = None,
) -> Published:
    """Write a new build and, with ``activate``, make it serve: see :func:`serve_new_build`.

    ``since`` is the pointer as read before the build was made (default: as read now). ``files``: the
    build was written as local files already (a streamed build): they are published instead of
    serializing ``index`` and ``gallery``.
    """
    since = since if since is not None else read_pointer_state(index_root)
    if files is not None:
        build_id = write_build_files(index_root, files, manifest, n_vectors=index.ntotal, dim=index.d)
    else:
        build_id = write_build(index_root, index, gallery, manifest)
    if not activate:
        logger.info("build %s is not serving: promote it to serve it", build_id)
        return Published(build_id, False)
    return serve_new_build(index_root, build_id, since, run=run)


def publish(index_root: str, index: faiss.Index, gallery: Gallery, manifest: dict, *, activate: bool = True) -> str:
    """Write a new build (index, id map, then its manifest) and, with ``activate``, swap the pointer to it;
    returns the build id. ``activate=False`` leaves the serving build alone (a backfill): :func:`promote` later."""
    return publish_build(index_root, index, gallery, manifest, activate=activate).build_id


def _generation(manifest: dict) -> int | None:
    value = manifest.get("catalog_generation")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _newer_serving(index_root: str, build_id: str, state: PointerState) -> str | None:
    """Why the build another run swapped in should keep serving instead of ``build_id`` (``None``: it
    should not): same model version, made from a catalog generation at least as new."""
    other = state.build_id
    if other is None:
        return None
    ours, theirs = read_build_manifest(index_root, build_id), read_build_manifest(index_root, other)
    ours_gen, theirs_gen = _generation(ours), _generation(theirs)
    if ours.get("model_version") != theirs.get("model_version") or ours_gen is None or theirs_gen is None:
        return None
    if theirs_gen < ours_gen:
        return None
    return (
        f"another run swapped in build {other} ({describe((state.pointer or {}).get('swapped_by'))}) of the "
        f"same model version, made from catalog generation {theirs_gen} (this build: {ours_gen}): it stays "
        f"serving; `clothret promote --index {index_root} --build {build_id}` serves this one"
    )


def serve_new_build(index_root: str, build_id: str, since: PointerState, *, run: str = "") -> Published:
    """Swap the pointer from ``since`` to a complete new build.

    When the swap loses to another run's, the pointer is read again: a build of the same model version
    made from a catalog generation at least as new as this one's keeps serving (this one is written, not
    served); otherwise the swap is retried against the new version (bounded).
    """
    _require_build(index_root, build_id)
    state = since
    for _ in range(_SWAP_TRIES):
        if state.build_id == build_id or _swap(index_root, build_id, state, run=run):
            logger.info("index %s serves build %s (was %s)", index_root, build_id, state.build_id)
            return Published(build_id, True)
        state = read_pointer_state(index_root)
        if state.build_id == build_id:
            return Published(build_id, True)
        note = _newer_serving(index_root, build_id, state)
        if note is not None:
            logger.warning("build %s of %s is written but not serving: %s", build_id, index_root, note)
            return Published(build_id, False, note)
        logger.info("index %s: another run swapped in build %s meanwhile; swapping again", index_root,
                    state.build_id)
    raise StoreChanged(
        f"the store changed under this run: the pointer of index {index_root} changed {_SWAP_TRIES} times while "
        f"build {build_id} was being swapped in; it is written: promote it to serve it"
    )


def read_pointer_state(index_root: str) -> PointerState:
    """The pointer and the token of the version read, for a compare-and-swap."""
    data, token = read_versioned(_pointer_url(index_root))
    return PointerState(None if data is None else json.loads(data), token)


def read_pointer(index_root: str) -> dict | None:
    """The pointer's content (``build_id``, ``previous``, ``served``), or ``None`` before the first publish."""
    return read_pointer_state(index_root).pointer


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


def _swap(index_root: str, build_id: str, state: PointerState, *, run: str = "") -> bool:
    """Point at ``build_id`` if the pointer is still the version ``state`` read; False when another run
    swapped it first. The history (``previous``, ``served``) carries over from the version replaced."""
    pointer, current = state.pointer, state.build_id
    served = list(pointer.get("served", [current])) if pointer else []
    content = {"build_id": build_id, "previous": current, "served": [*served, build_id], "swapped_at": _now(),
               "swapped_by": writer_info(run)}
    return put_if_match(_pointer_url(index_root), json.dumps(content).encode(), state.token)


def promote(index_root: str, build_id: str) -> None:
    """Make a complete build the serving one; the build it replaces becomes the rollback target.

    A swap lost to another run's is retried against the new pointer (the history stays whole).
    """
    _require_build(index_root, build_id)
    for _ in range(_SWAP_TRIES):
        state = read_pointer_state(index_root)
        if state.build_id == build_id:
            logger.info("build %s serves already under %s", build_id, index_root)
            return
        if _swap(index_root, build_id, state):
            logger.info("index %s serves build %s (was %s)", index_root, build_id, state.build_id)
            return
    raise StoreChanged(
        f"the store changed under this run: the pointer of index {index_root} changed {_SWAP_TRIES} times while "
        f"promoting build {build_id}; promote it again"
    )


def rollback(index_root: str) -> str:
    """Serve the build that served before the current one again; returns its id. The current build becomes
    the rollback target, so a second rollback undoes the first.

    When another run swaps the pointer between the read and the swap, nothing changes and
    :class:`~clothret.errors.StoreChanged` says what serves now.
    """
    state = read_pointer_state(index_root)
    pointer = state.pointer
    if pointer is None:
        raise FileNotFoundError(f"no index published under {index_root}: nothing to roll back")
    previous = pointer.get("previous")
    if not previous:
        raise ValueError(
            f"index {index_root} serves build {pointer['build_id']} and has no previous build to roll back to"
        )
    _require_build(index_root, previous)
    if not _swap(index_root, previous, state):
        now = read_pointer_state(index_root).pointer or {}
        raise StoreChanged(
            f"the store changed under this run: index {index_root} was swapped to build {now.get('build_id')} "
            f"({describe(now.get('swapped_by'))}) while rolling back from build {pointer['build_id']}; nothing "
            f"was rolled back: check `clothret builds --index {index_root}` and roll back again if still wanted"
        )
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
