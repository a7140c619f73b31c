"""Train one detector from random init with the default configs on synthetic data and report its quality.

    python bench/detector_quality.py            # full: default splits (400 train pairs), default steps
    python bench/detector_quality.py --quick    # small data and few steps: a smoke run (~1 min)
    python bench/detector_quality.py --data /tmp/syn --set model.backbone=mobilenet_v3_small --set train.steps=600

Per-item recall: each detection is assigned to the ground-truth item of its image with the highest IoU
(IoU > 0); an item is recalled when the highest-scoring detection assigned to it has the item's category
and IoU >= 0.5. ``protocol`` recall is the DeepFashion2 retrieval protocol's looser form: the best-scoring
assigned detection *of the item's category* has IoU >= 0.5. AP, AP50 and AP75 are COCO-style (pycocotools,
:mod:`clothret.evaluation.detection_ap`). ``bench/detection.py`` compares three detector families and their
fusion. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# On a CPU shared with other jobs, OpenMP threads that spin while waiting slow training down ~2x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clothret.datasets.deepfashion2 import read_split  # noqa: E402
from clothret.datasets.records import ImageRecord  # noqa: E402
from clothret.datasets.synthetic import SyntheticSizes, generate_dataset  # noqa: E402
from clothret.detection.torchvision_backend import TorchvisionDetector, TorchvisionDetectorConfig  # noqa: E402
from clothret.detection.training import DetectorTrainConfig, load_image, train_detector  # noqa: E402
from clothret.detection.types import Detections  # noqa: E402
from clothret.evaluation.boxes import iou_matrix  # noqa: E402
from clothret.evaluation.detection_ap import detection_ap  # noqa: E402


def item_recall(records: list[ImageRecord], detections: list[Detections]) -> dict[str, dict[str, float]]:
    """Per source (shop/user): strict and protocol per-item recall at IoU 0.5 (see the module doc)."""
    counts: dict[str, list[int]] = {}
    for record, det in zip(records, detections):
        c = counts.setdefault(record.source, [0, 0, 0])
        gt = np.asarray([it.bbox for it in record.items], np.float64).reshape(-1, 4)
        c[0] += len(gt)
        if len(det) == 0 or len(gt) == 0:
            continue
        ious = iou_matrix(det.boxes, gt)
        best = ious.argmax(axis=1)
        for j, item in enumerate(record.items):
            assigned = np.nonzero((best == j) & (ious[np.arange(len(det)), best] > 0))[0]
            if len(assigned) == 0:
                continue
            top = assigned[np.argmax(det.scores[assigned])]
            c[1] += int(det.labels[top] == item.category_id and ious[top, j] >= 0.5)
            same = assigned[det.labels[assigned] == item.category_id]
            if len(same):
                c[2] += int(ious[same[np.argmax(det.scores[same])], j] >= 0.5)
    return {
        src: {"items": n, "recall": hit / n if n else 0.0, "protocol_recall": proto / n if n else 0.0}
        for src, (n, hit, proto) in sorted(counts.items())
    }


def top_confusions(records: list[ImageRecord], detections: list[Detections], n: int = 5) -> list[tuple[int, int, int]]:
    """The most frequent ``(true id, predicted id, count)`` where an item's best-scoring box at IoU >= 0.5 is wrong."""
    pairs: dict[tuple[int, int], int] = {}
    for record, det in zip(records, detections):
        if len(det) == 0 or not record.items:
            continue
        ious = iou_matrix(det.boxes, np.asarray([it.bbox for it in record.items], np.float64))
        for j, item in enumerate(record.items):
            good = np.nonzero(ious[:, j] >= 0.5)[0]
            if len(good):
                pred = int(det.labels[good[np.argmax(det.scores[good])]])
                if pred != item.category_id:
                    pairs[(item.category_id, pred)] = pairs.get((item.category_id, pred), 0) + 1
    return [(t, p, c) for (t, p), c in sorted(pairs.items(), key=lambda kv: -kv[1])[:n]]


