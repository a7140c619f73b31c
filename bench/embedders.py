"""Embedder configurations side by side on ground-truth boxes: the evidence for the paper's choices.

Synthesizes a street-to-shop data set in the DeepFashion2 layout, trains every configuration of
:func:`clothret.experiments.embedders.paper_variants` with the same data, seed and steps (random init, CPU),
and scores item-level Acc@1/Acc@10 of street crops against shop crops (ground-truth boxes, no detector):

- GeM only against CGD (GeM+MAC, GeM+MAC+SPoC), all four losses;
- softmax only against all four losses (softmax, center, batch-hard triplet, multi-similarity);
- one model (A: ResNet-10-T) against two different models concatenated (A + B: ResNet-18-D), the paper's ensemble.

    python bench/embedders.py            # demo-sized data, 1000 steps each (~15 min on 2 cores)
    python bench/embedders.py --quick    # smaller split, 300 steps each (a few minutes on 2 cores)
    python bench/embedders.py --size tiny   # seconds: checks that it runs (the test suite uses it)

The last line printed is one JSON object: ``{"configs": {name: {"acc@1": .., "acc@10": ..}}, ...}``.
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
from clothret.embedding.config import EmbedderConfig  # noqa: E402
from clothret.embedding.training import EmbedderTrainConfig  # noqa: E402
from clothret.experiments.embedders import compare_embedders  # noqa: E402

SIZES = {
    "tiny": {
        "splits": {"train": SyntheticSizes(n_pairs=8, street_per_pair=2), "validation": SyntheticSizes(n_pairs=6, street_per_pair=1)},
        "train": {"steps": 3, "p_identities": 4, "warmup_steps": 1},
        "model": {"input_size": 32},
    },
    "quick": {
        "splits": {"train": SyntheticSizes(n_pairs=120, street_per_pair=3), "validation": SyntheticSizes(n_pairs=50, street_per_pair=2)},
        "train": {"steps": 300},
        "model": {},
    },
    "full": {"splits": DEFAULT_SPLITS, "train": {"steps": 1000}, "model": {}},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick size (a few minutes on 2 cores)")
    parser.add_argument("--size", choices=sorted(SIZES), help="data and training size (default full, or quick)")
    parser.add_argument("--seed", type=int, default=0, help="data set and training seed")
    parser.add_argument("--steps", type=int, help="training steps per configuration (default: by size)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", help="keep data and weights here (reused when the settings match)")
    parser.add_argument("--progress", action="store_true", help="show training progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    size = args.size or ("quick" if args.quick else "full")
    recipe = SIZES[size]
    train = {**recipe["train"], "seed": args.seed, "num_threads": args.threads}
    if args.steps:
        train["steps"] = args.steps
    base_train = EmbedderTrainConfig(**train)
    base_model = EmbedderConfig(**recipe["model"])

    with tempfile.TemporaryDirectory(prefix="bench-embedders-") as tmp:
        root = Path(args.out or tmp)
        t0 = time.perf_counter()
        data = generate_dataset(str(root / "data"), seed=args.seed, splits=recipe["splits"])
        print(f"data: {len(data['train'])} train / {len(data['validation'])} validation images in "
              f"{time.perf_counter() - t0:.1f} s; {base_train.steps} steps of {base_train.p_identities}x"
              f"{base_train.k_instances} crops per configuration, seed {args.seed}", flush=True)
        result = compare_embedders(data["train"], data["validation"], root / "weights", base_model=base_model,
                                   base_train=base_train, progress=args.progress)

    any_row = next(iter(result.table.values()))
    print(f"\nvalidation: {any_row['num_queries']} street crops against {any_row['num_gallery']} shop crops "
          f"(ground-truth boxes); chance Acc@1 {any_row['chance@1']:.3f}, Acc@10 {any_row['chance@10']:.3f}")
    print(f"{'configuration':<16}{'what':<48}{'Acc@1':>7}{'Acc@10':>8}{'train s':>9}")
    for name, row in result.table.items():
        seconds = result.training.get(name, {}).get("seconds")
        train_s = f"{seconds:>9.0f}" if seconds is not None else f"{'':>9}"
        print(f"{name:<16}{result.what[name]:<48}{row['acc@1']:>7.3f}{row['acc@10']:>8.3f}{train_s}")
    summary = {
        "configs": {name: {"acc@1": round(row["acc@1"], 4), "acc@10": round(row["acc@10"], 4)}
                    for name, row in result.table.items()},
        "what": result.what,
        "train_seconds": {name: t["seconds"] for name, t in result.training.items()},
        "size": size,
        "steps": base_train.steps,
        "seed": args.seed,
        "num_queries": any_row["num_queries"],
        "num_gallery": any_row["num_gallery"],
        "chance@1": round(any_row["chance@1"], 4),
        "chance@10": round(any_row["chance@10"], 4),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
