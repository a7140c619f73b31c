import hashlib
import json

import numpy as np
import pytest

from clothret.datasets.catalogue import (
    manifest_from_folder,
    manifest_from_records,
    read_manifest,
    write_manifest,
)
from clothret.datasets.deepfashion2 import parse_annotation, read_split
from clothret.datasets.synthetic import SyntheticSizes, generate_split

SMALL = SyntheticSizes(n_pairs=6, street_per_pair=2)


def test_synthetic_split_is_deterministic_and_readable(tmp_path):
    a = generate_split(str(tmp_path / "a"), SMALL, seed=3)
    b = generate_split(str(tmp_path / "b"), SMALL, seed=3)
    assert [(r.image_id, r.source, r.pair_id, r.items) for r in a] == [(r.image_id, r.source, r.pair_id, r.items) for r in b]
    files_a = sorted((tmp_path / "a" / "image").iterdir())
    files_b = sorted((tmp_path / "b" / "image").iterdir())
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files_a] == [
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files_b
    ]
    back = read_split(str(tmp_path / "a"))
    assert [(r.image_id, r.source, r.pair_id) for r in back] == [(r.image_id, r.source, r.pair_id) for r in a]
    for got, want in zip(back, a):
        assert [i.category_id for i in got.items] == [i.category_id for i in want.items]
        np.testing.assert_allclose([i.bbox for i in got.items], [i.bbox for i in want.items], atol=0.01)


def test_synthetic_pairs_match_between_shop_and_street(tmp_path):
    records = generate_split(str(tmp_path), SMALL, seed=1)
    shop_keys = {(r.pair_id, it.style) for r in records if r.source == "shop" for it in r.items}
    street = [r for r in records if r.source == "user"]
    assert len(street) == SMALL.n_pairs * SMALL.street_per_pair
    for r in street:
        assert 1 <= len(r.items) <= 3
        for it in r.items:
            x1, y1, x2, y2 = it.bbox
            assert 0 <= x1 < x2 <= SMALL.street_size and 0 <= y1 < y2 <= SMALL.street_size
            if it.style > 0:
                assert (r.pair_id, it.style) in shop_keys
    for r in records:
        if r.source == "shop":
            assert len(r.items) == 1 and r.items[0].style > 0


def test_parse_annotation_names_the_bad_field():
    with pytest.raises(ValueError, match="source"):
        parse_annotation("000001", "x.jpg", {"source": "street", "pair_id": 1})
    with pytest.raises(ValueError, match="item1.category_id"):
        parse_annotation("000001", "x.jpg", {"source": "user", "pair_id": 1,
                                             "item1": {"category_id": 14, "style": 1, "bounding_box": [0, 0, 5, 5]}})
    with pytest.raises(ValueError, match="item2"):
        parse_annotation("000001", "x.jpg", {"source": "user", "pair_id": 1,
                                             "item1": {"category_id": 1, "style": 1, "bounding_box": [0, 0, 5, 5]},
                                             "item2": {"category_id": 1, "style": 1}})


def test_read_split_reads_the_real_layout(tmp_path):
    (tmp_path / "annos").mkdir()
    (tmp_path / "image").mkdir()
    anno = {
        "source": "user", "pair_id": 7, "segmentation": [], "scale": 2,
        "item2": {"category_id": 8, "style": 0, "bounding_box": [1, 2, 30, 40], "landmarks": []},
        "item1": {"category_id": 1, "style": 2, "bounding_box": [5, 6, 20, 25]},
    }
    (tmp_path / "annos" / "000042.json").write_text(json.dumps(anno))
    (rec,) = read_split(str(tmp_path))
    assert rec.image_id == "000042" and rec.pair_id == 7 and rec.source == "user"
    assert [i.category_id for i in rec.items] == [1, 8]
    assert rec.match_keys() == [(7, 2), None]
    assert rec.path.endswith("image/000042.jpg")
    with pytest.raises(FileNotFoundError, match="annos"):
        read_split(str(tmp_path / "nope"))


def test_manifest_round_trip_and_errors(tmp_path):
    records = generate_split(str(tmp_path / "split"), SMALL, seed=0)
    entries = manifest_from_records(records)
    assert len(entries) == sum(r.source == "shop" for r in records)
    assert all(len(e.sha256) == 64 for e in entries)
    url = str(tmp_path / "cat" / "manifest.jsonl")
    write_manifest(entries, url)
    assert read_manifest(url) == entries
    folder = manifest_from_folder(str(tmp_path / "split" / "image"))
    assert len(folder) == len(records)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "1", "uri": "a.jpg", "sha256": "x"}\n{"uri": "b.jpg"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_manifest(str(bad))
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest([entries[0], entries[0]], str(tmp_path / "dup.jsonl"))
