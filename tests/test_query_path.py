"""Queries go through the segment engine, the path the gallery went through: a gallery image searched as a
query finds its own boxes with the features the gallery stored (float16 storage apart)."""

from __future__ import annotations

import faiss
import numpy as np
from PIL import Image

from clothret.datasets.catalogue import manifest_from_folder
from clothret.index.gallery import Gallery
from clothret.index.search import SearchIndex
from clothret.models import load_bundle, load_models
from clothret.pipeline.query import search_images
from clothret.pipeline.segment import run_segment


def test_a_gallery_image_as_a_query_finds_its_own_boxes_with_their_features(tiny_workdir, tmp_path):
    models = load_models(load_bundle(str(tiny_workdir / "models" / "bundle.yaml")))
    entries = manifest_from_folder(str(tiny_workdir / "data" / "validation" / "image"))[:12]
    seg = run_segment(entries, models)
    ids = np.asarray(seg.image_ids)
    gallery = Gallery(seg.features.astype(np.float32), ids[seg.box_image], np.asarray(seg.item_ids)[seg.box_image],
                      seg.boxes, seg.categories, seg.scores)
    flat = faiss.IndexFlatIP(gallery.features.shape[1])
    flat.add(gallery.features)
    index = SearchIndex(flat, gallery, {"model_version": models.version})
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not a jpeg")
    queries = [(e.image_id, e.uri) for e in entries] + [("broken", str(unreadable))]
    progress = []
    results, failures = search_images(models, index, queries, k=3, batch_size=5,
                                      on_progress=lambda done, n: progress.append(done))
    assert list(failures) == ["broken"] and failures["broken"].startswith("bad_input")
    assert progress == sorted(progress) and progress[-1] == len(queries)
    assert len(results) == len(seg.boxes) and [r.query_image_id for r in results] == list(ids[seg.box_image])
    for r in results:
        own = np.nonzero((gallery.image_ids == r.query_image_id) & np.all(np.abs(gallery.boxes - r.box) < 1e-3, 1))[0]
        assert len(own) == 1, r.query_image_id
        assert r.gallery_image_ids[0] == r.query_image_id
        assert r.similarities[0] >= 0.9999  # the same features but for their float16 storage (old query path: 0.9994)
    assert Image.open(entries[0].uri).size  # the queries were the gallery's own files
