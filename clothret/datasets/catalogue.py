"""Catalogue manifests: which gallery images exist, where they live and what their content hash is.

A manifest is a JSON Lines file (any fsspec URL), one object per image:
``{"image_id": "000001", "uri": "s3://shop/000001.jpg", "sha256": "...", "item_id": "sku-123"}``.
``item_id`` is the shop item an image shows; search results are deduplicated by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import fsspec

from clothret.datasets.records import ImageRecord

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class ManifestEntry:
    """One gallery image: its id, URL, sha256 of its bytes, and the shop item it shows."""

    image_id: str
    uri: str
    sha256: str
    item_id: str


def file_sha256(uri: str) -> str:
    """sha256 of a file's bytes, read through fsspec in 1 MiB blocks."""
    digest = hashlib.sha256()
    with fsspec.open(uri, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def shop_item_id(record: ImageRecord) -> str:
    """The item id of a DeepFashion2 shop image: its pair and the style of its first matchable item."""
    styles = [it.style for it in record.items if it.style > 0]
    return f"p{record.pair_id}-s{styles[0]}" if styles else f"img-{record.image_id}"


def manifest_from_records(records: Iterable[ImageRecord]) -> list[ManifestEntry]:
    """A manifest of the shop images among DeepFashion2 records (hashes computed from the files)."""
    entries = [
        ManifestEntry(r.image_id, r.path, file_sha256(r.path), shop_item_id(r))
        for r in records
        if r.source == "shop"
    ]
    if not entries:
        raise ValueError("no shop images among the records: a gallery manifest needs source == 'shop'")
    return entries


def manifest_from_folder(folder_url: str) -> list[ManifestEntry]:
    """A manifest of every image file in a folder; the file stem is both image id and item id."""
    fs, root = fsspec.core.url_to_fs(folder_url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder_url}")
    entries = []
    for path in paths:
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        entries.append(ManifestEntry(stem, prefix + path, file_sha256(prefix + path), stem))
    return entries


def write_manifest(entries: Sequence[ManifestEntry], url: str) -> None:
    """Write a manifest as JSON Lines; duplicate image ids are refused."""
    seen: set[str] = set()
    for e in entries:
        if e.image_id in seen:
            raise ValueError(f"duplicate image_id {e.image_id!r} in manifest")
        seen.add(e.image_id)
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        for e in entries:
            f.write(json.dumps(asdict(e)) + "\n")
    logger.info("wrote manifest of %d images to %s", len(entries), url)


MANIFEST_FIELDS = "one JSON object a line with image_id, uri, sha256 and an optional item_id"


def _manifest_entry(raw: object, where: str) -> ManifestEntry:
    """One parsed manifest line as an entry; ``ValueError`` names ``where`` and what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a JSON object expected, got {type(raw).__name__} ({MANIFEST_FIELDS})")
    missing = [k for k in ("image_id", "uri", "sha256") if k not in raw]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} ({MANIFEST_FIELDS})")
    for key in ("image_id", "uri", "sha256", "item_id"):
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
            raise ValueError(f"{where}: {key} must be a non-empty string, got {json.dumps(value)}")
    return ManifestEntry(
        image_id=str(raw["image_id"]), uri=str(raw["uri"]), sha256=str(raw["sha256"]),
        item_id=str(raw.get("item_id", raw["image_id"])),
    )


def read_manifest(url: str) -> list[ManifestEntry]:
    """Read a JSON Lines manifest; errors name the file and the line that is wrong, and what is valid."""
    entries = []
    first_line: dict[str, int] = {}
    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{url} line {lineno}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); {MANIFEST_FIELDS}") from exc
                entry = _manifest_entry(raw, where)
                if entry.image_id in first_line:
                    raise ValueError(
                        f"{where}: duplicate image_id {entry.image_id!r} (first on line {first_line[entry.image_id]}); "
                        f"image ids must be unique"
                    )
                first_line[entry.image_id] = lineno
                entries.append(entry)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{url} is not a JSON Lines manifest: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                         f"{MANIFEST_FIELDS}") from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"manifest not found: {url}") from exc
    except IsADirectoryError as exc:
        raise ValueError(f"manifest {url} is a folder; a JSON Lines file is needed ({MANIFEST_FIELDS})") from exc
    return entries
