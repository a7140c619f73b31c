"""Exact nearest neighbours of a fixed set of queries, computed block by block and kept up to date.

The recall of a large index is measured against exact search on held-out queries. Computing that exact
answer means one pass over every vector: done once, streamed (:meth:`GroundTruth.update` per block of
rows), and stored with the build (``validation.npz``), so that an incremental update only scans the rows
it adds and drops the rows it removes (:meth:`GroundTruth.remap`).

Each query keeps its best ``depth`` rows and similarities, best first, and a ``bound``: every row not
listed has a similarity of at most ``bound``. A listed row is exact. Recall@k needs the k-th exact
similarity, known while a query lists at least k rows; a query left with fewer (its rows were removed)
is "stale" and the ground truth must be computed again in full.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import faiss
import numpy as np

DEPTH = 32
TIE_EPS = 1e-5


@dataclass
class GroundTruth:
    """``queries`` (q, dim) float32; ``rows``/``sims`` (q, depth), best first, -1 / -inf where empty;
    ``bound`` (q,) float32: the best similarity a row not listed may have."""

    queries: np.ndarray
    rows: np.ndarray
    sims: np.ndarray
    bound: np.ndarray

    @classmethod
    def empty(cls, queries: np.ndarray, depth: int = DEPTH) -> GroundTruth:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return cls(q, np.full((len(q), depth), -1, np.int64), np.full((len(q), depth), -np.inf, np.float32),
                   np.full(len(q), -np.inf, np.float32))

    @property
    def depth(self) -> int:
        return self.rows.shape[1]

    def update(self, block: np.ndarray, rows: int | np.ndarray) -> None:
        """Take the vectors of ``block`` into account: rows ``rows .. rows + len(block) - 1`` (an int), or
        the rows given one per vector. A block's own best ``depth`` rows per query are picked first, so
        the merge handles ``2 * depth`` columns, not the block's width."""
        if len(block) == 0:
            return
        sims = self.queries @ np.asarray(block, dtype=np.float32).T
        if isinstance(rows, (int, np.integer)):
            rows = np.arange(rows, rows + len(block), dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        d = self.depth
        if sims.shape[1] > d:
            part = np.argpartition(-sims, d, axis=1)  # [:, :d] the best d, [:, d] the best of the others
            best_left = np.take_along_axis(sims, part[:, d : d + 1], 1)[:, 0]
            self.bound = np.maximum(self.bound, best_left.astype(np.float32))
            keep = part[:, :d]
            self._merge(np.take_along_axis(sims, keep, 1), rows[keep])
        else:
            self._merge(sims, np.broadcast_to(rows, sims.shape))

    def _merge(self, sims: np.ndarray, rows: np.ndarray) -> None:
        all_sims = np.concatenate([self.sims, sims], axis=1)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        d = self.depth
        if all_sims.shape[1] > d:
            keep = np.argpartition(-all_sims, d - 1, axis=1)[:, :d]
            dropped = np.ones(all_sims.shape, bool)
            np.put_along_axis(dropped, keep, False, axis=1)
            best_dropped = np.where(dropped, all_sims, -np.inf).max(axis=1)
            self.bound = np.maximum(self.bound, best_dropped.astype(np.float32))
            all_sims = np.take_along_axis(all_sims, keep, 1)
            all_rows = np.take_along_axis(all_rows, keep, 1)
        order = np.lexsort((all_rows, -all_sims), axis=-1)
        self.sims = np.take_along_axis(all_sims, order, 1).astype(np.float32)
        self.rows = np.take_along_axis(all_rows, order, 1)

    def remap(self, new_rows: np.ndarray) -> None:
        """Renumber listed rows by ``new_rows[old row]`` (-1: removed; dropped from the lists)."""
        listed = self.rows >= 0
        mapped = np.where(listed, new_rows[np.where(listed, self.rows, 0)], -1)
        gone = listed & (mapped < 0)
        sims = np.where(gone, -np.inf, self.sims).astype(np.float32)
        order = np.lexsort((np.where(mapped < 0, np.iinfo(np.int64).max, mapped), -sims), axis=-1)
        self.rows = np.take_along_axis(mapped, order, 1)
        self.sims = np.take_along_axis(sims, order, 1)

    def known(self, k: int) -> np.ndarray:
        """Which queries still know their k-th exact similarity (list at least k rows)."""
        return (self.rows[:, min(k, self.depth) - 1] >= 0) if k <= self.depth else np.zeros(len(self.rows), bool)

    def recall(self, index: faiss.Index, k: int = 10, *, queries: np.ndarray | None = None) -> float:
        """Recall@k of ``index`` on the queries (those given by boolean mask/indices ``queries``, default all)
        that know their k-th similarity. A returned row counts when its exact similarity reaches the k-th
        exact one: a listed row by its listed similarity, an unlisted one (possible only among ties beyond
        the list) by the similarity the index returns, which is exact for flat and float16 storage."""
        chosen = np.arange(len(self.queries)) if queries is None else np.asarray(queries)
        if chosen.dtype == bool:
            chosen = np.flatnonzero(chosen)
        chosen = chosen[self.known(k)[chosen]]
        if len(chosen) == 0:
            raise ValueError(f"no query knows its {k}-th exact neighbour: compute the ground truth again")
        q = self.queries[chosen]
        approx_sims, approx_rows = index.search(q, k)
        kth = self.sims[chosen, k - 1]
        found = 0
        for i in range(len(chosen)):
            listed = dict(zip(self.rows[chosen[i]].tolist(), self.sims[chosen[i]].tolist()))
            for row, sim in zip(approx_rows[i].tolist(), approx_sims[i].tolist()):
                if row < 0:
                    continue
                exact = listed.get(row)
                if exact is None and self.bound[chosen[i]] >= kth[i] - TIE_EPS:
                    exact = sim
                if exact is not None and exact >= kth[i] - TIE_EPS:
                    found += 1
        return found / (k * len(chosen))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, queries=self.queries, rows=self.rows, sims=self.sims, bound=self.bound)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GroundTruth:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["queries"], z["rows"], z["sims"], z["bound"])
