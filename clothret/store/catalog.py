"""The catalog of a model version: which segments are live and which image ids are deleted.

Stored as ``<store>/<model version>/catalog.json`` and changed only by compare-and-swap: every write
names the version it replaces (:func:`swap_catalog`), carries the next ``generation`` and says who wrote
it, so two refreshes never overwrite each other's result unseen. Live segments are listed oldest first;
when an image appears in several live segments (it changed, or a transient failure was retried) the
*latest* segment's entry is the live one. Deleted image ids are left out of every index until a
manifest lists them again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from clothret.store.cas import put_if_match, read_versioned
from clothret.store.feature_store import damaged_image_ids, image_table_or_reason, segment_url, version_url
from clothret.store.writer import describe, iso, utc_now, writer_info

logger = logging.getLogger(__name__)

CATALOG = "catalog.json"
_WRITE_TRIES = 20


@dataclass(frozen=True)
class Catalog:
    """Live segments (oldest first) and deleted image ids of one model version.

    ``generation`` counts the writes (0: never written), ``writer`` says who wrote this one, and
    ``token`` identifies the stored version it was read from (for :func:`swap_catalog`; not stored).
    """

    version: str
    segments: tuple[str, ...] = ()
    deleted: frozenset[str] = frozenset()
    updated: str = ""
    generation: int = 0
    writer: dict = field(default_factory=dict, compare=False)
    token: str | None = field(default=None, compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {"version": self.version, "generation": self.generation, "segments": list(self.segments),
             "deleted": sorted(self.deleted), "updated": self.updated, "writer": self.writer},
            indent=1,
        ).encode()

    def provenance(self) -> str:
        """"generation G (written by run R on host H (pid P) at T)", for messages."""
        if not self.generation:
            return "generation 0 (never written)"
        return f"generation {self.generation} (written by {describe(self.writer)})"


@dataclass(frozen=True)
class ImageState:
    """Where an image's live entry is and how it went: status ``ok``, ``bad_input`` or ``transient``."""

    segment_id: str
    sha256: str
    status: str
    reason: str = ""


@dataclass
class LiveImages:
    """The live entry of every image not deleted, and every image id each live segment holds, stale and
    deleted entries included (``held``).

    Entries are kept column-wise (one list per field, ``position`` maps an image id to its live entry),
    so that millions of images cost a few lists rather than an object each; :meth:`get` and
    :attr:`images` give them as :class:`ImageState`.

    A live segment that fails its check counts as absent: it is in ``damaged`` (segment id → reason),
    and each image whose latest entry it held is in ``damaged_images`` (image id → segment id) when
    its image ids could still be read.
    """

    position: dict[str, int] = field(default_factory=dict)
    segment_ids: list[str] = field(default_factory=list)  # per entry
    sha256: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    held: dict[str, list[str]] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)
    damaged_images: dict[str, str] = field(default_factory=dict)

    def get(self, image_id: str) -> ImageState | None:
        """The live entry of an image, or ``None``."""
        at = self.position.get(image_id)
        if at is None:
            return None
        return ImageState(self.segment_ids[at], self.sha256[at], self.status[at], self.reasons[at])

    @property
    def images(self) -> dict[str, ImageState]:
        """Every live entry as an :class:`ImageState` (an object per image: for small catalogs and tests)."""
        return {image_id: self.get(image_id) for image_id in self.position}


def catalog_url(store_url: str, version: str) -> str:
    return f"{version_url(store_url, version)}/{CATALOG}"


def _parse(url: str, data: bytes, token: str | None) -> Catalog:
    try:
        raw = json.loads(data)
        return Catalog(
            raw["version"], tuple(raw["segments"]), frozenset(raw["deleted"]), raw.get("updated", ""),
            int(raw.get("generation", 0)), dict(raw.get("writer") or {}), token,
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{url} is not a valid catalog ({exc!r}); restore it or delete it to re-embed") from None


def read_catalog(store_url: str, version: str) -> Catalog:
    """The catalog of a model version (with the token of the version read); an empty one, generation 0,
    when nothing was committed yet."""
    url = catalog_url(store_url, version)
    data, token = read_versioned(url)
    if data is None:
        return Catalog(version)
    return _parse(url, data, token)


def swap_catalog(
    store_url: str, base: Catalog, segments: Iterable[str], deleted: Iterable[str], *, run: str = ""
) -> Catalog | None:
    """Write the next generation of the catalog if the stored one is still ``base`` (compare-and-swap);
    ``None`` when another writer changed it since ``base`` was read."""
    catalog = Catalog(
        base.version, tuple(segments), frozenset(deleted), iso(utc_now()), base.generation + 1, writer_info(run)
    )
    if not put_if_match(catalog_url(store_url, base.version), catalog.to_json(), base.token):
        logger.info("catalog of %s changed since %s was read: not written", base.version, base.provenance())
        return None
    logger.info("catalog of %s, generation %d: %d live segments, %d deleted images", catalog.version,
                catalog.generation, len(catalog.segments), len(catalog.deleted))
    return catalog


def write_catalog(
    store_url: str, segments: Iterable[str], deleted: Iterable[str], version: str, *, run: str = ""
) -> Catalog:
    """Replace the catalog of a model version whatever it holds now (as its next generation).

    For tools and tests; a refresh uses :func:`swap_catalog` against the catalog it planned from.
    """
    segments, deleted = tuple(segments), frozenset(deleted)
    for _ in range(_WRITE_TRIES):
        written = swap_catalog(store_url, read_catalog(store_url, version), segments, deleted, run=run)
        if written is not None:
            return written
    raise RuntimeError(f"the catalog of {version} in {store_url} kept changing: {_WRITE_TRIES} writes lost")


def live_images(store_url: str, catalog: Catalog, *, threads: int = 8) -> LiveImages:
    """Read the image tables of the live segments (in parallel); the latest segment wins per image.

    A segment that is not committed or fails its check is left out with a warning naming it and why.
    """
    urls = [segment_url(store_url, catalog.version, s) for s in catalog.segments]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        tables = list(pool.map(image_table_or_reason, urls))
    live = LiveImages()
    for seg_id, url, table in zip(catalog.segments, urls, tables):
        if isinstance(table, str):
            reason = table
            live.damaged[seg_id] = reason
            held = damaged_image_ids(url)
            logger.warning(
                "live segment %s of %s cannot be used (%s): treated as absent, its images are re-embedded%s",
                seg_id, catalog.version, reason, "" if held is not None else " (its image ids are unreadable)",
            )
            for image_id in held or ():
                if image_id not in catalog.deleted:
                    live.damaged_images[image_id] = seg_id
            continue
        live.held[seg_id] = table.image_ids
        start = len(live.sha256)
        live.segment_ids.extend([seg_id] * len(table.image_ids))
        live.sha256.extend(table.sha256)
        live.status.extend(table.status)
        live.reasons.extend(table.reasons)
        live.position.update(zip(table.image_ids, range(start, start + len(table.image_ids))))
        if live.damaged_images:
            for image_id in table.image_ids:
                live.damaged_images.pop(image_id, None)
    for image_id in catalog.deleted:
        live.position.pop(image_id, None)
    return live
