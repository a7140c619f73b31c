"""The ``clothret`` command: one subcommand per step, and ``demo`` for all of them.

    clothret demo                       synthetic catalogue → train → refresh → search → evaluate → report
    clothret synth --out DIR            synthetic data set in the DeepFashion2 layout
    clothret train --data DIR --out DIR train a detector and an embedder, write bundle.yaml
    clothret train-detector --data DIR --out F.safetensors [--architecture fcos|retinanet|faster_rcnn] [--resume]
    clothret train-embedder --data DIR --out F.safetensors [--base-bundle B --bundle-out NEW]   train one embedder
    clothret train-mmdet --data DIR --out F.safetensors [--config mmdet::atss/atss_r50_fpn_1x_coco.py]
    clothret import-mmdet --config CFG --checkpoint CKPT --out F.safetensors   a model-zoo detector for a bundle
    clothret experiment --quick --out DIR   the paper's tables side by side (detectors, embedders, post-processing)
    clothret catalogue --split DIR --out manifest.jsonl
    clothret refresh --manifest M --bundle B --store S --index I [--retry-failed]
    clothret backfill --manifest M --bundle NEW --store S --index I   then: clothret promote --index I
    clothret promote --index I [--build ID] [--serving-bundle B]   serve a build, install its models at B
    clothret rollback --index I [--serving-bundle B]               serve the previous build again
    clothret builds --index I            list builds
    clothret verify --store S [--repair] check a feature store for damaged or stray segments (and remove them)
    clothret search IMAGE [IMAGE ...] [--rerank --qe K --whiten ...]   top shop items for any image file
    clothret evaluate --split DIR --bundle B --index I --out DIR [--rerank --qe K --whiten ...]
    clothret report --split DIR --submission F --out report.html
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from clothret.errors import PublishRefused, SegmentsFailed

DEFAULT_WORKDIR = "demo-work"

logger = logging.getLogger("clothret")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("clothret").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # Prefect's run logs show the progress


def _verbose() -> bool:
    return logger.getEffectiveLevel() <= logging.DEBUG


def _run_flow(name: str, *args, **kwargs):
    """Run a flow of ``flows/`` against the configured Prefect API or a temporary local one; the console
    shows the run logs without tracebacks unless ``--verbose`` (the Prefect server keeps them)."""
    import importlib

    from flows.local_api import prefect_api

    module, _, fn = name.partition(":")
    flow = getattr(importlib.import_module(f"flows.{module}"), fn)
    with prefect_api(console_tracebacks=_verbose()):
        return flow(*args, **kwargs)


def _run_refresh_flow(config):
    """The demo's refresh: the catalogue-refresh flow or, when the demo's models changed since its index was
    built, a backfill of the new model version and its promotion, as a data engineer switches versions."""
    from clothret.models import load_bundle
    from clothret.refresh import serving_version
    from flows.local_api import prefect_api

    version = load_bundle(config.bundle_url).version()
    with prefect_api():
        if serving_version(config.index_url) in (None, version):
            from flows.catalogue_refresh import catalogue_refresh

            return catalogue_refresh(config)
        from flows.backfill import backfill
        from flows.promote import promote

        logger.info("the demo's models changed (version %s): backfill, then promote", version)
        build = backfill(config)
        promote(config.index_url, build["build_id"])
        return {**build, "active": True}


def cmd_demo(args: argparse.Namespace) -> int:
    from clothret.demo import run_demo

    summary = run_demo(Path(args.workdir), _run_refresh_flow, seed=args.seed, segment_size=args.segment_size)
    _print_summary(summary, Path(args.workdir))
    return 0


def _print_summary(summary: dict, workdir: Path) -> None:
    lines = [
        "",
        "clothret demo: results",
        f"  gallery: {summary['n_gallery_images']} shop images, {summary['n_gallery_items']} items, "
        f"{summary['n_gallery_boxes']} boxes",
        f"  queries: {summary['n_query_images']} street images, {summary['n_query_items']} items",
        "  " + "  ".join(f"{k}={summary[k]:.3f}" for k in summary if k.startswith("acc@")),
        f"  chance: acc@1={summary['chance_acc@1']:.3f}  acc@10={summary['chance_acc@10']:.3f}",
        "  timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings"].items()),
        f"  total: {summary['seconds']} s",
        f"  summary: {workdir / 'summary.json'}   report: {workdir / 'report.html'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_synth(args: argparse.Namespace) -> int:
    from clothret.datasets.synthetic import SyntheticSizes, generate_dataset

    splits = {
        "train": SyntheticSizes(n_pairs=args.train_pairs, street_per_pair=3),
        "validation": SyntheticSizes(n_pairs=args.val_pairs, street_per_pair=2),
    }
    out = generate_dataset(args.out, seed=args.seed, splits=splits)
    sys.stdout.write(json.dumps({k: len(v) for k, v in out.items()}) + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from clothret.demo import train_models

    bundle = train_models(Path(args.data), Path(args.out), seed=args.seed)
    sys.stdout.write(f"bundle: {bundle}\n")
    return 0


def _parse_sets(pairs: list[str]) -> tuple[dict, dict]:
    """``model.FIELD=VALUE`` / ``train.FIELD=VALUE`` overrides (VALUE parsed as JSON when it is JSON)."""
    out: dict[str, dict] = {"model": {}, "train": {}}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        scope, _, field = key.partition(".")
        if scope not in out or not field or not eq:
            raise ValueError(f"--set wants model.FIELD=VALUE or train.FIELD=VALUE, got {pair!r}")
        try:
            out[scope][field] = json.loads(value)
        except json.JSONDecodeError:
            out[scope][field] = value
    return out["model"], out["train"]


def cmd_train_detector(args: argparse.Namespace) -> int:
    from clothret.detection.train_job import TrainDetectorJob, run_train_job

    model, train = _parse_sets(args.set)
    for field, value in (("architecture", args.architecture), ("backbone", args.backbone)):
        if value is not None:
            model[field] = value
    for field, value in (("steps", args.steps), ("epochs", args.epochs), ("batch_size", args.batch_size),
                         ("lr", args.lr), ("seed", args.seed), ("num_threads", args.threads)):
        if value is not None:
            train[field] = value
    train.setdefault("device", args.device)
    job = TrainDetectorJob(data_url=args.data, weights_url=args.out, model=model, train=train, resume=args.resume)
    metrics = run_train_job(job, progress=not args.no_progress)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return 0


def cmd_train_embedder(args: argparse.Namespace) -> int:
    from clothret.embedding.train_job import TrainEmbedderJob, run_train_embedder_job

    model, train = _parse_sets(args.set)
    for field, value in (("backbone", args.backbone), ("descriptors", args.descriptors), ("dim", args.dim)):
        if value is not None:
            model[field] = value
    for field, value in (("steps", args.steps), ("epochs", args.epochs), ("lr", args.lr), ("seed", args.seed),
                         ("num_threads", args.threads)):
        if value is not None:
            train[field] = value
    job = TrainEmbedderJob(data_url=args.data, weights_url=args.out, name=args.name, model=model, train=train,
                           base_bundle_url=args.base_bundle, bundle_url=args.bundle_out, bundle_mode=args.bundle_mode)
    metrics = run_train_embedder_job(job, progress=not args.no_progress)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from clothret.experiments.run import ExperimentConfig, run_experiment
    from clothret.experiments.tables import format_summary

    config = ExperimentConfig(
        out_dir=args.out, data_url=args.data, size=args.size or ("quick" if args.quick else "full"), seed=args.seed,
        threads=args.threads, device=args.device, n_samples=args.samples,
        architectures=tuple(a.strip() for a in args.architectures.split(",")) if args.architectures else None,
        detector_steps=args.detector_steps, embedder_steps=args.embedder_steps,
    )
    summary = run_experiment(config, progress=not args.no_progress)
    out = args.out.rstrip("/")
    sys.stdout.write(format_summary(summary) + f"\n\nbest: {summary['best']}; worst: {summary['worst']}\n"
                     f"timings (s): {summary['seconds']}\nreport: {out}/report.html   json: {out}/experiment.json\n")
    return 0


def cmd_catalogue(args: argparse.Namespace) -> int:
    from clothret.datasets.catalogue import manifest_from_folder, write_manifest
    from clothret.demo import build_catalogue

    if args.split:
        n = build_catalogue(args.split, args.out)
    else:
        entries = manifest_from_folder(args.folder)
        write_manifest(entries, args.out)
        n = len(entries)
    sys.stdout.write(f"manifest of {n} images: {args.out}\n")
    return 0


def _refresh_config(args: argparse.Namespace):
    from clothret.refresh import RefreshConfig

    from clothret.rerank.config import PostProcessConfig

    postprocess = {field: getattr(args, flag) for flag, field in _POSTPROCESS_FLAGS if getattr(args, flag) is not None}
    return RefreshConfig(
        manifest_url=args.manifest, bundle_url=args.bundle, store_url=args.store, index_url=args.index,
        segment_size=args.segment_size, retry_failed=getattr(args, "retry_failed", False),
        eval_split_url=args.eval_split, device=args.device, postprocess=PostProcessConfig(**postprocess),
        engine=_engine_config(args),
    )


def _check_refresh_inputs(args: argparse.Namespace) -> None:
    """Before any server or cluster starts: the manifest, bundle, store, index (and eval split) are usable."""
    from clothret.preflight import check_refresh_inputs

    check_refresh_inputs(manifest_url=args.manifest, bundle_url=args.bundle, store_url=args.store,
                         index_url=args.index, eval_split_url=args.eval_split)


def cmd_refresh(args: argparse.Namespace) -> int:
    config = _refresh_config(args)  # settings first: they are checked without touching anything
    _check_refresh_inputs(args)
    build = _run_flow("catalogue_refresh:catalogue_refresh", config)
    sys.stdout.write(json.dumps(build, indent=2) + "\n")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    config = _refresh_config(args)  # settings first: they are checked without touching anything
    _check_refresh_inputs(args)
    build = _run_flow("backfill:backfill", config)
    sys.stdout.write(json.dumps(build, indent=2) + "\n")
    sys.stdout.write(f"build {build['build_id']} written, not serving: clothret promote --index {args.index} "
                     f"--build {build['build_id']}\n")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from clothret.preflight import check_promote_inputs

    check_promote_inputs(args.index, args.build)
    build_id = _run_flow("promote:promote", args.index, args.build, args.serving_bundle)
    sys.stdout.write(f"{args.index} serves build {build_id}\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from clothret.preflight import check_rollback_inputs

    check_rollback_inputs(args.index)
    build_id = _run_flow("promote:rollback", args.index, args.serving_bundle)
    sys.stdout.write(f"{args.index} serves build {build_id}\n")
    return 0


def cmd_builds(args: argparse.Namespace) -> int:
    from clothret.index.publish import list_builds

    for b in list_builds(args.index):
        mark = "*" if b["active"] else " "
        sys.stdout.write(f"{mark} {b['build_id']}  version {b['model_version']}  {b.get('n_boxes', '?')} boxes\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from clothret.store.verify import verify_store

    report = verify_store(args.store, repair=args.repair, min_age_s=args.min_age)
    sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0 if report.clean else 1


_POSTPROCESS_FLAGS = (("whiten", "whiten"), ("whiten_dim", "whiten_dim"), ("dba", "dba_k"), ("qe", "qe_k"),
                      ("qe_alpha", "qe_alpha"), ("rerank", "rerank"), ("k1", "k1"), ("k2", "k2"),
                      ("lambda_value", "lambda_value"), ("candidates", "candidates"), ("dedupe", "dedupe"))


def _add_postprocess_arguments(p: argparse.ArgumentParser, *, for_build: bool = False) -> None:
    """The post-processing flags: a search's overrides of the build's settings, or (``for_build``) the
    settings a refresh or backfill stores with its build (gallery side) and gives its searches (query side)."""
    title = ("post-processing stored with the build (default: none)" if for_build else
             "post-processing (default: the index build's own settings; these override them)")
    g = p.add_argument_group(title)
    g.add_argument("--whiten", action="store_true", default=None, help="PCA whitening learned on the gallery")
    g.add_argument("--whiten-dim", type=int, help="whitened dimensions kept (with --whiten)")
    g.add_argument("--dba", type=int, metavar="K", help="database-side augmentation with K neighbours")
    g.add_argument("--qe", type=int, metavar="K", help="alpha-query expansion with the K best gallery vectors")
    g.add_argument("--qe-alpha", type=float, help="query-expansion weight exponent (default 3)")
    g.add_argument("--rerank", action="store_true", default=None, help="k-reciprocal re-ranking of the top candidates")
    g.add_argument("--k1", type=int, help="k-reciprocal neighbourhood (default 20)")
    g.add_argument("--k2", type=int, help="re-ranking's local query expansion (default 6)")
    g.add_argument("--lambda", dest="lambda_value", type=float, help="weight of the original distance (default 0.3)")
    g.add_argument("--candidates", type=int, help="candidates per query that expansion and re-ranking see (default 100)")
    g.add_argument("--dedupe", choices=("none", "image"), help="image: the best box per gallery image only")
    if not for_build:
        g.add_argument("--no-postprocess", action="store_true", help="ignore the build's query-side settings")


def _add_engine_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", action="append", default=[], metavar="SETTING=VALUE",
        help="a segment-engine setting (repeatable), e.g. batch_size=32, autocast=bf16, compile=default, "
        "group_by_shape=false; see EngineConfig",
    )


def _engine_config(args: argparse.Namespace):
    """The ``--engine SETTING=VALUE`` options as an EngineConfig (a bad setting or value names itself)."""
    from clothret.pipeline.engine_config import engine_config_from

    return engine_config_from(args.engine)


def _postprocess_options(args: argparse.Namespace):
    """The post-processing asked for: overrides of the build's settings, or none of its query-side ones."""
    overrides = {field: getattr(args, flag) for flag, field in _POSTPROCESS_FLAGS if getattr(args, flag) is not None}
    if not args.no_postprocess:
        return overrides
    return {"qe_k": 0, "rerank": False, "dedupe": "none", **overrides}


