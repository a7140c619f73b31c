"""Detection AP of three detector families and of their weighted boxes fusion, on synthetic data.

Synthesizes a street-to-shop data set in the DeepFashion2 layout, trains FCOS, RetinaNet and Faster R-CNN
from random init with the project's own training code, then scores on the validation split (street and
shop images, every item a target) with COCO-style AP, AP50 and AP75 (pycocotools):

- each detector alone (its raw boxes);
- weighted boxes fusion (ensemble-boxes) of the first 1..n detectors, with boxes per image and fusion
  time per image (fusion only: the detectors' outputs are computed once);
- the fused-score rule (``conf_type``) for the fusion of all n;
- the box cap and minimum box size of the fusion (the paper's knobs for the gallery's box count) against
  AP50 and item recall (an item is found when a fused box of its category overlaps it by IoU >= 0.5).

    python bench/detection.py            # DEMO_DETECTOR-sized training on the default splits (~20 min, 2 cores)
    python bench/detection.py --quick    # small split, 200 steps per detector (~3-4 min on 2 cores)
    python bench/detection.py --quick --out /tmp/det   # keep the weights; a re-run with the same settings reuses them

The last line printed is one JSON object:
``{"detectors": {name: {"ap", "ap50", "ap75", ...}}, "wbf": [{"n": 1, "ap", "ap50", "ap75", ...}, ...], "conf_type": [...],
"cap": [...], ...}``.
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

# On a CPU shared with other jobs, OpenMP threads that spin while waiting slow torch down several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clothret.datasets.synthetic import DEFAULT_SPLITS, SyntheticSizes, generate_dataset  # noqa: E402
from clothret.demo import DEMO_DETECTOR  # noqa: E402
from clothret.detection.fusion import CONF_TYPES, FusionConfig  # noqa: E402
from clothret.detection.torchvision_backend import TorchvisionDetector  # noqa: E402
from clothret.detection.training import DetectorTrainConfig, load_image  # noqa: E402
from clothret.detection.types import Detections  # noqa: E402
from clothret.experiments.detectors import (  # noqa: E402
    ARCHITECTURES,
    detection_scores,
    model_config,
    timed_fusion,
    train_or_reuse,
)

QUICK_SPLITS = {"train": SyntheticSizes(n_pairs=30, street_per_pair=2), "validation": SyntheticSizes(n_pairs=40, street_per_pair=2)}
QUICK_MODEL = {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 96, "max_size": 160}
QUICK_TRAIN = {"steps": 200, "batch_size": 8, "warmup_steps": 20}
FULL_MODEL = dict(DEMO_DETECTOR["model"])
FULL_TRAIN = {k: v for k, v in DEMO_DETECTOR.items() if k != "model"}
CAPS = ((100, 1.0), (20, 1.0), (10, 1.0), (5, 1.0), (3, 1.0), (1, 1.0), (100, 32.0), (100, 64.0))
"""(max_boxes_per_image, min_box_size px) settings of the box-count table."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small split and 200 steps per detector (~3-4 min)")
    parser.add_argument("--seed", type=int, default=0, help="data set and training seed")
    parser.add_argument("--steps", type=int, help="training steps per detector (default: 200 quick, DEMO_DETECTOR's otherwise)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES), help="comma-separated, in fusion order")
    parser.add_argument("--wbf-weights", help="comma-separated WBF weight per detector (default: all 1)")
    parser.add_argument("--iou-thr", type=float, default=0.55, help="WBF IoU threshold")
    parser.add_argument("--conf-type", default="avg", choices=CONF_TYPES, help="WBF fused-score rule")
    parser.add_argument("--score-prefilter", type=float, default=0.05, help="drop boxes below this score before fusion")
    parser.add_argument("--out", help="keep data and weights here (reused when the settings match) instead of a temp dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    names = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown or not names:
        parser.error(f"--architectures: unknown {unknown}; valid: {list(ARCHITECTURES)}")
    weights = [float(w) for w in args.wbf_weights.split(",")] if args.wbf_weights else [1.0] * len(names)
    if len(weights) != len(names):
        parser.error(f"--wbf-weights has {len(weights)} values for {len(names)} detectors")
    base_model = QUICK_MODEL if args.quick else FULL_MODEL
    train_kw = dict(QUICK_TRAIN if args.quick else FULL_TRAIN)
    if args.steps:
        train_kw["steps"] = args.steps
    train_config = DetectorTrainConfig(**train_kw, seed=args.seed, num_threads=args.threads, checkpoint_every=0, device="auto")
    splits = QUICK_SPLITS if args.quick else DEFAULT_SPLITS

    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
        root = Path(args.out or tmp)
        t0 = time.perf_counter()
        data = generate_dataset(str(root / "data"), seed=args.seed, splits=splits)
        train_records, val = data["train"], data["validation"]
        print(f"data: {len(train_records)} train / {len(val)} validation images "
              f"({sum(len(r.items) for r in val)} items) in {time.perf_counter() - t0:.1f} s", flush=True)
        images = [load_image(r.path) for r in val]
        sizes = [(img.shape[1], img.shape[0]) for img in images]

        detectors: dict[str, dict] = {}
        outputs: list[list[Detections]] = []
        labels: list[str] = []
        for arch in names:
            model = model_config(arch, base_model)
            label = f"{arch}-{model.backbone}"
            url = str(root / f"{arch}.safetensors")
            train_s = train_or_reuse(train_records, model, train_config, url)
            detector = TorchvisionDetector.from_weights(url, name=label)
            t0 = time.perf_counter()
            dets = detector.detect(images)
            infer_ms = 1000.0 * (time.perf_counter() - t0) / len(images)
            outputs.append(dets)
            labels.append(label)
            detectors[label] = {**detection_scores(val, dets), "train_seconds": round(train_s, 1), "infer_ms_per_image": round(infer_ms, 1)}

    fusion = FusionConfig(
        iou_thr=args.iou_thr, conf_type=args.conf_type, score_prefilter=args.score_prefilter,
        max_boxes_per_image=100, min_box_size=1.0,
    )
    wbf = []
    for n in range(1, len(outputs) + 1):
        fused, ms = timed_fusion(outputs[:n], sizes, weights[:n], fusion)
        wbf.append({"n": n, "detectors": labels[:n], **detection_scores(val, fused), "fusion_ms_per_image": round(ms, 3)})
    conf = []
    for conf_type in CONF_TYPES:
        fused, ms = timed_fusion(outputs, sizes, weights, fusion.model_copy(update={"conf_type": conf_type}))
        conf.append({"conf_type": conf_type, **detection_scores(val, fused), "fusion_ms_per_image": round(ms, 3)})
    cap = []
    for max_boxes, min_size in CAPS:
        cfg = fusion.model_copy(update={"max_boxes_per_image": max_boxes, "min_box_size": min_size})
        fused, ms = timed_fusion(outputs, sizes, weights, cfg)
        cap.append({"max_boxes_per_image": max_boxes, "min_box_size": min_size, **detection_scores(val, fused),
                    "fusion_ms_per_image": round(ms, 3)})

    print()
    print(f"validation: {len(val)} images, {sum(len(r.items) for r in val)} items; train: {train_config.steps} steps "
          f"x {train_config.batch_size} images per detector, {base_model}")
    head = f"{'':<34}{'AP':>7}{'AP50':>7}{'AP75':>7}{'recall50':>10}{'boxes/img':>11}"
    print(head + f"{'train s':>9}{'infer ms/img':>14}")
    for label, row in detectors.items():
        print(f"{label:<34}{row['ap']:>7.3f}{row['ap50']:>7.3f}{row['ap75']:>7.3f}{row['recall50']:>10.3f}"
              f"{row['boxes_per_image']:>11.1f}{row['train_seconds']:>9.0f}{row['infer_ms_per_image']:>14.1f}")
    print(f"\nWBF of the first n (iou_thr {fusion.iou_thr}, conf_type {fusion.conf_type}, weights {weights}, "
          f"score pre-filter {fusion.score_prefilter})")
    print(head + f"{'fusion ms/img':>15}")
    for row in wbf:
        print(f"{'n=' + str(row['n']) + ' ' + '+'.join(a.split('-')[0] for a in row['detectors']):<34}{row['ap']:>7.3f}"
              f"{row['ap50']:>7.3f}{row['ap75']:>7.3f}{row['recall50']:>10.3f}{row['boxes_per_image']:>11.1f}"
              f"{row['fusion_ms_per_image']:>15.2f}")
    print(f"\nfused-score rule: WBF of all {len(outputs)}")
    print(head + f"{'fusion ms/img':>15}")
    for row in conf:
        print(f"{row['conf_type']:<34}{row['ap']:>7.3f}{row['ap50']:>7.3f}{row['ap75']:>7.3f}{row['recall50']:>10.3f}"
              f"{row['boxes_per_image']:>11.1f}{row['fusion_ms_per_image']:>15.2f}")
    print(f"\nbox count vs recall: WBF of all {len(outputs)}, cap = max boxes per image, min = min box side (px)")
    print(head + f"{'fusion ms/img':>15}")
    for row in cap:
        name = f"cap {row['max_boxes_per_image']}, min {row['min_box_size']:.0f} px"
        print(f"{name:<34}{row['ap']:>7.3f}{row['ap50']:>7.3f}{row['ap75']:>7.3f}{row['recall50']:>10.3f}"
              f"{row['boxes_per_image']:>11.1f}{row['fusion_ms_per_image']:>15.2f}")
    result = {
        "detectors": detectors,
        "wbf": wbf,
        "conf_type": conf,
        "cap": cap,
        "fusion": fusion.model_dump(mode="json"),
        "wbf_weights": weights,
        "n_val_images": len(val),
        "n_val_items": sum(len(r.items) for r in val),
        "train": train_config.model_dump(mode="json"),
        "quick": args.quick,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
