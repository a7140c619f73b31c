"""Batches of similar shape (clothret.pipeline.batching) and the segment engine using them: every image once,
batches of one aspect group, memory bounded by the window, failures reported, the same results as batches
cut in arrival order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from clothret.datasets.catalogue import ManifestEntry
from clothret.pipeline.batching import ShapeBatcher, aspect_group
from clothret.pipeline.engine_config import EngineConfig
from clothret.pipeline.segment import run_segment


def test_aspect_groups():
    assert aspect_group(768, 1024) == aspect_group(600, 800) == -2  # 3:4 landscape
    assert aspect_group(1024, 768) == 2 and aspect_group(500, 500) == aspect_group(510, 500) == 0
    assert aspect_group(1200, 800) == 2  # 2:3 portrait joins 3:4 portrait
    assert aspect_group(0, 10) == aspect_group(1, 10)  # degenerate sizes do not raise


def _run(batcher, shapes, failures=()):
    """Feed ``shapes`` (and failures at the given indices); return the batches and the most images held."""
    batches, held = [], 0
    for index, (h, w) in enumerate(shapes):
        if index in failures:
            batches += batcher.add_failure(index, f"bad {index}")
        else:
            batches += batcher.add(index, f"img{index}", (h, w), h, w)
        held = max(held, batcher._held)
    batches += list(batcher.drain())
    return batches, held


@pytest.mark.parametrize("seed", range(5))
def test_every_image_once_in_batches_of_one_shape(seed):
    rng = np.random.default_rng(seed)
    shapes = [((768, 1024), (1024, 768), (500, 500), (800, 1200))[k] for k in rng.integers(0, 4, 300)]
    failures = set(rng.choice(300, 20, replace=False).tolist())
    batches, held = _run(ShapeBatcher(8, 32), shapes, failures)
    seen = [i for b in batches for i in b.indices]
    assert sorted(seen) == sorted(set(range(300)) - failures)
    assert sorted(i for b in batches for i, _ in b.failures) == sorted(failures)
    assert all(len(b.items) <= 8 for b in batches) and held <= 32
    for b in batches:
        assert len({aspect_group(h, w) for h, w in b.items}) <= 1
        assert b.names == [f"img{i}" for i in b.indices]
    full = sum(len(b.items) == 8 for b in batches)
    assert full >= (len(seen) - 4 * 8) // 8  # only the window's leftovers go in partial batches


def test_arrival_order_without_grouping():
    shapes = [(768, 1024), (1024, 768)] * 10
    batches, _ = _run(ShapeBatcher(4, 16, by_shape=False), shapes, failures={5})
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16],
                                            [17, 18, 19]]
    assert batches[1].failures == [(5, "bad 5")]


def test_a_full_window_hands_on_the_fullest_batch():
    batcher = ShapeBatcher(4, 6)
    assert batcher.add(0, "a", None, 10, 20) == [] and batcher.add(1, "b", None, 20, 10) == []
    assert batcher.add(2, "c", None, 10, 20) == [] and batcher.add(3, "d", None, 10, 10) == []
    assert batcher.add(4, "e", None, 10, 20) == []
    [out] = batcher.add(5, "f", None, 20, 10)  # six held: the landscape batch (3) goes
    assert out.indices == [0, 2, 4]
    with pytest.raises(ValueError, match="batch_size <= window"):
        ShapeBatcher(8, 4)


def test_a_byte_budget_hands_on_before_the_window_fills():
    """Large decoded images: the batcher holds at most ``max_bytes`` of them, whatever the window."""
    batcher = ShapeBatcher(8, 32, max_bytes=100)
    out = []
    for i in range(12):
        out += batcher.add(i, f"img{i}", None, 10, 20 if i % 2 else 5, nbytes=30)
        assert batcher._held_bytes < 100 and batcher._held_bytes == 30 * batcher._held
    assert out and all(len(b.items) < 8 for b in out)  # handed on for the bytes, long before a batch filled
    assert sum(len(b.items) for b in out) + sum(len(b.items) for b in batcher.drain()) == 12
    assert batcher._held_bytes == 0


def test_failures_alone_are_reported_in_batches():
    batcher = ShapeBatcher(3, 6)
    out = [b for i in range(7) for b in batcher.add_failure(i, "bad")]
    assert [len(b.failures) for b in out] == [3, 3] and [len(b.failures) for b in batcher.drain()] == [1]


@pytest.fixture(scope="module")
def models(tiny_workdir):
    from clothret.models import load_bundle, load_models

    return load_models(load_bundle(str(tiny_workdir / "models" / "bundle.yaml")))


@pytest.fixture(scope="module")
def mixed_entries(tiny_workdir, tmp_path_factory) -> list[ManifestEntry]:
    """Shop images cropped to landscape, portrait and square, interleaved."""
    from clothret.datasets.catalogue import manifest_from_folder

    folder = tmp_path_factory.mktemp("mixed")
    entries = []
    for i, e in enumerate(manifest_from_folder(str(tiny_workdir / "data" / "validation" / "image"))):
        img = Image.open(e.uri).convert("RGB")
        w, h = img.size
        box = ((0, h // 8, w, h - h // 8), (w // 8, 0, w - w // 8, h), (0, 0, w, h))[i % 3]
        path = folder / f"{i:03d}.png"
        img.crop(box).save(path)
        entries.append(ManifestEntry(f"m{i}", str(path), f"{i:064x}", e.item_id))
    return entries


class _ShapeSpy:
    """Wraps a detector and records the image shapes of each batch it gets."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.batches = inner, inner.name, []

    def detect_resident(self, images, **kwargs):
        self.batches.append([tuple(img.shape[1:]) for img in images])
        return self.inner.detect_resident(images, **kwargs)


