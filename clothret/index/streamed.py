"""Build, check and update a large index without holding the gallery's features in memory.

    scan = scan_gallery(store_url, version, catalog.segments, deleted_image_ids=catalog.deleted)
    built = build_streamed(scan, config, workdir)              # or, from the serving build of the version:
    built = update_streamed(previous, scan, config, workdir)   # remove + add, when the kind allows

A full build samples its held-out queries and training vectors in one pass over the feature store,
trains, then adds the features segment by segment while computing the queries' exact neighbours
(:class:`~clothret.index.truth.GroundTruth`) from the same blocks. An update reuses the serving build's
trained IVF index: the rows of changed and deleted images are removed, the new rows added, the others
renumbered in place, and the ground truth is carried forward, so its cost follows the change, not the
catalogue. Both write the index to a local file, read it back memory-mapped and check that it answers
like the one built (the serialized-bytes check of small builds, without a second copy in memory).

A build keeps beside ``index.faiss`` and ``idmap.npz``: ``rows.npz`` (each row's segment and box number,
which lets the next update find its rows) and ``validation.npz`` (the ground truth).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from clothret.errors import PublishRefused
from clothret.index.build import ADD_BLOCK, new_index, search_breadth, set_search_breadth
from clothret.index.choose import plan_index
from clothret.index.config import IndexConfig
from clothret.index.gallery import Gallery
from clothret.index.scan import GalleryScan, gather_rows, iter_feature_blocks
from clothret.index.reserve import add_assigned, assign, reserve_lists
from clothret.index.search import read_index_file
from clothret.index.truth import GroundTruth
from clothret.index.validate import MAX_EF_SEARCH, check_recall

logger = logging.getLogger(__name__)

INDEX_FILE, IDMAP_FILE, ROWS_FILE, TRUTH_FILE = "index.faiss", "idmap.npz", "rows.npz", "validation.npz"
UPDATABLE_KINDS = ("ivf_flat", "ivf_sq", "ivf_pq")
TUNE_MARGIN = 0.01  # the tuner aims this far above min_recall, so held-out validation clears it too
MIN_KNOWN_QUERIES = 0.9  # an update recomputes the ground truth when fewer queries still know theirs


@dataclass
class StreamedBuild:
    """A checked index in ``folder`` (``index.faiss``, ``idmap.npz``, ``rows.npz``, ``validation.npz``), the
    index read back memory-mapped, its id map and its manifest figures."""

    folder: Path
    index: faiss.Index
    gallery: Gallery
    figures: dict
    seconds: dict = field(default_factory=dict)

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.folder / name for name in (INDEX_FILE, IDMAP_FILE, ROWS_FILE, TRUTH_FILE)}


@dataclass(frozen=True)
class PreviousBuild:
    """A published build to update: its local index file, manifest, rows and ground truth."""

    index_path: Path
    manifest: dict
    row_segment: np.ndarray
    row_box: np.ndarray
    truth: GroundTruth


def _held_out(n: int, config: IndexConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint rows, as :func:`~clothret.index.validate.split_rows`: up to ``recall_sample``
    validation queries, half as many tuning queries (each exact neighbour costs a pass over the whole
    gallery), then up to ``train_sample`` training vectors among the others."""
    perm = np.random.default_rng(config.seed).permutation(n)
    n_q = min(config.recall_sample, max(1, n // 4))
    n_tune = max(1, n_q // 2)
    train = perm[n_q + n_tune : n_q + n_tune + config.train_sample]
    return perm[:n_q], perm[n_q : n_q + n_tune], np.sort(train)


def _tune(index: faiss.Index, truth: GroundTruth, tune: np.ndarray, min_recall: float) -> float | None:
    """The smallest ``nprobe``/``efSearch`` whose recall@10 on the tuning queries reaches ``min_recall`` plus
    ``TUNE_MARGIN`` (doubling from 1, then bisecting), so that search scans no more than it needs; the
    widest breadth when none does. Returns the recall at the breadth kept."""
    breadth = search_breadth(index)
    if breadth is None:
        return None
    ivf = faiss.try_extract_index_ivf(index)
    most = int(ivf.nlist) if ivf is not None else MAX_EF_SEARCH
    target = min(1.0, min_recall + TUNE_MARGIN)

    def recall_at(value: int) -> float:
        set_search_breadth(index, value)
        return truth.recall(index, 10, queries=tune)

    low, high, recall = 0, 1, recall_at(1)  # low fails (0: nothing tried), high is being tried
    while recall < target and high < most:
        low, high = high, min(most, high * 2)
        recall = recall_at(high)
    best = (high, recall)
    while recall >= target and high - low > max(1, high // 16):  # bisect to within ~6%
        mid = (low + high) // 2
        mid_recall = recall_at(mid)
        if mid_recall >= target:
            high, best = mid, (mid, mid_recall)
        else:
            low = mid
    set_search_breadth(index, best[0])
    logger.info("search breadth %d gives recall@10 %.4f on %d tuning queries", best[0], best[1], len(tune))
    return best[1]


def _write_and_check(index: faiss.Index, folder: Path, queries: np.ndarray) -> tuple[faiss.Index, int]:
    """Write the index file, read it back memory-mapped, refuse it unless it answers ``queries`` exactly
    as the built index does; returns the mapped index and the file's size."""
    path = folder / INDEX_FILE
    faiss.write_index(index, str(path))
    mapped, _ = read_index_file(path, mmap=True)
    breadth = search_breadth(index)
    if breadth is not None:
        set_search_breadth(mapped, breadth)
    sims, rows = index.search(queries, 10)
    sims2, rows2 = mapped.search(queries, 10)
    if not (np.array_equal(rows, rows2) and np.array_equal(sims, sims2)):
        differ = int(np.sum(np.any(rows != rows2, axis=1)))
        raise PublishRefused(
            f"publish refused: the {type(index).__name__} read back from {path} answers {differ} of {len(queries)} "
            f"queries differently from the built one"
        )
    return mapped, path.stat().st_size


def _save_rows(folder: Path, scan: GalleryScan, truth: GroundTruth) -> None:
    with open(folder / IDMAP_FILE, "wb") as f:
        scan.id_map.write_id_map(f)
    np.savez(folder / ROWS_FILE, segments=np.asarray(scan.segment_ids, dtype=str), row_segment=scan.row_segment,
             row_box=scan.row_box)
    (folder / TRUTH_FILE).write_bytes(truth.to_bytes())


def _figures(index: faiss.Index, kind: str, recall: float, config: IndexConfig, n_queries: int, index_bytes: int,
             extra: dict) -> dict:
    figures = {
        "index_kind": kind, "recall_at_10": float(recall), "min_recall": config.min_recall,
        "recall_queries": n_queries, "reload_identical": True, "n_vectors": int(index.ntotal), "dim": int(index.d),
        "index_bytes": int(index_bytes), "streamed": True, **extra,
    }
    breadth = search_breadth(index)
    if breadth is not None:
        figures["nprobe" if kind.startswith("ivf") else "ef_search"] = breadth
    return figures


def _add_blocks(index: faiss.Index, block: np.ndarray, ids: np.ndarray | None = None,
                lists: np.ndarray | None = None) -> None:
    """Add ``block`` (with ``ids``, else the next row numbers); ``lists``: each vector's inverted list,
    already computed (the lists were sized for them with :func:`~clothret.index.reserve.reserve_lists`)."""
    for start in range(0, len(block), ADD_BLOCK):
        part = block[start : start + ADD_BLOCK]
        part_ids = None if ids is None else np.ascontiguousarray(ids[start : start + ADD_BLOCK], dtype=np.int64)
        if lists is not None:
            add_assigned(index, part, lists[start : start + ADD_BLOCK], part_ids)
        elif part_ids is None:
            index.add(part)
        else:
            index.add_with_ids(part, part_ids)


def _preassignable(index: faiss.Index) -> bool:
    """Whether ``index`` is itself an IVF index whose lists can be sized before adding."""
    return isinstance(index, faiss.IndexIVF) and isinstance(
        faiss.downcast_InvertedLists(index.invlists), faiss.ArrayInvertedLists
    )


def build_streamed(scan: GalleryScan, config: IndexConfig, folder: Path) -> StreamedBuild:
    """Build, tune and check a new index over the scanned gallery, its files written into ``folder``.

    Raises :class:`~clothret.errors.PublishRefused` when recall@10 on the held-out queries is below
    ``config.min_recall`` or the index read back from its file answers differently.
    """
    n, dim = len(scan), scan.dim
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    validate, tune, train = _held_out(n, config)
    picked = gather_rows(scan, np.concatenate([validate, tune, train]))
    n_queries = len(validate) + len(tune)
    queries, train_vectors = picked[:n_queries], picked[n_queries:]
    seconds["sample"] = time.perf_counter() - t0
    plan = plan_index(n, dim, config, n_train=len(train))
    t1 = time.perf_counter()
    index = new_index(plan)
    if not index.is_trained:
        index.train(train_vectors)
    del picked, train_vectors
    seconds["train"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    truth, exact = GroundTruth.empty(queries), 0.0
    # IVF: a first pass assigns every row to its list (and computes the exact neighbours), the lists are
    # sized exactly, a second pass adds; other kinds add in the one pass
    lists = np.empty(n, np.int64) if _preassignable(index) else None
    for first_row, block in iter_feature_blocks(scan):
        block32 = block.astype(np.float32)
        if lists is not None:
            lists[first_row : first_row + len(block)] = assign(index, block32)
        else:
            _add_blocks(index, block32)
        t = time.perf_counter()
        truth.update(block32, first_row)
        exact += time.perf_counter() - t
    if lists is not None:
        reserve_lists(index, np.bincount(lists, minlength=index.nlist))
        for first_row, block in iter_feature_blocks(scan):
            _add_blocks(index, block.astype(np.float32), lists=lists[first_row : first_row + len(block)])
        del lists
    seconds["add"] = time.perf_counter() - t2 - exact  # reading the features included
    seconds["exact_neighbours"] = exact
    build_seconds = seconds["train"] + seconds["add"]
    if plan.nprobe is not None:
        set_search_breadth(index, plan.nprobe)
    if plan.ef_search is not None:
        set_search_breadth(index, plan.ef_search)
    t3 = time.perf_counter()
    val_q, tune_q = np.arange(len(validate)), np.arange(len(validate), n_queries)
    tune_recall = _tune(index, truth, tune_q, config.min_recall) if plan.tune_breadth else None
    recall = truth.recall(index, 10, queries=val_q)
    check_recall(recall, config.min_recall, kind=plan.kind, n_queries=len(val_q))
    seconds["tune_and_check"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    mapped, index_bytes = _write_and_check(index, folder, queries[val_q])
    _save_rows(folder, scan, truth)
    seconds["write_and_reload"] = time.perf_counter() - t4
    extra = {name: getattr(plan, name) for name in ("nlist", "pq_m", "hnsw_m", "ef_construction", "quantizer")
             if getattr(plan, name) is not None}
    extra.update({
        "n_train": plan.n_train if plan.kind.startswith("ivf") else 0, "build_seconds": round(build_seconds, 3),
        "trained_rows": int(n), "rows_added_since_training": 0, "updated_from": None,
    })
    if tune_recall is not None:
        extra["tune_recall_at_10"] = float(tune_recall)
    figures = _figures(index, plan.kind, recall, config, len(val_q), index_bytes, extra)
    figures["stage_seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    logger.info("streamed index validated: %s", figures)
    return StreamedBuild(folder, mapped, scan.id_map, figures, seconds)


# ------------------------------------------------------------------------------------------------ updates


def read_previous(folder_files: dict[str, bytes | Path], manifest: dict) -> PreviousBuild:
    """A :class:`PreviousBuild` from a build's local index file and its rows / validation bytes."""
    with np.load(_as_file(folder_files[ROWS_FILE]), allow_pickle=False) as z:
        segments = [str(s) for s in z["segments"]]
        row_segment, row_box = z["row_segment"], z["row_box"]
    if segments != list(manifest.get("segments", segments)):
        raise ValueError(f"build {manifest.get('build_id')}: {ROWS_FILE} names other segments than its manifest")
    truth = GroundTruth.from_bytes(_as_bytes(folder_files[TRUTH_FILE]))
    return PreviousBuild(Path(folder_files[INDEX_FILE]), {**manifest, "segments": segments}, row_segment, row_box, truth)


def _as_file(value):
    import io

    return io.BytesIO(value) if isinstance(value, bytes) else value


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def row_remap(previous: PreviousBuild, scan: GalleryScan) -> tuple[np.ndarray, np.ndarray]:
    """``(new row of each previous row or -1, rows of the scan the previous build lacks)``."""
    position = {seg_id: i for i, seg_id in enumerate(scan.segment_ids)}
    n_old = len(previous.row_segment)
    new_of_old = np.full(n_old, -1, np.int64)
    covered = np.zeros(len(scan), bool)
    bounds = np.flatnonzero(np.diff(previous.row_segment)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, n_old]
    for start, end in zip(starts, ends):
        if start == end:
            continue
        seg_id = previous.manifest["segments"][int(previous.row_segment[start])]
        q = position.get(seg_id)
        if q is None:
            continue
        segment = scan.segments[q]
        rank = np.cumsum(segment.keep) - 1
        boxes = previous.row_box[start:end]
        live = segment.keep[boxes]
        rows = np.where(live, segment.first_row + rank[boxes], -1)
        new_of_old[start:end] = rows
        covered[rows[live]] = True
    return new_of_old, np.flatnonzero(~covered)


def _renumber(index: faiss.Index, new_of_old: np.ndarray) -> None:
    """Replace every stored id of an IVF index by ``new_of_old[id]`` (no id may map to -1)."""
    invlists = faiss.extract_index_ivf(index).invlists
    for list_no in range(invlists.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
        ids[:] = new_of_old[ids]


def updatable(previous_manifest: dict, config: IndexConfig, n_changed: int) -> str | None:
    """Why a build cannot be updated in place (``None``: it can)."""
    kind = previous_manifest.get("index_kind")
    if kind not in UPDATABLE_KINDS:
        return f"its kind {kind!r} is not one of {', '.join(UPDATABLE_KINDS)}"
    if not previous_manifest.get("streamed"):
        return "it was not built streamed (no rows.npz / validation.npz)"
    wanted = config.model_dump(mode="json")
    if previous_manifest.get("index_config") not in (None, wanted):
        return "the index settings changed since it was built"
    trained = int(previous_manifest.get("trained_rows") or 0)
    since = int(previous_manifest.get("rows_added_since_training") or 0) + n_changed
    if since > config.update_fraction * trained:
        return f"{since} rows were added since it was trained on {trained} (update_fraction {config.update_fraction})"
    return None


def update_streamed(previous: PreviousBuild, scan: GalleryScan, config: IndexConfig, folder: Path) -> StreamedBuild:
    """A new build from ``previous`` (an IVF build of the same model version): rows no longer live are
    removed, new rows added, the rest renumbered; the ground truth is carried forward and recall checked.

    Raises :class:`~clothret.errors.PublishRefused` like :func:`build_streamed`.
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    new_of_old, added = row_remap(previous, scan)
    removed = np.flatnonzero(new_of_old < 0)
    index = faiss.read_index(str(previous.index_path))
    breadth = search_breadth(index)
    seconds["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if len(removed):
        index.remove_ids(faiss.IDSelectorBatch(removed.astype(np.int64)))
    _renumber(index, new_of_old)
    seconds["remove_and_renumber"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    truth = previous.truth
    truth.remap(new_of_old)
    added_set = np.zeros(len(scan), bool)
    added_set[added] = True
    new_rows, new_vectors = [], []
    for first_row, block in iter_feature_blocks(_only_segments_with(scan, added_set)):
        rows = np.arange(first_row, first_row + len(block))
        mine = added_set[rows]
        if not mine.any():
            continue
        vectors = block[mine].astype(np.float32)
        truth.update(vectors, rows[mine])
        new_rows.append(rows[mine].astype(np.int64))
        new_vectors.append(block[mine])  # float16 until added: the changed rows only
    if new_rows:
        rows, vectors = np.concatenate(new_rows), np.concatenate(new_vectors).astype(np.float32)
        del new_rows, new_vectors
        lists = assign(index, vectors) if _preassignable(index) else None
        if lists is not None:  # lists read back at their exact size would each double on the first append
            reserve_lists(index, np.bincount(lists, minlength=index.nlist))
        _add_blocks(index, vectors, rows, lists=lists)
        del vectors
    seconds["add"] = time.perf_counter() - t2
    if index.ntotal != len(scan):
        raise ValueError(f"update left {index.ntotal} vectors for a gallery of {len(scan)} rows")
    n_q = int(previous.manifest.get("recall_queries") or len(truth.queries))
    val_q, tune_q = np.arange(n_q), np.arange(n_q, len(truth.queries))
    if truth.known(10)[val_q].mean() < MIN_KNOWN_QUERIES:
        t = time.perf_counter()
        truth = GroundTruth.empty(truth.queries)
        for first_row, block in iter_feature_blocks(scan):
            truth.update(block.astype(np.float32), first_row)
        seconds["ground_truth_again"] = time.perf_counter() - t
    t3 = time.perf_counter()
    if breadth is not None:
        set_search_breadth(index, breadth)
    recall = truth.recall(index, 10, queries=val_q)
    tune_recall = None
    if recall < config.min_recall and config.nprobe is None:
        tune_recall = _tune(index, truth, tune_q, config.min_recall)
        recall = truth.recall(index, 10, queries=val_q)
    check_recall(recall, config.min_recall, kind=previous.manifest["index_kind"], n_queries=len(val_q))
    seconds["check"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    mapped, index_bytes = _write_and_check(index, folder, truth.queries[val_q])
    _save_rows(folder, scan, truth)
    seconds["write_and_reload"] = time.perf_counter() - t4
    keep = ("nlist", "pq_m", "quantizer", "n_train", "trained_rows")
    extra = {k: previous.manifest[k] for k in keep if k in previous.manifest}
    extra.update({
        "build_seconds": round(seconds["remove_and_renumber"] + seconds["add"], 3),
        "rows_added_since_training": int(previous.manifest.get("rows_added_since_training") or 0) + len(added),
        "updated_from": previous.manifest.get("build_id"), "rows_removed": int(len(removed)),
        "rows_added": int(len(added)),
    })
    if tune_recall is not None:
        extra["tune_recall_at_10"] = float(tune_recall)
    figures = _figures(index, previous.manifest["index_kind"], recall, config, len(val_q), index_bytes, extra)
    figures["stage_seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    logger.info("index updated from build %s: %d rows removed, %d added, recall@10 %.4f",
                previous.manifest.get("build_id"), len(removed), len(added), recall)
    return StreamedBuild(folder, mapped, scan.id_map, figures, seconds)


def _only_segments_with(scan: GalleryScan, rows: np.ndarray) -> GalleryScan:
    """The scan restricted (for reading) to the segments that hold any of the marked rows."""
    import dataclasses

    chosen = [s for s in scan.segments if s.n_rows and rows[s.first_row : s.first_row + s.n_rows].any()]
    return dataclasses.replace(scan, segments=chosen)


# ------------------------------------------------------------------------------------------------ for a catalog


def _previous_build(index_root: str, version: str, cache_dir: Path | None) -> PreviousBuild | None:
    """The serving build of ``index_root`` when it is a streamed build of model ``version``."""
    from clothret.index.publish import build_url, current_build, read_build_manifest
    from clothret.index.search import local_index_file
    from clothret.store.files import read_bytes_or_none

    build_id = current_build(index_root)
    if build_id is None:
        return None
    manifest = read_build_manifest(index_root, build_id)
    if manifest.get("model_version") != version or not manifest.get("streamed"):
        return None
    base = build_url(index_root, build_id)
    rows, truth = read_bytes_or_none(f"{base}/{ROWS_FILE}"), read_bytes_or_none(f"{base}/{TRUTH_FILE}")
    if rows is None or truth is None:
        return None
    path = local_index_file(f"{base}/{INDEX_FILE}", build_id, manifest, cache_dir)
    return read_previous({INDEX_FILE: path, ROWS_FILE: rows, TRUTH_FILE: truth}, manifest)


def build_for_catalog(
    store_url: str, version: str, segment_ids, deleted_image_ids, config: IndexConfig, index_root: str, *,
    in_memory: bool = False, cache_dir: Path | None = None,
) -> StreamedBuild | None:
    """A streamed build over a catalog's live boxes, or ``None`` when the gallery is small (below
    ``config.stream_above`` boxes) or ``in_memory`` asks for the in-memory build (whitening and
    database-side augmentation need every vector at once).

    It updates the serving build of the same model version in place when :func:`updatable` allows, and
    builds a new index otherwise. Its files live in a folder from
    :func:`~clothret.index.publish.build_folder`, removed when the build object is dropped.
    """
    import weakref

    from clothret.index.publish import build_folder
    from clothret.index.scan import scan_gallery

    if in_memory:
        return None
    scan = scan_gallery(store_url, version, segment_ids, deleted_image_ids=deleted_image_ids)
    if len(scan) < config.stream_above:
        return None
    folder_cm = build_folder(index_root)
    folder = folder_cm.__enter__()
    try:
        previous = _previous_build(index_root, version, cache_dir)
        built = None
        if previous is not None:
            new_of_old, added = row_remap(previous, scan)
            reason = updatable(previous.manifest, config, len(added))
            if reason is None:
                built = update_streamed(previous, scan, config, folder)
            else:
                logger.info("building a new index instead of updating build %s: %s",
                            previous.manifest.get("build_id"), reason)
        if built is None:
            built = build_streamed(scan, config, folder)
        built.figures["index_config"] = config.model_dump(mode="json")
        built.figures.update(n_images=scan.n_images, n_items=scan.n_items)
    except BaseException:
        folder_cm.__exit__(None, None, None)
        raise
    weakref.finalize(built, folder_cm.__exit__, None, None, None)
    release_freed_memory()
    return built


def release_freed_memory() -> None:
    """Hand the memory a build freed back to the operating system (glibc keeps freed heap pages of its
    arenas otherwise: gigabytes after a large build, held by a flow process that goes on running)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trimmed = ctypes.CDLL(name).malloc_trim(0) if name else 0
    except (OSError, AttributeError):  # not glibc
        return
    logger.debug("malloc_trim released memory: %s", bool(trimmed))
