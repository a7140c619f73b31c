"""Plan a refresh: compare the manifest with the catalog and cut what must be embedded into segments.

An image is embedded when it is new, when its content hash changed, when its last attempt failed for a
transient reason (I/O, timeout), or — with ``retry_failed`` — when it failed at all. Images whose last
attempt failed as bad input (corrupt, unsupported, too large) are left alone until their hash changes.
Images of the catalog that the manifest no longer lists are deleted. Segments already live stay as they
are, so adding 1% of images costs one new segment per ``segment_size`` new images, not a re-run.

A live segment that fails its check (a store damaged by a crash or an older version) counts as absent:
its images are re-embedded ("recompute_damaged") under a segment id salted with the damaged one, and so is
a planned segment whose id is committed but damaged, so the damage is never reused. The plan records the
catalog version it was made from, against which the catalog is later swapped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from clothret.datasets.catalogue import ManifestEntry
from clothret.pipeline.reader import BAD_INPUT, TRANSIENT
from clothret.pipeline.result import STATUS_OK
from clothret.store.catalog import Catalog, LiveImages, live_images, read_catalog
from clothret.store.feature_store import check_segment, is_committed, segment_id, segment_url

logger = logging.getLogger(__name__)

RECOMPUTE_DAMAGED = "recompute_damaged"
_MAX_SALTS = 8


@dataclass(frozen=True)
class SegmentPlan:
    """One segment of a refresh: its id, URL and images (none for a live segment kept as it is).

    Exactly the inputs of the segment's task, so a task's cache key depends on nothing else.
    """

    segment_id: str
    url: str
    entries: tuple[ManifestEntry, ...]


@dataclass(frozen=True)
class RefreshPlan:
    """What a refresh does for one model version.

    ``live`` are segments of the catalog that stay live (reused as they are); ``new`` are segments to
    compute, of which ``committed`` were committed already by an interrupted run; ``deleted`` are image
    ids to leave out of the index; ``reasons`` counts why images are (re-)embedded or skipped.
    ``catalog_generation`` and ``catalog_token`` name the catalog version the plan was made from;
    ``damaged`` are the segments (id → reason) found damaged and recomputed.
    """

    version: str
    live: tuple[SegmentPlan, ...]
    new: tuple[SegmentPlan, ...]
    deleted: frozenset[str]
    committed: frozenset[str] = frozenset()
    reasons: dict[str, int] = field(default_factory=dict)
    catalog_generation: int = 0
    catalog_token: str | None = None
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def segments(self) -> tuple[SegmentPlan, ...]:
        """Every segment of the next index: the live ones, then the new ones (later entries win)."""
        return self.live + self.new

    @property
    def n_images_to_embed(self) -> int:
        return sum(len(s.entries) for s in self.new)


def _why(entry: ManifestEntry, live: LiveImages, at: int | None, retry_failed: bool) -> str | None:
    """Why an image must be embedded now (``None``: its live entry, number ``at`` in ``live``, stands)."""
    if live.damaged_images and entry.image_id in live.damaged_images:
        return RECOMPUTE_DAMAGED
    if at is None:
        return None if retry_failed else "new"
    if live.sha256[at] != entry.sha256:
        return None if retry_failed else "changed"
    status = live.status[at]
    if status == STATUS_OK:
        return None
    if status == TRANSIENT:
        return "retry_transient"
    if status == BAD_INPUT:
        return "retry_bad_input" if retry_failed else None
    return "retry_unknown_status"


def plan_refresh(
    entries: Sequence[ManifestEntry],
    *,
    version: str,
    store_url: str,
    segment_size: int,
    retry_failed: bool = False,
    catalog: Catalog | None = None,
) -> RefreshPlan:
    """Plan a refresh of ``entries`` (the whole manifest) against the catalog of ``version``.

    With ``retry_failed`` only the images whose last attempt failed are re-run (bad input included);
    new, changed and deleted images wait for the next ordinary refresh.
    """
    if segment_size < 1:
        raise ValueError(f"segment_size must be >= 1, got {segment_size}")
    catalog = catalog if catalog is not None else read_catalog(store_url, version)
    live = live_images(store_url, catalog)
    reasons: Counter[str] = Counter()
    todo: list[tuple[ManifestEntry, str, str]] = []  # entry, the segment id it replaces, why
    position = live.position
    for entry in sorted(entries, key=attrgetter("image_id")):
        at = position.get(entry.image_id)
        why = _why(entry, live, at, retry_failed)
        if why is None:
            if at is None:
                reasons["waiting_new"] += 1  # only with retry_failed
            else:
                status = live.status[at]
                reasons["unchanged" if status == STATUS_OK else f"skipped_{status}"] += 1
            continue
        reasons[why] += 1
        replaced = live.damaged_images.get(entry.image_id) or (live.segment_ids[at] if at is not None else "")
        todo.append((entry, replaced, why))

    listed = {e.image_id for e in entries}
    replaced = {e.image_id for e, _, _ in todo}
    if retry_failed:  # deletions wait for an ordinary refresh
        gone = {i for i in catalog.deleted}
    else:
        gone = (position.keys() - listed) | {i for i in catalog.deleted if i not in listed}
    dropped = replaced | gone
    still_live = {live.segment_ids[at] for i, at in position.items() if i not in dropped}
    live_ids = [s for s in catalog.segments if s in still_live]
    # a deleted id stays in the catalog while any live segment still holds an entry for it
    deleted = {i for s in live_ids for i in live.held.get(s, ()) if i in gone}
    reasons["deleted"] = len(deleted - catalog.deleted)
    live_plans = tuple(SegmentPlan(s, segment_url(store_url, version, s), ()) for s in live_ids)
    new_plans, committed, damaged = [], set(), dict(live.damaged)
    for start in range(0, len(todo), segment_size):
        chunk = todo[start : start + segment_size]
        chunk_entries = tuple(e for e, _, _ in chunk)
        seg_id = segment_id(version, chunk_entries, [prev for _, prev, _ in chunk])
        for _ in range(_MAX_SALTS):
            url = segment_url(store_url, version, seg_id)
            if not is_committed(url):
                break
            problem = check_segment(url)
            if problem is None:
                committed.add(seg_id)
                break
            salted = segment_id(version, chunk_entries, [seg_id] * len(chunk_entries))
            logger.warning("segment %s of %s is committed but damaged (%s): its images get segment %s instead",
                           seg_id, version, problem, salted)
            damaged[seg_id] = problem
            for _, _, why in chunk:
                if why != RECOMPUTE_DAMAGED:
                    reasons[why] -= 1
                    reasons[RECOMPUTE_DAMAGED] += 1
            chunk = [(e, prev, RECOMPUTE_DAMAGED) for e, prev, _ in chunk]
            seg_id = salted
        else:
            raise ValueError(f"{_MAX_SALTS} segment ids in a row for the same images are committed but damaged "
                             f"under {store_url} (the last: {seg_id}): run `clothret verify --store {store_url} "
                             f"--repair`")
        new_plans.append(SegmentPlan(seg_id, url, chunk_entries))
    plan = RefreshPlan(
        version, live_plans, tuple(new_plans), frozenset(deleted), frozenset(committed),
        {k: v for k, v in reasons.items() if v or k == "deleted"}, catalog.generation, catalog.token, damaged,
    )
    logger.info(
        "plan for %s from catalog generation %d: %d live segments kept, %d new segments (%d committed by an "
        "earlier run), %s", version, catalog.generation, len(live_plans), len(new_plans), len(committed),
        dict(plan.reasons),
    )
    return plan
