"""Create-only and compare-and-swap writes of small files, the same on local disk, S3 and ``memory://``.

    put_if_absent(url, data) -> bool            True: this call created the file; False: it existed
    read_versioned(url) -> (data | None, token) the content and a token of that exact version
    put_if_match(url, data, token) -> bool      write only if the file is still the version ``token`` names
                                                (token ``None``: only if it does not exist)
    delete_if_match(url, token) -> bool         delete only if the file is still that version

A token is opaque: the ETag on S3, ``sha256:<hex>`` of the content elsewhere; ``None`` means "absent".

- Local disk: a create is a temporary file in the same folder, then ``os.link`` to the final name (which
  fails when the name exists); a swap takes an exclusive ``fcntl.flock`` on a sidecar ``<name>.lock``
  file, compares the token under it, then writes a temporary file and ``os.replace``-s it in. Readers
  never take the lock: they see the old or the new content, never a part.
- S3: a create is a put with ``If-None-Match: *``, a swap a put with ``If-Match: <ETag>``; the server
  refuses a stale one (``412 PreconditionFailed``). s3fs retries a request whose connection dropped; a
  retry of a put that had landed is refused as stale, so a refused write whose content is on the server
  byte for byte counts as this caller's (every caller here writes content unique to it).
- ``memory://`` (tests): one lock per process.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from clothret.store.files import is_local

logger = logging.getLogger(__name__)

_MEMORY_LOCK = threading.RLock()
_CONFLICT_RETRIES = 5  # S3's 409 ConditionalRequestConflict: another conditional write was in flight


def _kind(fs: fsspec.AbstractFileSystem, url: str) -> str:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if is_local(fs):
        return "local"
    if "s3" in protocols or "s3a" in protocols:
        return "s3"
    if "memory" in protocols:
        return "memory"
    raise ValueError(
        f"{url}: create-only and compare-and-swap writes work on local paths, s3:// and memory://, "
        f"not on {protocols[0]}://"
    )


def content_token(data: bytes) -> str:
    """The token of a content on local disk and ``memory://``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- local disk ------------------------------------------------------------------------------------------


def _tmp_name(path: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:12]}"


def _write_tmp(path: str, data: bytes) -> str:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _local_read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _local_create(path: str, data: bytes) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _write_tmp(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


@contextmanager
def _local_lock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _local_swap(path: str, data: bytes, token: str) -> bool:
    with _local_lock(path):
        current = _local_read(path)
        if current is None or content_token(current) != token:
            return False
        tmp = _write_tmp(path, data)
        os.replace(tmp, path)
        return True


def _local_delete(path: str, token: str) -> bool:
    with _local_lock(path):
        current = _local_read(path)
        if current is None or content_token(current) != token:
            return False
        os.unlink(path)
        return True


# --- memory:// ---------------------------------------------------------------------------------------------


def _memory_read(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


# --- S3 ----------------------------------------------------------------------------------------------------


def _s3_code(exc: BaseException) -> str | None:
    cause = exc if getattr(exc, "response", None) else exc.__cause__
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _s3_read(fs, path: str) -> tuple[bytes | None, str | None]:
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def get() -> tuple[bytes, str]:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with response["Body"] as body:
            return await body.read(), response["ETag"]

    try:
        return sync(fs.loop, get)
    except FileNotFoundError:
        return None, None


def _s3_put(fs, path: str, data: bytes, condition: dict) -> bool:
    """One conditional put; False when the server refused its condition."""
    bucket, key, _ = fs.split_path(path)
    for attempt in range(_CONFLICT_RETRIES):
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except FileExistsError:  # s3fs's name for a refused If-None-Match
            return False
        except FileNotFoundError as exc:
            if "IfMatch" in condition and _s3_code(exc) == "NoSuchKey":
                return False  # If-Match on a key that is gone
            raise
        except OSError as exc:
            code = _s3_code(exc)
            if code == "PreconditionFailed":
                return False
            if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                time.sleep(0.05 * 2**attempt)
                continue
            raise
        finally:
            fs.invalidate_cache(path)
    return False


def _s3_delete(fs, path: str, token: str) -> bool:
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=token)
        return True
    except FileNotFoundError as exc:
        if _s3_code(exc) == "NoSuchKey":
            return False
        raise
    except OSError as exc:
        if _s3_code(exc) == "PreconditionFailed":
            return False
        raise
    finally:
        fs.invalidate_cache(path)


# --- the four operations -----------------------------------------------------------------------------------


def read_versioned(url: str) -> tuple[bytes | None, str | None]:
    """A file's content and the token of that version; ``(None, None)`` when it does not exist."""
    fs, path = fsspec.core.url_to_fs(url)
    kind = _kind(fs, url)
    if kind == "s3":
        return _s3_read(fs, path)
    data = _local_read(path) if kind == "local" else _memory_read(fs, path)
    return data, None if data is None else content_token(data)


def _landed(url: str, data: bytes) -> bool:
    """Whether the file holds ``data`` already (a refused retry of this caller's own write)."""
    current, _ = read_versioned(url)
    return current == data


def put_if_absent(url: str, data: bytes) -> bool:
    """Create a file with ``data`` unless it exists; True when this call created it."""
    fs, path = fsspec.core.url_to_fs(url)
    kind = _kind(fs, url)
    if kind == "local":
        return _local_create(path, data)
    if kind == "memory":
        with _MEMORY_LOCK:
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
    return _s3_put(fs, path, data, {"IfNoneMatch": "*"}) or _landed(url, data)


def put_if_match(url: str, data: bytes, token: str | None) -> bool:
    """Replace a file with ``data`` only if it is still the version ``token`` names (``None``: only if it
    does not exist); True when this call wrote it, False when another writer got there first."""
    if token is None:
        return put_if_absent(url, data)
    fs, path = fsspec.core.url_to_fs(url)
    kind = _kind(fs, url)
    if kind == "local":
        return _local_swap(path, data, token)
    if kind == "memory":
        with _MEMORY_LOCK:
            current = _memory_read(fs, path)
            if current is None or content_token(current) != token:
                return False
            fs.pipe_file(path, data)
            return True
    return _s3_put(fs, path, data, {"IfMatch": token}) or _landed(url, data)


def delete_if_match(url: str, token: str) -> bool:
    """Delete a file only if it is still the version ``token`` names; True when this call deleted it."""
    fs, path = fsspec.core.url_to_fs(url)
    kind = _kind(fs, url)
    if kind == "local":
        return _local_delete(path, token)
    if kind == "memory":
        with _MEMORY_LOCK:
            current = _memory_read(fs, path)
            if current is None or content_token(current) != token:
                return False
            fs.rm_file(path)
            return True
    return _s3_delete(fs, path, token)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporary files (left behind by a crashed writer)."""
    return name.startswith(".") and ".tmp-" in name