def cmd_search(args: argparse.Namespace) -> int:
    from clothret.index.search import top_items
    from clothret.models import load_bundle, load_models
    from clothret.pipeline.query import search_images
    from clothret.rerank.search import load_index

    engine = _engine_config(args)  # settings first: they are checked without touching anything
    models = load_models(load_bundle(args.bundle))
    index = load_index(args.index, postprocess=_postprocess_options(args))
    images = [(Path(p).stem, p) for p in args.images]
    results, failures = search_images(models, index, images, k=max(20, 3 * args.top), engine=engine)
    for image_id, reason in failures.items():
        sys.stdout.write(f"{image_id}: could not be read ({reason})\n")
    for r in results:
        box = ", ".join(f"{v:.0f}" for v in r.box)
        sys.stdout.write(f"{r.query_image_id}: category {r.category_id} score {r.score:.2f} box [{box}]\n")
        for rank, (item, image, sim, gbox) in enumerate(top_items(r, args.top), start=1):
            sys.stdout.write(f"  {rank:2d}. item {item}  image {image}  similarity {sim:.3f}\n")
    if not results and not failures:
        sys.stdout.write("no garment found in the given images\n")
    return 1 if failures and not results else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from clothret.evaluation.split import evaluate_split
    from clothret.evaluation.submission import write_submission
    from clothret.models import load_bundle, load_models
    from clothret.rerank.search import load_index, search_options

    engine = _engine_config(args)  # settings first: they are checked without touching anything
    index = load_index(args.index, postprocess=_postprocess_options(args))
    run = evaluate_split(args.split, load_models(load_bundle(args.bundle)), index, engine=engine)
    scores = {**run.scores, "build_id": index.manifest.get("build_id"), "postprocess": search_options(index).label()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_submission(run.results, str(Path(args.out) / "submission.json"))
    (Path(args.out) / "scores.json").write_text(json.dumps(scores, indent=2, default=str))
    sys.stdout.write(json.dumps({k: v for k, v in scores.items() if k.startswith("acc@")}, indent=2) + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from clothret.datasets.deepfashion2 import read_split
    from clothret.evaluation.submission import read_submission
    from clothret.report import write_report

    records = read_split(args.split)
    queries = [r for r in records if r.source == "user"]
    gallery = [r for r in records if r.source == "shop"]
    width = len(records[0].image_id) if records else None
    write_report(args.out, queries, gallery, read_submission(args.submission, id_width=width))
    sys.stdout.write(f"report: {args.out}\n")
    return 0


def cmd_train_mmdet(args: argparse.Namespace) -> int:
    from clothret.detection.mmdet_training import MMDetTrainConfig, train_mmdet_detector

    config = MMDetTrainConfig(config=args.config, max_iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                              image_scale=(args.image_size, args.image_size))
    work_dir = args.work_dir or str(Path(args.out).with_suffix("")) + "-work"
    digest = train_mmdet_detector(args.data, args.out, config, work_dir=work_dir)
    sys.stdout.write(f"{args.out} (sha256 {digest[:12]}); runner checkpoints in {work_dir}\n")
    return 0


def cmd_import_mmdet(args: argparse.Namespace) -> int:
    from clothret.detection.mmdet_backend import MMDetDetector, detector_config, save_mmdet_weights

    detector = MMDetDetector.from_checkpoint(args.config, args.checkpoint, name=Path(args.out).stem)
    digest = save_mmdet_weights(detector, detector_config(args.config), args.out,
                                card={"imported_from": args.checkpoint})
    sys.stdout.write(f"{args.out} (sha256 {digest[:12]})\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clothret", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wd = f"{DEFAULT_WORKDIR}"

    p = sub.add_parser("demo", help="run the whole pipeline on a synthetic catalogue")
    p.add_argument("--workdir", default=wd)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segment-size", type=int, default=64)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("synth", help="generate a synthetic data set in the DeepFashion2 layout")
    p.add_argument("--out", required=True)
    p.add_argument("--train-pairs", type=int, default=400)
    p.add_argument("--val-pairs", type=int, default=130)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("train", help="train a detector and an embedder on DATA/train, write OUT/bundle.yaml")
    p.add_argument("--data", required=True, help="data set root holding train/")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("train-mmdet", help="train an mmdetection detector through its runner (needs `make mmdet`)")
    p.add_argument("--data", required=True, help="a split in the DeepFashion2 layout (image/ + annos/)")
    p.add_argument("--out", required=True, help="weights file, FILE.safetensors (the card holds the config)")
    p.add_argument("--config", default="mmdet::atss/atss_r50_fpn_1x_coco.py", help="mmdetection config")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--work-dir", help="runner work folder (checkpoints to resume from); default next to --out")
    p.set_defaults(fn=cmd_train_mmdet)

    p = sub.add_parser("import-mmdet", help="an mmdetection config + checkpoint as bundle weights (needs `make mmdet`)")
    p.add_argument("--config", required=True, help="mmdetection config (mmdet::dir/file.py for a bundled one)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (loaded by mmdetection's init_detector)")
    p.add_argument("--out", required=True, help="weights file, FILE.safetensors")
    p.set_defaults(fn=cmd_import_mmdet)

    p = sub.add_parser("train-detector", help="train one torchvision detector on a DeepFashion2-layout split")
    p.add_argument("--data", required=True, help="a split (image/ + annos/) or a data set root holding train/")
    p.add_argument("--out", required=True, help="weights file, FILE.safetensors (the model card goes to FILE.json)")
    p.add_argument("--architecture", help="fcos, retinanet or faster_rcnn (default fcos)")
    p.add_argument("--backbone", help="a torchvision trunk, e.g. resnet18, resnet50, mobilenet_v3_small (default resnet18)")
    p.add_argument("--steps", type=int, help="optimiser steps (default 400)")
    p.add_argument("--epochs", type=float, help="epochs instead of steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="SCOPE.FIELD=VALUE",
                   help="any other setting, e.g. model.min_size=192 or train.ema_decay=0.999 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out (FILE.ckpt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train_detector)

    p = sub.add_parser("train-embedder", help="train one embedder on a DeepFashion2-layout split (and write a new bundle)")
    p.add_argument("--data", required=True, help="a split (image/ + annos/) or a data set root holding train/")
    p.add_argument("--out", required=True, help="weights file, FILE.safetensors (the model card goes to FILE.json)")
    p.add_argument("--name", help="the embedder's name in its model card and the bundle")
    p.add_argument("--backbone", help="a timm backbone (default: the demo's narrow resnet10t)")
    p.add_argument("--descriptors", help="CGD descriptors from G (GeM), M (MAC), S (SPoC), e.g. GM (default)")
    p.add_argument("--dim", type=int, help="embedding size (default 128)")
    p.add_argument("--steps", type=int, help="optimiser steps (default 1000)")
    p.add_argument("--epochs", type=float, help="epochs instead of steps")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="SCOPE.FIELD=VALUE",
                   help="any other setting, e.g. model.input_size=64 or train.losses={\"triplet\":0} (repeatable)")
    p.add_argument("--base-bundle", help="bundle whose detectors and fusion a new bundle keeps")
    p.add_argument("--bundle-out", help="write a new bundle here with the trained embedder (needs --base-bundle)")
    p.add_argument("--bundle-mode", choices=("replace", "add"), default="replace",
                   help="replace the base bundle's embedders (default) or add the new one beside them")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_train_embedder)

    p = sub.add_parser("experiment", help="the paper's tables side by side on a DeepFashion2-layout data set")
    p.add_argument("--out", required=True, help="work folder: data, models, experiment.json, report.html")
    p.add_argument("--data", help="a data set root with train/ and validation/ (default: a synthetic one in --out)")
    p.add_argument("--quick", action="store_true", help="the quick size: minutes on 2 cores")
    p.add_argument("--size", choices=("tiny", "quick", "full"), help="data and training size (default full, or quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device of the detectors: cpu, cuda or auto")
    p.add_argument("--architectures", help="detectors in fusion order, e.g. fcos,retinanet,faster_rcnn (default: by size)")
    p.add_argument("--detector-steps", type=int, help="training steps per detector (default: by size)")
    p.add_argument("--embedder-steps", type=int, help="training steps per embedder (default: by size)")
    p.add_argument("--samples", type=int, default=12, help="query items shown with their top-10 in the report")
    p.add_argument("--no-progress", action="store_true", help="no training progress")
    p.set_defaults(fn=cmd_experiment)

    p = sub.add_parser("catalogue", help="write a gallery manifest")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="a DeepFashion2 split: its shop images")
    src.add_argument("--folder", help="every image file under a folder")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_catalogue)

    for name, fn, text in (
        ("refresh", cmd_refresh, "run the catalogue-refresh flow: embed what changed, publish and serve a build"),
        ("backfill", cmd_backfill, "run the backfill flow: the whole catalogue under a new bundle, not served yet"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--manifest", required=True)
        p.add_argument("--bundle", required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--index", required=True)
        p.add_argument("--segment-size", type=int, default=1000)
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument("--eval-split", help="split whose street images gate the build (Acc@10)")
        if name == "refresh":
            p.add_argument("--retry-failed", action="store_true", help="re-run only images that failed before")
        _add_postprocess_arguments(p, for_build=True)
        _add_engine_argument(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("promote", help="serve a written build (default: the newest one not served yet)")
    p.add_argument("--index", required=True)
    p.add_argument("--build", help="build id")
    p.add_argument("--serving-bundle", help="bundle URL the nightly refresh reads: install the build's models there")
    p.set_defaults(fn=cmd_promote)

    p = sub.add_parser("rollback", help="serve the build that served before the current one")
    p.add_argument("--index", required=True)
    p.add_argument("--serving-bundle", help="bundle URL the nightly refresh reads: install the build's models there")
    p.set_defaults(fn=cmd_rollback)

    p = sub.add_parser("builds", help="list the builds of an index (* serves)")
    p.add_argument("--index", default=f"{wd}/index")
    p.set_defaults(fn=cmd_builds)

    p = sub.add_parser("verify", help="report damaged, unreferenced or stray segments of a feature store; --repair removes them")
    p.add_argument("--store", required=True, help="feature store root (local path or s3://...)")
    p.add_argument("--repair", action="store_true", help="remove what is found (never under another run's lease)")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="with --repair, remove only what is older than this (default 3600)")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("search", help="top shop items for image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--bundle", default=f"{wd}/models/bundle.yaml")
    p.add_argument("--index", default=f"{wd}/index")
    p.add_argument("--top", type=int, default=5)
    _add_postprocess_arguments(p)
    _add_engine_argument(p)
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("evaluate", help="Acc@k of a split's street images against the index")
    p.add_argument("--split", default=f"{wd}/data/validation")
    p.add_argument("--bundle", default=f"{wd}/models/bundle.yaml")
    p.add_argument("--index", default=f"{wd}/index")
    p.add_argument("--out", default=f"{wd}/evaluation")
    _add_postprocess_arguments(p)
    _add_engine_argument(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("report", help="HTML report of a submission file")
    p.add_argument("--split", default=f"{wd}/data/validation")
    p.add_argument("--submission", default=f"{wd}/submission.json")
    p.add_argument("--out", default=f"{wd}/report.html")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: with two processes on two cores (training beside a
    # Dask worker, or two workers) spinning threads made torch ~8x slower. Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line (and the traceback with --verbose)
        return _report_error(exc, verbose=args.verbose)


def _validation_message(exc: Exception) -> str | None:
    """A pydantic validation error as ``<model>: <field>: <message>; ...``, without its links."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ != "ValidationError" or not callable(errors):
        return None
    parts = []
    for error in errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return f"invalid {exc.title} settings: " + "; ".join(parts)


def _report_error(exc: Exception, *, verbose: bool) -> int:
    """One line on stderr (after the traceback with ``--verbose``); exit status 2 for bad input and a run
    that failed for a stated reason, 1 for an unexpected error."""
    expected = isinstance(exc, (OSError, ValueError, ImportError, PublishRefused, SegmentsFailed)) or (
        type(exc).__module__ == "clothret.errors"
    )
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = _validation_message(exc) or " ".join(str(exc).split()) or type(exc).__name__
    if not expected:
        message = f"unexpected {type(exc).__name__}: {message}" + ("" if verbose else " (--verbose shows the traceback)")
    sys.stderr.write(f"clothret: error: {message}\n")
    return 2 if expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