def _per_image(result):
    """Per image: its boxes and features, boxes by descending score (ties by coordinates)."""
    out = {}
    for i in np.unique(result.box_image):
        rows = np.nonzero(result.box_image == i)[0]
        b = result.boxes[rows]
        order = np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -result.scores[rows]))
        out[int(i)] = (b[order], result.features[rows][order].astype(np.float32))
    return out


def test_the_engine_batches_by_shape_and_each_image_gets_its_results_alone(models, mixed_entries):
    """Batches of one shape need no padding, so each image gets what it gets in a batch of its own (the tiny
    detector is an FCOS, whose GroupNorm heads see a batch's padding: in mixed batches they would not)."""
    spies = [_ShapeSpy(d) for d in models.detectors]
    spied = dataclasses.replace(models, detectors=spies)
    engine = EngineConfig(channels_last=False)
    grouped = run_segment(mixed_entries, spied, engine=engine, batch_size=4)
    assert sum(len(b) for b in spies[0].batches) == len(mixed_entries)
    assert all(len({aspect_group(h, w) for h, w in batch}) == 1 for batch in spies[0].batches)
    assert max(len(b) for b in spies[0].batches) == 4
    spies[0].batches.clear()
    arrival = run_segment(mixed_entries, spied, engine=engine.model_copy(update={"group_by_shape": False}), batch_size=4)
    assert any(len({aspect_group(h, w) for h, w in batch}) > 1 for batch in spies[0].batches)
    alone = run_segment(mixed_entries, models, engine=engine, batch_size=1)
    assert grouped.status == arrival.status == alone.status == ["ok"] * len(mixed_entries)
    got, want, mixed = _per_image(grouped), _per_image(alone), _per_image(arrival)
    assert got.keys() == want.keys()
    for i in want:
        np.testing.assert_allclose(got[i][0], want[i][0], atol=1e-3, err_msg=f"image {i}")
        np.testing.assert_allclose(got[i][1], want[i][1], atol=2e-3, err_msg=f"image {i}")
    moved = sum(len(mixed.get(i, ((),))[0]) != len(want[i][0]) or not np.allclose(mixed[i][0], want[i][0], atol=1e-3)
                for i in want)
    print(f"images whose boxes differ from their own batch's: grouped 0, arrival order {moved} of {len(want)}")