def _parse_sets(pairs: list[str]) -> tuple[dict, dict]:
    model, train = {}, {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        scope, _, field = key.partition(".")
        if scope not in ("model", "train") or not field or not _:
            raise SystemExit(f"--set wants model.FIELD=VALUE or train.FIELD=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        (model if scope == "model" else train)[field] = parsed
    return model, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data set and few steps (a smoke run)")
    parser.add_argument("--data", help="an existing synthetic root with train/ and validation/ (else generated)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--set", action="append", default=[], help="override: model.FIELD=VALUE or train.FIELD=VALUE")
    parser.add_argument("--seed", type=int, default=0, help="data generation seed")
    parser.add_argument("--save", help="also copy the trained weights (and card) to this .safetensors path")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    model_over, train_over = _parse_sets(args.set)
    if args.quick:
        train_over.setdefault("steps", 60)

    with tempfile.TemporaryDirectory(prefix="detector-quality-") as tmp:
        t0 = time.perf_counter()
        if args.data:
            train_records = read_split(f"{args.data}/train")
            val_records = read_split(f"{args.data}/validation")
        else:
            splits = (
                {"train": SyntheticSizes(n_pairs=60, street_per_pair=3), "validation": SyntheticSizes(n_pairs=30, street_per_pair=2)}
                if args.quick
                else None
            )
            data = generate_dataset(f"{tmp}/data", seed=args.seed, splits=splits)
            train_records, val_records = data["train"], data["validation"]
        gen_s = time.perf_counter() - t0

        model_config = TorchvisionDetectorConfig(**model_over)
        train_config = DetectorTrainConfig(num_threads=args.threads, checkpoint_every=0, **train_over)
        weights = f"{tmp}/detector.safetensors"
        t0 = time.perf_counter()
        metrics = train_detector(
            train_records, model_config=model_config, train_config=train_config, weights_url=weights, progress=True
        )
        train_wall = time.perf_counter() - t0

        if args.save:
            import shutil

            shutil.copy(weights, args.save)
            shutil.copy(weights[: -len(".safetensors")] + ".json", args.save[: -len(".safetensors")] + ".json")
        detector = TorchvisionDetector.from_weights(weights, name="bench")
        images = [load_image(r.path) for r in val_records]
        detector.detect(images[:4])
        t0 = time.perf_counter()
        detections = detector.detect(images)
        infer_s = time.perf_counter() - t0

    recall = item_recall(val_records, detections)
    ap = detection_ap(val_records, detections)
    result = {
        "model_config": model_config.model_dump(mode="json"),
        "train_config": train_config.model_dump(mode="json"),
        "n_train_images": len(train_records),
        "n_val_images": len(val_records),
        "data_seconds": round(gen_s, 1),
        "train_seconds": metrics["seconds"],
        "train_wall_seconds": round(train_wall, 1),
        "train_images_per_s": metrics["images_per_s"],
        "steps": metrics["steps"],
        "final_loss": round(metrics["final_loss"], 4),
        "final_loss_parts": metrics.get("final_loss_parts"),
        "infer_images_per_s": round(len(images) / infer_s, 1),
        "recall_shop": round(recall.get("shop", {}).get("recall", 0.0), 4),
        "recall_user": round(recall.get("user", {}).get("recall", 0.0), 4),
        "protocol_recall_shop": round(recall.get("shop", {}).get("protocol_recall", 0.0), 4),
        "protocol_recall_user": round(recall.get("user", {}).get("protocol_recall", 0.0), 4),
        "ap": round(ap["ap"], 4),
        "ap50": round(ap["ap50"], 4),
        "ap75": round(ap["ap75"], 4),
        "mean_detections": round(float(np.mean([len(d) for d in detections])), 1),
        "top_confusions": top_confusions(val_records, detections),
    }
    print(f"{'source':<8}{'items':>7}{'recall':>9}{'protocol':>10}")
    for src, r in recall.items():
        print(f"{src:<8}{r['items']:>7}{r['recall']:>9.3f}{r['protocol_recall']:>10.3f}")
    print(
        f"train {result['train_seconds']:.1f} s ({result['train_wall_seconds']:.1f} s wall incl. decode), "
        f"{result['train_images_per_s']:.1f} img/s, {result['steps']} steps, final loss {result['final_loss']:.3f}; "
        f"inference {result['infer_images_per_s']:.1f} img/s; AP50 {result['ap50']:.3f}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
