"""The catalog of a model version: which segments are live and which image ids are deleted.

Stored as ``<store>/<model version>/catalog.json``, rewritten atomically after a refresh commits its
segments. Live segments are listed oldest first; when an image appears in several live segments (it
changed, or a transient failure was retried) the *latest* segment's entry is the live one. Deleted
image ids are left out of every index until a manifest lists them again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clothret.store.feature_store import read_image_table, segment_url, version_url
from clothret.store.files import atomic_write, read_bytes_or_none

logger = logging.getLogger(__name__)

CATALOG = "catalog.json"


@dataclass(frozen=True)
class Catalog:
    """Live segments (oldest first) and deleted image ids of one model version."""

    version: str
    segments: tuple[str, ...] = ()
    deleted: frozenset[str] = frozenset()
    updated: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {"version": self.version, "segments": list(self.segments), "deleted": sorted(self.deleted),
             "updated": self.updated},
            indent=1,
        ).encode()


@dataclass(frozen=True)
class ImageState:
    """Where an image's live entry is and how it went: status ``ok``, ``bad_input`` or ``transient``."""

    segment_id: str
    sha256: str
    status: str
    reason: str = ""


@dataclass
class LiveImages:
    """The live entry of every image not deleted (``images``), and every image id each live segment
    holds, stale and deleted entries included (``held``)."""

    images: dict[str, ImageState] = field(default_factory=dict)
    held: dict[str, list[str]] = field(default_factory=dict)


def catalog_url(store_url: str, version: str) -> str:
    return f"{version_url(store_url, version)}/{CATALOG}"


def read_catalog(store_url: str, version: str) -> Catalog:
    """The catalog of a model version; an empty one when nothing was committed yet."""
    url = catalog_url(store_url, version)
    data = read_bytes_or_none(url)
    if data is None:
        return Catalog(version)
    try:
        raw = json.loads(data)
        return Catalog(raw["version"], tuple(raw["segments"]), frozenset(raw["deleted"]), raw.get("updated", ""))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{url} is not a valid catalog ({exc!r}); restore it or delete it to re-embed") from exc


def write_catalog(store_url: str, segments: Iterable[str], deleted: Iterable[str], version: str) -> Catalog:
    """Atomically replace the catalog of a model version."""
    catalog = Catalog(
        version, tuple(segments), frozenset(deleted), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    atomic_write(catalog_url(store_url, version), catalog.to_json())
    logger.info("catalog of %s: %d live segments, %d deleted images", version, len(catalog.segments),
                len(catalog.deleted))
    return catalog


def live_images(store_url: str, catalog: Catalog, *, threads: int = 8) -> LiveImages:
    """Read the image tables of the live segments (in parallel); the latest segment wins per image."""
    urls = [segment_url(store_url, catalog.version, s) for s in catalog.segments]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(read_image_table, urls))
    live = LiveImages()
    for seg_id, table in zip(catalog.segments, tables):
        live.held[seg_id] = table.image_ids
        for image_id, sha, status, reason in zip(table.image_ids, table.sha256, table.status, table.reasons):
            if image_id not in catalog.deleted:
                live.images[image_id] = ImageState(seg_id, sha, status, reason)
    return live
