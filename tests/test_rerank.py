"""Post-processing against brute-force references on seeded data: each written straight from the
definitions (PCA whitening; αQE and DBA of Radenović et al. 2018; k-reciprocal re-ranking of Zhong et al.
2017), with loops and sets rather than the library's vectorised code."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from clothret.index.gallery import Gallery
from clothret.index.rebuild import build_validated
from clothret.index.search import SearchIndex
from clothret.rerank import PostProcessConfig, postprocess_build, with_postprocessing
from clothret.rerank.expansion import alpha_query_expansion, database_side_augmentation
from clothret.rerank.k_reciprocal import k_reciprocal_rerank, local_distances
from clothret.rerank.search import PostProcessedIndex, dedupe_by_image, resolve_options
from clothret.rerank.whitening import apply_whitening, learn_pca_whitening, whitening_transform, with_pretransform


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, *, clusters: int = 12, spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``clusters`` centres, with an anisotropic scale (so whitening matters) and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, size=n)
    scale = np.linspace(3.0, 0.3, dim)
    x = (centres[labels] + spread * rng.normal(size=(n, dim))) * scale
    return unit(x), labels


# ---------------------------------------------------------------- PCA whitening


def reference_whitening(g: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """mean and projection from the definition: covariance as a sum of outer products, its eigenvectors by
    decreasing eigenvalue, each divided by the square root of its eigenvalue."""
    n, d = g.shape
    mean = sum(row.astype(np.float64) for row in g) / n
    cov = np.zeros((d, d))
    for row in g:
        c = row - mean
        cov += np.outer(c, c)
    cov /= n
    values, vectors = np.linalg.eigh(cov)
    order = sorted(range(d), key=lambda i: -values[i])[:dim]
    projection = np.stack([vectors[:, i] / math.sqrt(values[i]) for i in order])
    return mean, projection


@pytest.mark.parametrize("dim", [16, 6])
def test_pca_whitening_matches_the_definition(dim):
    g, _ = clustered(300, 16, seed=1)
    q, _ = clustered(20, 16, seed=2)
    w = learn_pca_whitening(g, dim=None if dim == 16 else dim)
    assert (w.d_in, w.d_out) == (16, dim)
    mean, projection = reference_whitening(g, dim)
    ref = lambda x: unit((x - mean) @ projection.T)  # noqa: E731
    # eigenvector signs are arbitrary: compare similarities, which do not depend on them
    np.testing.assert_allclose(apply_whitening(q, w) @ apply_whitening(g, w).T, ref(q) @ ref(g).T, atol=2e-5)
    # before normalisation the whitened gallery has identity covariance
    y = (g - w.mean) @ w.projection.T
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(dim), atol=2e-3)


def test_whitening_as_an_index_pretransform_answers_like_numpy():
    g, _ = clustered(400, 16, seed=3)
    q, _ = clustered(30, 16, seed=4)
    w = learn_pca_whitening(g, dim=8)
    flat = faiss.IndexFlatIP(8)
    flat.add(apply_whitening(g, w))
    index = with_pretransform(flat, whitening_transform(w))
    assert index.d == 16 and index.ntotal == 400
    sims, rows = index.search(q, 10)
    expected = apply_whitening(q, w) @ apply_whitening(g, w).T
    np.testing.assert_array_equal(rows, np.argsort(-expected, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(sims, np.sort(expected, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_whitening_refuses_what_the_gallery_cannot_support():
    g, _ = clustered(5, 16)  # 5 vectors span 4 directions around their mean
    with pytest.raises(ValueError, match=r"whitening dim must be in 1\.\.4"):
        learn_pca_whitening(g, dim=8)
    assert learn_pca_whitening(g).d_out == 4
    with pytest.raises(ValueError, match="all equal"):
        learn_pca_whitening(np.ones((10, 4), np.float32))
    with pytest.raises(ValueError, match="whiten_dim is set but whiten is False"):
        PostProcessConfig(whiten_dim=8)


# ---------------------------------------------------------------- αQE and DBA


def reference_expand(v: np.ndarray, others: np.ndarray, k: int, alpha: float, exclude: int | None = None) -> np.ndarray:
    """normalise(v + sum over the k most similar others of max(s, 0) ** alpha * other)."""
    scored = sorted(((float(v @ o), j) for j, o in enumerate(others) if j != exclude), reverse=True)[:k]
    total = v.astype(np.float64).copy()
    for s, j in scored:
        total += (max(s, 0.0) ** alpha if alpha else 1.0) * others[j]
    return total / np.linalg.norm(total)


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_alpha_query_expansion_matches_the_definition(alpha):
    g, _ = clustered(200, 12, seed=5)
    q, _ = clustered(15, 12, seed=6)
    flat = faiss.IndexFlatIP(12)
    flat.add(g)
    sims, rows = flat.search(q, 5)
    out = alpha_query_expansion(q, g, rows, sims, k=3, alpha=alpha)
    expected = np.stack([reference_expand(v, g, 3, alpha) for v in q])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_database_side_augmentation_matches_the_definition():
    g, _ = clustered(150, 12, seed=7)
    out = database_side_augmentation(g, k=4, alpha=3.0, block_rows=64)  # several blocks
    expected = np.stack([reference_expand(v, g, 4, 3.0, exclude=i) for i, v in enumerate(g)])
    np.testing.assert_allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------- k-reciprocal re-ranking


def reference_k_reciprocal(x: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017 on the set x (member 0 = the probe), from the paper's definitions (Eq. 3-12), with
    the conventions of the authors' code: squared distances divided by their row maximum, N(p, k) = the k + 1
    nearest including p, V normalised to sum 1, local query expansion over the k2 nearest including p."""
    m = len(x)
    d = [[float(((x[i] - x[j]) ** 2).sum()) for j in range(m)] for i in range(m)]
    d = [[v / max(row) for v in row] for row in d]

    def nearest(p: int, k: int) -> list[int]:
        return sorted(range(m), key=lambda j: (d[p][j], j))[:k]

    def reciprocal(p: int, k: int) -> set[int]:
        return {g for g in nearest(p, k + 1) if p in nearest(g, k + 1)}

    def expanded(p: int) -> set[int]:
        r = reciprocal(p, k1)
        out = set(r)
        for q in r:
            half = reciprocal(q, round(k1 / 2))
            if len(r & half) >= 2 / 3 * len(half):
                out |= half
        return out

    v = []
    for p in range(m):
        members = expanded(p)
        w = [math.exp(-d[p][g]) if g in members else 0.0 for g in range(m)]
        v.append([wi / sum(w) for wi in w])
    vq = [[sum(v[g][j] for g in nearest(p, k2)) / len(nearest(p, k2)) for j in range(m)] for p in range(m)]
    out = []
    for i in range(1, m):
        jaccard = 1 - sum(min(vq[0][j], vq[i][j]) for j in range(m)) / sum(max(vq[0][j], vq[i][j]) for j in range(m))
        out.append((1 - lam) * jaccard + lam * d[0][i])
    return np.array(out)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (6, 1, 0.5), (9, 3, 0.0)])
