"""Artifacts a run shows in the Prefect UI: progress while it runs, then counts and a summary."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def start_progress(total: int, what: str) -> UUID:
    return create_progress_artifact(progress=0.0 if total else 100.0, description=f"{what}: 0/{total} segments")


def update_progress(artifact_id: UUID, done: int, total: int, what: str) -> None:
    update_progress_artifact(
        artifact_id, progress=100.0 * done / max(total, 1), description=f"{what}: {done}/{total} segments"
    )


def publish_run_artifacts(key: str, counts: dict, manifest: dict | None) -> None:
    """A table of the run's counts and a markdown summary with the build's validation figures."""
    rows = [{"figure": k, "value": str(v)} for k, v in counts.items()]
    create_table_artifact(key=f"{key}-counts", table=rows, description="images, boxes, failures, segments")
    if manifest is None:
        return
    figures = [
        ("build", manifest.get("build_id")),
        ("serving", "yes" if manifest.get("active") else "no (promote to serve it)"),
        ("model version", manifest.get("model_version")),
        ("images / items / boxes", f"{manifest.get('n_images')} / {manifest.get('n_items')} / {manifest.get('n_boxes')}"),
        ("index", manifest.get("index_kind")),
        ("recall@10 vs exact", _fmt(manifest.get("recall_at_10"))),
        ("reload identical", manifest.get("reload_identical")),
        ("Acc@1 / Acc@10", f"{_fmt(manifest.get('acc@1'))} / {_fmt(manifest.get('acc@10'))}"),
        ("serving build's Acc@10", _fmt(manifest.get("serving_acc@10"))),
    ]
    lines = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in figures if value is not None)]
    create_markdown_artifact(key=f"{key}-summary", markdown="\n".join(lines), description="index build")


def _fmt(value: object) -> str | None:
    return f"{value:.4f}" if isinstance(value, float) else None if value is None else str(value)
