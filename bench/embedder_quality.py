"""Train the default embedder from scratch on a fresh synthetic split and measure crop retrieval.

Generates the synthetic street-to-shop data set into a temporary folder, trains one embedder with the
defaults of ``EmbedderConfig`` / ``EmbedderTrainConfig`` (random init, CPU), then reports item-level
Acc@1/Acc@10 on the validation split's ground-truth crops for the trained embedder and the colour-histogram
baseline, next to chance. The last line of output is one JSON object.

    python bench/embedder_quality.py            # the demo setting (~2 minutes on 2 cores)
    python bench/embedder_quality.py --quick    # a smoke run on a small split (~20 s)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

# On a CPU shared with other jobs, OpenMP threads that spin while waiting make 2-thread torch ~8x slower;
# passive waiting keeps it near full speed. libgomp reads this once, so it must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clothret.datasets.synthetic import DEFAULT_SPLITS, SyntheticSizes, generate_dataset  # noqa: E402
from clothret.embedding import (  # noqa: E402
    ColourHistogramEmbedder,
    Embedder,
    EmbedderConfig,
    EmbedderTrainConfig,
    crop_retrieval_accuracy,
    train_embedder,
)

QUICK_SPLITS = {"train": SyntheticSizes(n_pairs=60, street_per_pair=3), "validation": SyntheticSizes(n_pairs=30, street_per_pair=2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small split and 60 steps: checks that it runs")
    parser.add_argument("--seed", type=int, default=0, help="data set and training seed")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: EmbedderTrainConfig's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and embedding")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training after this long")
    parser.add_argument("--data", default=None, help="write the data set here instead of a temporary folder")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    model_config = EmbedderConfig()
    steps = args.steps or (60 if args.quick else EmbedderTrainConfig().steps)
    train_config = EmbedderTrainConfig(steps=steps, seed=args.seed, num_threads=args.threads, max_seconds=args.max_seconds)
    splits = QUICK_SPLITS if args.quick else DEFAULT_SPLITS

    with tempfile.TemporaryDirectory(prefix="embedder_quality_") as tmp:
        root = args.data or os.path.join(tmp, "data")
        t0 = time.perf_counter()
        data = generate_dataset(root, seed=args.seed, splits=splits)
        gen_seconds = time.perf_counter() - t0
        print(f"generated {', '.join(f'{k}: {len(v)} images' for k, v in data.items())} in {gen_seconds:.1f} s", flush=True)
        print(f"model: {model_config.model_dump(mode='json')}")
        print(f"train: steps={train_config.steps} P={train_config.p_identities} K={train_config.k_instances} "
              f"lr={train_config.lr} threads={train_config.num_threads}", flush=True)

        weights_url = os.path.join(tmp, "embedder.safetensors")
        metrics = train_embedder(
            data["train"], model_config=model_config, train_config=train_config, weights_url=weights_url,
            progress=not args.no_progress,
        )
        torch.set_num_threads(args.threads)
        embedder = Embedder.from_weights(weights_url, name="trained")
        rows = [crop_retrieval_accuracy(embedder, data["validation"]), crop_retrieval_accuracy(ColourHistogramEmbedder(), data["validation"])]

    first = rows[0]
    print()
    print(f"training: {metrics['seconds']:.1f} s wall ({metrics['steps']} steps, {metrics['train_images_per_second']:.0f} img/s, "
          f"{metrics['num_crops']} crops of {metrics['num_identities']} identities), loss {metrics['loss_first']:.3f} -> {metrics['loss_final']:.3f}")
    print(f"validation: {first['num_queries']} street queries against {first['num_gallery']} shop crops")
    print(f"{'embedder':<20}{'dim':>6}{'Acc@1':>8}{'Acc@10':>8}{'img/s':>9}")
    dims = [embedder.dim, ColourHistogramEmbedder().dim]
    for row, dim in zip(rows, dims):
        print(f"{row['embedder']:<20}{dim:>6}{row['acc@1']:>8.3f}{row['acc@10']:>8.3f}{row['embed_images_per_second']:>9.0f}")
    print(f"{'chance':<20}{'':>6}{first['chance@1']:>8.3f}{first['chance@10']:>8.3f}")
    summary = {
        "quick": args.quick,
        "train_seconds": metrics["seconds"],
        "steps": metrics["steps"],
        "threads": args.threads,
        "embedder_acc@1": round(rows[0]["acc@1"], 4),
        "embedder_acc@10": round(rows[0]["acc@10"], 4),
        "embedder_images_per_second": rows[0]["embed_images_per_second"],
        "colour_hist_acc@1": round(rows[1]["acc@1"], 4),
        "colour_hist_acc@10": round(rows[1]["acc@10"], 4),
        "chance@1": round(first["chance@1"], 4),
        "chance@10": round(first["chance@10"], 4),
        "num_queries": first["num_queries"],
        "num_gallery": first["num_gallery"],
    }
    summary["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