def test_k_reciprocal_local_distances_match_the_paper(k1, k2, lam):
    x, _ = clustered(41, 10, seed=8)
    np.testing.assert_allclose(local_distances(x, k1=k1, k2=k2, lambda_value=lam), reference_k_reciprocal(x, k1, k2, lam),
                               atol=1e-6)


def test_k_reciprocal_rerank_of_top_candidates_equals_the_reference_on_the_local_set():
    g, glab = clustered(300, 10, spread=0.6, seed=9)
    q, qlab = clustered(12, 10, spread=0.6, seed=10)
    flat = faiss.IndexFlatIP(10)
    flat.add(g)
    _, rows = flat.search(q, 30)
    rows[3, 25:] = -1  # a short candidate list
    scores, reranked = k_reciprocal_rerank(q, g, rows, k1=8, k2=3, lambda_value=0.3)
    for i in range(len(q)):
        cand = rows[i][rows[i] >= 0]
        final = reference_k_reciprocal(np.concatenate([q[i : i + 1], g[cand]]), 8, 3, 0.3)
        order = np.argsort(final, kind="stable")
        np.testing.assert_array_equal(reranked[i, : len(cand)], cand[order])
        np.testing.assert_allclose(scores[i, : len(cand)], 1 - final[order], atol=1e-6)
    assert (reranked[3, 25:] == -1).all() and np.isneginf(scores[3, 25:]).all()
    # lambda = 1 keeps the original order (the final distance is the original one)
    _, same = k_reciprocal_rerank(q, g, rows, k1=8, k2=3, lambda_value=1.0)
    np.testing.assert_array_equal(same[:, :25], rows[:, :25])


