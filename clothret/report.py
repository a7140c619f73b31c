"""A self-contained HTML report of retrieval results: a sample of query items beside their top gallery hits.

Images are embedded as base64 JPEG thumbnails, so the file can be opened anywhere. Hits are decided by
:func:`clothret.evaluation.retrieval.item_outcomes`, the same code that computes Acc@k.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence

import fsspec
import numpy as np
from PIL import Image, ImageDraw

from clothret.datasets.records import Box, ImageRecord, category_name
from clothret.evaluation.retrieval import ItemOutcome, accuracy_from_outcomes, item_outcomes
from clothret.index.results import QueryResult

logger = logging.getLogger(__name__)

N_GALLERY_SHOWN = 10
QUERY_THUMB = 224
GALLERY_THUMB = 128
_DETECTION_COLOUR = (0, 120, 255)
_MISSED_COLOUR = (230, 30, 30)
_GALLERY_BOX_COLOUR = (255, 160, 0)

_CSS = """
body { font-family: sans-serif; margin: 1em; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
.row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; margin: 12px 0; padding-bottom: 12px;
       border-bottom: 1px solid #ddd; }
table.summary table { border-collapse: collapse; }
.cell { font-size: 11px; text-align: center; border: 4px solid #ddd; padding: 2px; }
.cell.hit { border-color: #1a9e1a; background: #e8f8e8; }
.cell.query { border-color: #888; }
.cell.missed { border-color: #e61e1e; }
.placeholder { width: 96px; height: 96px; background: #eee; line-height: 96px; }
"""


def _load_image(path: str, cache: dict[str, Image.Image | None]) -> Image.Image | None:
    """The RGB image at fsspec ``path`` (cached), or ``None`` when it cannot be read."""
    if path not in cache:
        try:
            with fsspec.open(path, "rb") as f:
                image = Image.open(f)
                image.load()
            cache[path] = image.convert("RGB")
        except (OSError, ValueError) as exc:
            logger.warning("cannot read image %s for the report: %s", path, exc)
            cache[path] = None
    return cache[path]


def _thumbnail(image: Image.Image, boxes: Sequence[tuple[Box, tuple[int, int, int]]], size: int) -> str:
    """``image`` with coloured boxes drawn, shrunk to ``size`` px, as a ``data:`` JPEG URI."""
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    width = max(2, round(max(drawn.size) / size * 2))
    for box, colour in boxes:
        draw.rectangle([float(v) for v in box], outline=colour, width=width)
    drawn.thumbnail((size, size))
    buf = io.BytesIO()
    drawn.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_or_placeholder(image: Image.Image | None, boxes, size: int, alt: str) -> str:
    if image is None:
        return f'<div class="placeholder">{html.escape(alt)}?</div>'
    return f'<img src="{_thumbnail(image, boxes, size)}" alt="{html.escape(alt, quote=True)}">'


def _format_value(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _summary_table(summary: dict) -> str:
    """A two-column table; a nested dict (e.g. timings per step) becomes a table in its cell."""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_summary_table(v) if isinstance(v, dict) else html.escape(_format_value(v))}</td></tr>"
        for k, v in summary.items()
    )
    return f'<table class="summary">{rows}</table>'


def _query_cell(outcome: ItemOutcome, record: ImageRecord, cache: dict) -> str:
    image = _load_image(record.path, cache)
    item = outcome.item
    if outcome.result is None:
        boxes = [(item.bbox, _MISSED_COLOUR)]
        status = "MISSED: no detection of this category"
        cls = "cell query missed"
    else:
        boxes = [(outcome.result.box, _DETECTION_COLOUR)]
        rank = outcome.first_hit_rank
        status = f"first hit at rank {rank + 1}" if rank is not None else "no hit in the returned list"
        status += f" · det score {outcome.result.score:.2f}"
        cls = "cell query"
    caption = (
        f"query {html.escape(outcome.query_image_id)} item {outcome.item_index + 1}<br>"
        f"{html.escape(category_name(item.category_id))} · pair {outcome.pair_id} style {item.style}<br>"
        f"{html.escape(status)}"
    )
    img = _img_or_placeholder(image, boxes, QUERY_THUMB, f"query {outcome.query_image_id}")
    return f'<div class="{cls}">{img}<br>{caption}</div>'


def _gallery_cells(outcome: ItemOutcome, gallery_by_id: dict[str, ImageRecord], cache: dict) -> str:
    result: QueryResult | None = outcome.result
    if result is None:
        return ""
    boxes = np.asarray(result.gallery_boxes, dtype=np.float64).reshape(-1, 4)
    sims = np.asarray(result.similarities, dtype=np.float64).reshape(-1)
    cells = []
    for rank, (image_id, box) in enumerate(zip(result.gallery_image_ids[:N_GALLERY_SHOWN], boxes)):
        hit = rank < len(outcome.hits) and outcome.hits[rank]
        record = gallery_by_id.get(image_id)
        image = _load_image(record.path, cache) if record is not None else None
        img = _img_or_placeholder(image, [(tuple(box), _GALLERY_BOX_COLOUR)], GALLERY_THUMB, f"gallery {image_id}")
        sim = f" · {sims[rank]:.3f}" if rank < len(sims) and np.isfinite(sims[rank]) else ""
        marker = " ✔ HIT" if hit else ""
        cls = "cell hit" if hit else "cell"
        cells.append(f'<div class="{cls}">{img}<br>#{rank + 1} {html.escape(image_id)}{sim}{marker}</div>')
    return "".join(cells)


def sample_outcomes(n_outcomes: int, n_shown: int, seed: int) -> list[int]:
    """Which outcomes a report shows: ``n_shown`` indices drawn with ``seed``, in order."""
    return [int(i) for i in np.sort(np.random.default_rng(seed).choice(n_outcomes, size=n_shown, replace=False))]


def outcome_row(
    outcome: ItemOutcome, query_by_id: dict[str, ImageRecord], gallery_by_id: dict[str, ImageRecord], cache: dict
) -> str:
    """One report row: the query item with its chosen detection beside its top-10 gallery boxes."""
    query_cell = _query_cell(outcome, query_by_id[outcome.query_image_id], cache)
    return f'<div class="row">{query_cell}{_gallery_cells(outcome, gallery_by_id, cache)}</div>'


REPORT_CSS = _CSS
"""The style sheet of the result rows, for other reports that show them."""


def write_report(
    url: str,
    query_records: Sequence[ImageRecord],
    gallery_records: Sequence[ImageRecord],
    results: Sequence[QueryResult],
    *,
    n_samples: int = 24,
    seed: int = 0,
    title: str = "clothret retrieval report",
    summary: dict | None = None,
) -> None:
    """Write one self-contained HTML report to fsspec ``url``.

    Shows ``n_samples`` query items (style > 0) drawn with ``seed``: the query image with its chosen detection
    (or its ground-truth box in red when missed) beside its top-10 gallery boxes, hits bordered in green.
    ``summary`` (e.g. the :func:`retrieval_accuracy` dict) heads the page; computed here when ``None``.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    outcomes = item_outcomes(query_records, gallery_records, results)
    if summary is None:
        summary = accuracy_from_outcomes(outcomes)
    query_by_id = {r.image_id: r for r in query_records}
    gallery_by_id = {r.image_id: r for r in gallery_records}

    n_shown = min(n_samples, len(outcomes))
    picked = sample_outcomes(len(outcomes), n_shown, seed)
    cache: dict[str, Image.Image | None] = {}
    rows = [outcome_row(outcomes[i], query_by_id, gallery_by_id, cache) for i in picked]

    page = (
        "<!DOCTYPE html>\n"
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>\n'
        f"<body><h1>{html.escape(title)}</h1>\n{_summary_table(summary)}\n"
        f"<p>{n_shown} of {len(outcomes)} query items shown (seed {seed}). Blue: chosen detection; red: "
        "ground truth of a missed item; orange: returned gallery box; green border: a hit (positive shop item, "
        "IoU &ge; 0.5).</p>\n" + "\n".join(rows) + "\n</body></html>\n"
    )
    with fsspec.open(url, "w", encoding="utf-8") as f:
        f.write(page)
    logger.info("wrote a report of %d query items to %s", n_shown, url)
