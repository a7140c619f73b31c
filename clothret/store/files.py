"""Small helpers for writing files through fsspec so that readers never see a half-written one."""

from __future__ import annotations

import uuid

import fsspec


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether a file system is the local disk (where a rename is atomic and a put is not)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def atomic_write(url: str, data: bytes) -> None:
    """Write bytes so a reader sees the old or the new content, never a part: temp name then rename
    on file systems; object stores (s3) make a single put atomic already."""
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str) -> bytes:
    """A file's bytes."""
    with fsspec.open(url, "rb") as f:
        return f.read()


def read_bytes_or_none(url: str) -> bytes | None:
    """A file's bytes, or ``None`` when it does not exist."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None