# ---------------------------------------------------------------- search with post-processing


def _gallery(features: np.ndarray, boxes_per_image: int = 3) -> Gallery:
    n = len(features)
    image_ids = np.array([f"img{i // boxes_per_image:04d}" for i in range(n)])
    return Gallery(features, image_ids, image_ids.copy(), np.zeros((n, 4), np.float32),
                   np.ones(n, np.int16), np.ones(n, np.float32))


def _flat(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def test_search_applies_expansion_reranking_and_dedupe_like_the_functions():
    g, _ = clustered(240, 10, seed=11)
    q, _ = clustered(8, 10, seed=12)
    plain = SearchIndex(_flat(g), _gallery(g), {"build_id": "b"})
    base_sims, base_rows = plain.search(q, 60)

    qe = with_postprocessing(plain, PostProcessConfig(qe_k=2, candidates=60))
    expanded = alpha_query_expansion(q, g, base_rows, base_sims, k=2, alpha=3.0)
    np.testing.assert_array_equal(qe.search(q, 10)[1], plain.search(expanded, 10)[1])

    rr = with_postprocessing(plain, PostProcessConfig(rerank=True, k1=10, k2=3, candidates=60))
    _, expected_rows = k_reciprocal_rerank(q, g, base_rows, k1=10, k2=3, lambda_value=0.3)
    np.testing.assert_array_equal(rr.search(q, 10)[1], expected_rows[:, :10])

    dd = with_postprocessing(plain, PostProcessConfig(dedupe="image"))
    sims, rows = dd.search(q, 10)
    images = plain.gallery.image_ids[rows]
    assert all(len(set(r)) == 10 for r in images)
    _, ref_rows = dedupe_by_image(*plain.search(q, 240), plain.gallery.image_ids, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    assert isinstance(dd, PostProcessedIndex) and with_postprocessing(plain, PostProcessConfig()) is plain


def test_a_build_with_whitening_and_dba_answers_raw_queries_like_the_reference():
    g, _ = clustered(500, 16, seed=13)
    q, _ = clustered(20, 16, seed=14)
    config = PostProcessConfig(whiten=True, whiten_dim=8, dba_k=3, qe_k=1)
    gallery, finish, fields = postprocess_build(_gallery(g), config)
    index, _ = build_validated(gallery)
    index = faiss.deserialize_index(faiss.serialize_index(finish(index)))  # as a published build reads back
    manifest = {"build_id": "b", **fields}
    assert fields["postprocess"]["indexed_dim"] == 8 and index.d == 16

    w = learn_pca_whitening(g, dim=8)
    wg = database_side_augmentation(apply_whitening(g, w), k=3, alpha=3.0)
    expected = apply_whitening(q, w) @ wg.T
    sims, rows = SearchIndex(index, gallery, manifest).search(q, 5)
    np.testing.assert_array_equal(rows, np.argsort(-expected, axis=1, kind="stable")[:, :5])

    served = with_postprocessing(SearchIndex(index, gallery, manifest), resolve_options(manifest, None))
    assert served.options == config
    cand_sims, cand_rows = SearchIndex(index, gallery, manifest).search(q, 100)
    expanded = alpha_query_expansion(apply_whitening(q, w), wg, cand_rows, cand_sims, k=1, alpha=3.0)
    np.testing.assert_array_equal(served.search(q, 5)[1], np.argsort(-(expanded @ wg.T), axis=1, kind="stable")[:, :5])
    with pytest.raises(ValueError, match="same gallery-side settings"):
        with_postprocessing(SearchIndex(index, gallery, manifest), PostProcessConfig())


def test_search_time_whitening_of_a_plain_build_rebuilds_it_in_memory():
    g, _ = clustered(300, 12, seed=15)
    q, _ = clustered(10, 12, seed=16)
    plain = SearchIndex(_flat(g), _gallery(g), {"build_id": "b"})
    whitened = with_postprocessing(plain, resolve_options(plain.manifest, {"whiten": True}))
    w = learn_pca_whitening(g)
    expected = apply_whitening(q, w) @ apply_whitening(g, w).T
    np.testing.assert_array_equal(whitened.search(q, 10)[1], np.argsort(-expected, axis=1, kind="stable")[:, :10])
    assert whitened.manifest["postprocess"]["config"]["whiten"] is True
