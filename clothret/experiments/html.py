"""The experiment's self-contained HTML report: its tables, a plot of Acc@k against k per configuration
(inline SVG), and query -> top-10 thumbnails for the best and the worst configuration."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence

import fsspec

from clothret.report import REPORT_CSS, outcome_row, sample_outcomes

logger = logging.getLogger(__name__)

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#637939")
_CSS = REPORT_CSS + """
table.t { border-collapse: collapse; margin: 8px 0 20px 0; font-size: 13px; }
table.t th, table.t td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
table.t th:first-child, table.t td:first-child { text-align: left; }
table.t tr.best td { background: #e8f8e8; }
p.note { max-width: 60em; color: #333; }
"""


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return " + ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "defaults"
    return str(value)


def html_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], *, highlight: str | None = None) -> str:
    """A table of ``rows`` (dicts) with ``columns`` as (key, heading); the row(s) with the highest
    ``highlight`` value are shaded."""
    best = max((r.get(highlight, float("-inf")) for r in rows), default=None) if highlight else None
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = []
    for row in rows:
        cls = ' class="best"' if highlight and row.get(highlight) == best else ""
        cells = "".join(f"<td>{html.escape(_fmt(row.get(key)))}</td>" for key, _ in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table class="t"><tr>{head}</tr>{"".join(body)}</table>'


def svg_plot(curves: dict[str, Sequence[float]], ks: Sequence[int], *, width: int = 900, height: int = 400) -> str:
    """An inline SVG line plot of Acc@k (0..1) against k, one line per configuration, with a legend."""
    left, right, top, bottom = 50, 330, 15, 40
    pw, ph = width - left - right, height - top - bottom
    kmin, kmax = min(ks), max(ks)

    def x(k: float) -> float:
        return left + pw * (k - kmin) / max(1, kmax - kmin)

    def y(v: float) -> float:
        return top + ph * (1.0 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             'font-family="sans-serif">']
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for k in sorted({kmin, *[k for k in ks if k % 5 == 0], kmax}):
        parts.append(f'<line x1="{x(k):.1f}" y1="{top + ph}" x2="{x(k):.1f}" y2="{top + ph + 4}" stroke="#333"/>'
                     f'<text x="{x(k):.1f}" y="{top + ph + 16}" text-anchor="middle">{k}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">k</text>'
                 f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
                 'text-anchor="middle">Acc@k</text>')
    for i, (name, values) in enumerate(curves.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        dash = ' stroke-dasharray="5,3"' if i >= len(_PALETTE) else ""
        points = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in zip(ks, values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}>'
                     f"<title>{html.escape(name)}</title></polyline>")
        ly = top + 6 + 15 * i
        parts.append(f'<line x1="{left + pw + 12}" y1="{ly}" x2="{left + pw + 32}" y2="{ly}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/><text x="{left + pw + 38}" y="{ly + 4}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnails(title: str, run, picked: list[int], query_by_id: dict, gallery_by_id: dict, cache: dict) -> str:
    rows = [outcome_row(run.outcomes[i], query_by_id, gallery_by_id, cache) for i in picked]
    acc = f"Acc@1 {run.scores['acc@1']:.3f}, Acc@10 {run.scores['acc@10']:.3f}"
    return f"<h3>{html.escape(title)}: {html.escape(run.name)} ({acc})</h3>\n" + "\n".join(rows)


def write_experiment_report(url: str, summary: dict, data, retrieval, *, n_samples: int = 12, seed: int = 0) -> None:
    """Write the report of one experiment (``summary`` as in ``experiment.json``) to fsspec ``url``."""
    t = summary["tables"]
    d = summary["data"]
    cfg = summary["config"]
    acc_cols = [("acc@1", "Acc@1"), ("acc@10", "Acc@10"), ("acc@20", "Acc@20")]
    sections = [
        f"<p class=\"note\">Data: {d['train_images']} train images; validation {d['shop_images']} shop and "
        f"{d['street_images']} street images, {d['query_items']} query items (style &gt; 0). Size "
        f"<b>{html.escape(cfg['size'])}</b>, seed {cfg['seed']}, {cfg['threads']} threads. Acc@k follows the official "
        "DeepFashion2 scoring; detection-aware rows search the fused boxes of the street images in an exact index "
        "of the fused boxes of the shop images.</p>",
        "<h2>Detection (Tables 2 and 5)</h2>",
        "<p class=\"note\">COCO AP of each detector's raw boxes on every validation image, then of the weighted "
        "boxes fusion of the first n detectors (100 boxes per image).</p>",
        html_table(t["detection"], [("detector", "detector"), ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"),
                                    ("recall50", "item recall@IoU.5"), ("boxes_per_image", "boxes/image"),
                                    ("train_seconds", "train s"), ("infer_ms_per_image", "ms/image")], highlight="ap"),
        html_table([{**r, "detectors": [x.split("-")[0] for x in r["detectors"]]} for r in t["fusion"]],
                   [("detectors", "WBF of"), ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"),
                    ("recall50", "item recall@IoU.5"), ("boxes_per_image", "boxes/image"),
                    ("fusion_ms_per_image", "fusion ms/image")], highlight="ap"),
        f"<p class=\"note\">Boxes retrieval uses (fusion of all, {html.escape(str(cfg['fusion']['conf_type']))} scores, "
        f"at most {cfg['fusion']['max_boxes_per_image']} per image): item recall@IoU.5 "
        f"{t['retrieval_boxes']['recall50']:.3f}, {t['retrieval_boxes']['boxes_per_image']:.1f} boxes per image.</p>",
        "<h2>Embedders on ground-truth boxes (Table 3)</h2>",
        f"<p class=\"note\">Same data, seed and training steps for every configuration; {d['gt_queries']} street crops "
        f"against {d['gt_gallery']} shop crops; chance Acc@1 {d['gt_chance@1']:.3f}, Acc@10 {d['gt_chance@10']:.3f}.</p>",
        html_table(t["embedders_gt"], [("configuration", "configuration"), ("what", "what"), ("acc@1", "Acc@1"),
                                       ("acc@10", "Acc@10"), ("train_seconds", "train s")], highlight="acc@10"),
        "<h2>Detection-aware retrieval: one model against the concatenation (Table 6)</h2>",
        html_table(t["one_vs_concat"], [("configuration", "configuration"), *acc_cols, ("n_missed", "items missed"),
                                        ("ms_per_query", "ms/query box")], highlight="acc@10"),
        "<h2>Post-processing on A + B (Table 7)</h2>",
        html_table(t["postprocess"], [("option", "option"), *acc_cols, ("ms_per_query", "ms/query box")],
                   highlight="acc@10"),
        "<p class=\"note\">Box-count reduction before re-ranking: only the best-scoring boxes of each shop image "
        "stay in the gallery.</p>",
        html_table(t["box_count"], [("max_boxes_per_image", "boxes kept per shop image"),
                                    ("gallery_boxes", "gallery boxes"), ("rerank", "k-reciprocal"), *acc_cols,
                                    ("ms_per_query", "ms/query box")], highlight="acc@10"),
        "<h2>Acc@k against k</h2>",
        svg_plot(summary["curves"]["acc"], summary["curves"]["ks"]),
    ]
    runs = retrieval.runs
    best, worst = runs[summary["best"]], runs[summary["worst"]]
    n_shown = min(n_samples, len(best.outcomes))
    if n_shown:
        picked = sample_outcomes(len(best.outcomes), n_shown, seed)
        query_by_id = {r.image_id: r for r in data.validation if r.source == "user"}
        gallery_by_id = {r.image_id: r for r in data.validation if r.source == "shop"}
        cache: dict = {}
        sections.append(f"<h2>Query &rarr; top-10, the same {n_shown} query items under the best and the worst "
                        "configuration</h2><p class=\"note\">Blue: chosen detection; red: ground truth of a missed item; "
                        "orange: returned gallery box; green border: a hit.</p>")
        sections.append(_thumbnails("Best", best, picked, query_by_id, gallery_by_id, cache))
        sections.append(_thumbnails("Worst", worst, picked, query_by_id, gallery_by_id, cache))
    seconds = ", ".join(f"{k} {v} s" for k, v in summary["seconds"].items())
    sections.append(f"<p class=\"note\">Timings: {html.escape(seconds)}.</p>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>clothret experiment</title>"
        f"<style>{_CSS}</style></head>\n<body><h1>clothret experiment</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    with fsspec.open(url, "w", encoding="utf-8") as f:
        f.write(page)
    logger.info("wrote the experiment report to %s", url)


__all__ = ["html_table", "svg_plot", "write_experiment_report"]
