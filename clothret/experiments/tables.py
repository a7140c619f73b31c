"""The experiment's tables as rows and columns: one definition shared by the console output, the Prefect
table artifacts and the HTML report's column headings."""

from __future__ import annotations

from collections.abc import Sequence

ACC = (("acc@1", "Acc@1"), ("acc@10", "Acc@10"), ("acc@20", "Acc@20"))

TABLES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "detection": ("Detection AP per detector (Tables 2, 5)", (
        ("detector", "detector"), ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"), ("recall50", "recall@.5"),
        ("boxes_per_image", "boxes/img"), ("train_seconds", "train s"), ("infer_ms_per_image", "ms/img"))),
    "fusion": ("Weighted boxes fusion of the first n detectors (Tables 2, 5)", (
        ("detectors", "WBF of"), ("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"), ("recall50", "recall@.5"),
        ("boxes_per_image", "boxes/img"), ("fusion_ms_per_image", "fusion ms/img"))),
    "embedders_gt": ("Embedders on ground-truth boxes (Table 3)", (
        ("configuration", "configuration"), ("what", "what"), ("acc@1", "Acc@1"), ("acc@10", "Acc@10"),
        ("train_seconds", "train s"))),
    "one_vs_concat": ("Detection-aware: one model vs the concatenation (Table 6)", (
        ("configuration", "configuration"), *ACC, ("n_missed", "missed"), ("ms_per_query", "ms/query"))),
    "postprocess": ("Post-processing on A + B (Table 7)", (("option", "option"), *ACC, ("ms_per_query", "ms/query"))),
    "box_count": ("Gallery boxes per shop image, without and with k-reciprocal re-ranking (Table 7)", (
        ("max_boxes_per_image", "boxes/shop img"), ("gallery_boxes", "gallery"), ("rerank", "k-reciprocal"), *ACC,
        ("ms_per_query", "ms/query"))),
}
"""table key -> (title, columns as (row key, heading))."""


def cell(value) -> str:
    """One value as table text: 3 decimals for floats, lists joined with ``+``, nothing for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v).split("-")[0] for v in value)
    return str(value)


def table_rows(key: str, rows: Sequence[dict]) -> list[dict]:
    """A table's rows as ``{heading: text}`` (the form of a Prefect table artifact)."""
    _, columns = TABLES[key]
    return [{heading: cell(row.get(name)) for name, heading in columns} for row in rows]


def format_table(key: str, rows: Sequence[dict]) -> str:
    """A table as aligned plain text, with its title."""
    title, columns = TABLES[key]
    text = table_rows(key, rows)
    headings = [h for _, h in columns]
    widths = [max(len(h), *(len(r[h]) for r in text)) if text else len(h) for h in headings]
    left = [i == 0 or any(not _numeric(r[h]) for r in text) for i, h in enumerate(headings)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if lj else v.rjust(w) for v, w, lj in zip(values, widths, left)).rstrip()

    return "\n".join([title, line(headings), *(line([r[h] for h in headings]) for r in text)])


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def format_summary(summary: dict) -> str:
    """Every table of an experiment summary as plain text."""
    return "\n\n".join(format_table(key, summary["tables"][key]) for key in TABLES)


__all__ = ["TABLES", "cell", "format_summary", "format_table", "table_rows"]
