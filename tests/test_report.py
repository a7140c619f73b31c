"""The HTML retrieval report: images embedded, hits marked, summary shown."""

from __future__ import annotations

import fsspec
import numpy as np
from PIL import Image

from clothret.datasets.records import ImageRecord, Item
from clothret.evaluation.retrieval import retrieval_accuracy
from clothret.index.results import QueryResult
from clothret.report import write_report

SHOP_BOX = (10.0, 10.0, 80.0, 80.0)


def _jpeg(path, colour) -> str:
    Image.new("RGB", (120, 90), colour).save(path, format="JPEG")
    return str(path)


def _setup(tmp_path):
    query = [
        ImageRecord(
            "q1",
            _jpeg(tmp_path / "q1.jpg", (200, 50, 50)),
            "user",
            7,
            (Item(1, 1, (5.0, 5.0, 60.0, 80.0)), Item(8, 2, (60.0, 10.0, 115.0, 85.0)), Item(2, 0, (0, 0, 9, 9))),
        )
    ]
    gallery = [
        # g1 holds the positive of the first query item; g2 belongs to another pair
        ImageRecord("g1", _jpeg(tmp_path / "g1.jpg", (50, 200, 50)), "shop", 7, (Item(1, 1, SHOP_BOX),)),
        ImageRecord("g2", _jpeg(tmp_path / "g2.jpg", (50, 50, 200)), "shop", 3, (Item(1, 1, SHOP_BOX),)),
    ]
    results = [
        QueryResult(
            query_image_id="q1",
            box=(6.0, 6.0, 58.0, 78.0),
            score=0.9,
            category_id=1,
            gallery_image_ids=["g2", "g1"],
            gallery_boxes=np.array([SHOP_BOX, (12, 10, 80, 78)], np.float32),
            gallery_item_ids=["g2_1", "g1_1"],
            similarities=np.array([0.9, 0.8], np.float32),
        )
    ]
    return query, gallery, results


def test_report_embeds_images_marks_hits_and_shows_summary(tmp_path):
    query, gallery, results = _setup(tmp_path)
    summary = retrieval_accuracy(query, gallery, results)
    assert summary["acc@1"] == 0.0 and summary["acc@5"] == 0.5
    url = str(tmp_path / "report.html")
    write_report(url, query, gallery, results, summary=summary, title="run <1>")

    page = (tmp_path / "report.html").read_text()
    # item 0: query + 2 gallery thumbnails; item 1 (missed): query only; the style-0 item is not shown
    assert page.count("<img ") == 4
    assert page.count('class="cell hit"') == 1 and "HIT" in page
    assert "first hit at rank 2" in page and "MISSED" in page
    assert "acc@5</th><td>0.5000" in page and "acc@1</th><td>0.0000" in page
    assert "run &lt;1&gt;" in page and "run <1>" not in page
    assert "data:image/jpeg;base64," in page


def test_report_samples_and_computes_summary_when_none(tmp_path):
    query, gallery, results = _setup(tmp_path)
    url = "memory://clothret-tests/report.html"
    write_report(url, query, gallery, results, n_samples=1, seed=3)
    with fsspec.open(url, "r") as f:
        page = f.read()
    fsspec.filesystem("memory").rm(url)
    assert "1 of 2 query items shown" in page
    assert "acc@10</th><td>0.5000" in page and "n_query_items</th><td>2" in page
    assert page.count("<img ") in (1, 3)


def test_report_shows_timings_as_a_table_and_rows_wrap(tmp_path):
    query, gallery, results = _setup(tmp_path)
    summary = {"acc@1": 0.5, "timings": {"synthesize": 11.0, "train": 485.2}}
    write_report(str(tmp_path / "r.html"), query, gallery, results, summary=summary)
    page = (tmp_path / "r.html").read_text()
    assert "{'synthesize'" not in page and "{&#x27;synthesize" not in page
    assert "<th>timings</th><td><table" in page and "<th>train</th><td>485.2000</td>" in page
    assert "flex-wrap: wrap" in page
