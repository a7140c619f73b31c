"""Room for exactly the entries an IVF index is about to receive, so that adding never reallocates.

FAISS keeps each inverted list in a growing vector: appending past its capacity moves the list to a buffer
twice its size. A streamed build that adds 10 million vectors list by list ends with about 1.3-1.5x the
codes' bytes in memory, and an update that appends 1% to lists read back at their exact size doubles
nearly every list. Sizing each list before the adds keeps the index at its own size:

    assignment = index.quantizer.assign(vectors, 1).ravel()      # or from an earlier pass over the rows
    reserve_lists(index, np.bincount(assignment, minlength=nlist))
    add_assigned(index, vectors, assignment, ids)                 # no list grows past its room
"""

from __future__ import annotations

import faiss
import numpy as np


def reserve_lists(index: faiss.Index, extra: np.ndarray) -> None:
    """Give inverted list ``l`` of the IVF ``index`` room for exactly ``extra[l]`` more entries, keeping
    its entries (a list is copied out, reallocated from empty at its final size, and copied back)."""
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(invlists, faiss.ArrayInvertedLists):
        return  # other list types manage their own storage
    code_size = invlists.code_size
    for list_no in np.flatnonzero(np.asarray(extra) > 0).tolist():
        size = invlists.list_size(list_no)
        codes = ids = None
        if size:
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * code_size).copy()
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy()
        invlists.resize(list_no, 0)
        invlists.resize(list_no, size + int(extra[list_no]))  # grown from empty: exactly this size
        if size:
            invlists.update_entries(list_no, 0, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        invlists.resize(list_no, size)  # the size it had; the room stays


def assign(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """The inverted list of each vector (int64), as the IVF ``index`` assigns them when adding."""
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.assign(np.ascontiguousarray(vectors, dtype=np.float32), 1).ravel().astype(np.int64)


def add_assigned(index: faiss.Index, vectors: np.ndarray, lists: np.ndarray, ids: np.ndarray | None = None) -> None:
    """Add ``vectors`` to the IVF ``index`` into the given ``lists`` (from :func:`assign`), with ``ids``
    (default: the next row numbers). Every array is held here for the length of the call (faiss.contrib's
    ``add_preassigned`` drops its reference to ``ids`` before the call that reads them)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    a = np.ascontiguousarray(lists, dtype=np.int64)
    xids = None if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if a.shape != (len(x),) or (xids is not None and xids.shape != (len(x),)):
        raise ValueError(f"{len(x)} vectors need as many lists and ids, got {a.shape} and "
                         f"{None if xids is None else xids.shape}")
    ivf = faiss.extract_index_ivf(index)
    ivf.add_core(len(x), faiss.swig_ptr(x), None if xids is None else faiss.swig_ptr(xids), faiss.swig_ptr(a))
    del x, a, xids


__all__ = ["add_assigned", "assign", "reserve_lists"]
