"""Plan a refresh: split the manifest into segments and find which are committed already."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from clothret.datasets.catalogue import ManifestEntry
from clothret.store.feature_store import is_committed, segment_id, segment_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentPlan:
    """One segment to compute (or reuse): its id, URL and images."""

    segment_id: str
    url: str
    entries: tuple[ManifestEntry, ...]
    committed: bool


def plan_segments(
    entries: Sequence[ManifestEntry], *, version: str, store_url: str, segment_size: int
) -> list[SegmentPlan]:
    """Sort images by id, cut them into segments of ``segment_size`` and look up commit markers."""
    if segment_size < 1:
        raise ValueError(f"segment_size must be >= 1, got {segment_size}")
    ordered = sorted(entries, key=lambda e: e.image_id)
    plans = []
    for start in range(0, len(ordered), segment_size):
        chunk = tuple(ordered[start : start + segment_size])
        seg_id = segment_id(version, chunk)
        url = segment_url(store_url, version, seg_id)
        plans.append(SegmentPlan(seg_id, url, chunk, is_committed(url)))
    n_done = sum(p.committed for p in plans)
    logger.info("planned %d segments (%d committed, %d to compute)", len(plans), n_done, len(plans) - n_done)
    return plans
