"""Small test data shared by several test modules (importable because pytest puts tests/ on the path)."""

import numpy as np

from clothret.datasets.catalogue import ManifestEntry
from clothret.pipeline.result import SegmentResult


def manifest_entries(n: int, prefix: str = "img", root: str = "/nowhere") -> list[ManifestEntry]:
    """``n`` entries with distinct ids and hashes, two images per item."""
    return [ManifestEntry(f"{prefix}{i:04d}", f"{root}/{i}.jpg", f"{i:064x}", f"item{i // 2}") for i in range(n)]


def segment_result(entries: list[ManifestEntry], dim: int = 8, seed: int = 0) -> SegmentResult:
    """A segment of two random unit-feature boxes per image; the first image is bad input, the last has one box."""
    rng = np.random.default_rng(seed)
    n = len(entries)
    box_image = np.repeat(np.arange(n, dtype=np.int32), 2)[:-1]
    feats = rng.normal(size=(len(box_image), dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    status = ["ok"] * n
    status[0] = "bad_input"
    return SegmentResult(
        image_ids=[e.image_id for e in entries], item_ids=[e.item_id for e in entries],
        sha256=[e.sha256 for e in entries], status=status,
        reasons=["corrupt"] + [""] * (n - 1), box_image=box_image,
        boxes=rng.uniform(0, 100, size=(len(box_image), 4)).astype(np.float32),
        scores=rng.uniform(size=len(box_image)).astype(np.float32),
        categories=rng.integers(1, 14, size=len(box_image)).astype(np.int16),
        features=feats.astype(np.float16), counts={"images": n, "boxes": len(box_image)},
    )
