"""The DF2 retrieval submission file: format and round trip through fsspec."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest

from clothret.evaluation.submission import read_submission, write_submission
from clothret.index.results import QueryResult


def make_result(query_id: str, gallery_ids: list[str]) -> QueryResult:
    n = len(gallery_ids)
    boxes = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + np.array([0, 0, 10, 10], np.float32)
    return QueryResult(
        query_image_id=query_id,
        box=(1.5, 2.0, 30.25, 40.0),
        score=0.875,
        category_id=3,
        gallery_image_ids=gallery_ids,
        gallery_boxes=boxes,
        gallery_item_ids=[f"{g}_1" for g in gallery_ids],
        similarities=np.linspace(1, 0, n, dtype=np.float32),
    )


def assert_same(a: QueryResult, b: QueryResult) -> None:
    assert (a.query_image_id, a.box, a.score, a.category_id) == (b.query_image_id, b.box, b.score, b.category_id)
    assert a.gallery_image_ids == b.gallery_image_ids
    np.testing.assert_allclose(a.gallery_boxes, b.gallery_boxes)


def test_round_trip_local_with_int_ids(tmp_path):
    results = [make_result("000012", [f"{i:06d}" for i in range(100, 120)]), make_result("000013", ["000007"] * 20)]
    url = str(tmp_path / "sub.json")
    assert write_submission(results, url) == 2

    entries = json.loads((tmp_path / "sub.json").read_text())
    assert entries[0]["query_image_id"] == 12 and entries[0]["gallery_image_id"][0] == 100
    assert entries[0]["query_cls"] == 3 and entries[0]["query_score"] == 0.875
    assert entries[0]["query_bbox"] == [1.5, 2.0, 30.25, 40.0]
    assert len(entries[0]["gallery_bbox"]) == 20 and entries[0]["gallery_bbox"][1] == [4, 5, 16, 17]

    back = read_submission(url, id_width=6)
    assert len(back) == 2
    for a, b in zip(results, back):
        assert_same(a, b)
    assert back[0].gallery_item_ids == [""] * 20 and np.isnan(back[0].similarities).all()
    assert read_submission(url)[0].query_image_id == "12"


def test_round_trip_memory_with_string_ids_and_cut_to_20():
    results = [make_result("street_a", [f"shop_{i}" for i in range(25)])]
    url = "memory://clothret-tests/submission.json"
    assert write_submission(results, url) == 1
    with fsspec.open(url, "r") as f:
        assert json.load(f)[0]["query_image_id"] == "street_a"
    (back,) = read_submission(url)
    assert back.gallery_image_ids == [f"shop_{i}" for i in range(20)]
    np.testing.assert_allclose(back.gallery_boxes, results[0].gallery_boxes[:20])
    fsspec.filesystem("memory").rm(url)


def test_read_rejects_an_entry_missing_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"query_image_id": 1}]))
    with pytest.raises(ValueError, match="lacks"):
        read_submission(str(path))
