"""The mmdetection backend: the paper's detectors from mmdetection's configs, training through its runner,
loading from a model bundle. Skipped, with the reason, where mmdetection is not installed (`make mmdet`)."""

import json

import numpy as np
import pytest

from clothret.detection.mmdet_backend import INSTALL_HINT, PAPER_CONFIGS, MMDetDetector, mmdet_available

needs_mmdet = pytest.mark.skipif(not mmdet_available(), reason=INSTALL_HINT)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(160, 200, 3), dtype=np.uint8), rng.integers(0, 255, size=(120, 90, 3), dtype=np.uint8)]


@pytest.mark.skipif(mmdet_available(), reason="mmdetection is installed")
def test_without_mmdetection_one_clear_error():
    with pytest.raises(ImportError, match="make mmdet"):
        MMDetDetector.from_checkpoint(PAPER_CONFIGS["atss"], None, name="atss")


@needs_mmdet
@pytest.mark.slow
@pytest.mark.parametrize("name", ["atss", "cascade_mask_rcnn", "centernet", "retinanet_r101"])
def test_paper_detectors_run_on_13_categories(name):
    detector = MMDetDetector.from_checkpoint(PAPER_CONFIGS[name], None, name=name, score_threshold=0.0)
    images = _images()
    out = detector.detect(images)
    assert len(out) == 2
    for dets, img in zip(out, images):
        assert len(dets) > 0  # random init still scores boxes; threshold 0 keeps them
        assert dets.labels.min() >= 1 and dets.labels.max() <= 13
        h, w = img.shape[:2]
        assert (dets.boxes[:, 2] <= w + 1).all() and (dets.boxes[:, 3] <= h + 1).all()


@needs_mmdet
@pytest.mark.slow
def test_trained_through_the_runner_then_loaded_from_a_bundle(tiny_workdir, tmp_path):
    import torch

    from clothret.detection.mmdet_training import MMDetTrainConfig, train_mmdet_detector
    from clothret.models import DetectorEntry, EmbedderEntry, ModelBundle, load_bundle, load_models, save_bundle
    from clothret.pipeline.mapper import map_batch
    from clothret.weights import load_card, load_weights

    weights = str(tmp_path / "retinanet.safetensors")
    config = MMDetTrainConfig(config="mmdet::retinanet/retinanet_r18_fpn_1x_coco.py", max_iters=4, batch_size=2,
                              image_scale=(192, 192), lr=0.005)
    train_mmdet_detector(str(tiny_workdir / "data" / "train"), weights, config, work_dir=str(tmp_path / "work"))
    card = load_card(weights)
    assert card["backend"] == "mmdet" and card["iterations"] == 4 and "RetinaNet" in card["mmdet_config"]
    assert list((tmp_path / "work").glob("iter_4.pth"))  # the runner's own checkpoint, to resume from
    logged = [json.loads(line) for f in sorted((tmp_path / "work").glob("*/vis_data/scalars.json"))
              for line in f.read_text().splitlines()]
    assert [r["iter"] for r in logged] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in logged)

    # a longer run in the same work folder resumes from the runner's checkpoint
    longer = config.model_copy(update={"max_iters": 6})
    train_mmdet_detector(str(tiny_workdir / "data" / "train"), weights, longer, work_dir=str(tmp_path / "work"))
    logged = [json.loads(line) for f in sorted((tmp_path / "work").glob("*/vis_data/scalars.json"))
              for line in f.read_text().splitlines()]
    assert [r["iter"] for r in logged] == [1, 2, 3, 4, 5, 6]

    detector = MMDetDetector.from_weights(weights, name="retinanet")
    state, _ = load_weights(weights)
    loaded = detector.model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())
    assert len(detector.detect(_images())) == 2

    # a checkpoint as mmdetection's model zoo publishes it (state dict + plain meta) imports weights-only
    from clothret.cli import main
    from clothret.datasets.records import CATEGORIES

    zoo = tmp_path / "zoo.pth"
    torch.save({"state_dict": detector.model.state_dict(),
                "meta": {"dataset_meta": {"classes": list(CATEGORIES)}, "mmdet_version": "3.3.0"}}, zoo)
    imported = str(tmp_path / "imported.safetensors")
    assert main(["import-mmdet", "--config", config.config, "--checkpoint", str(zoo), "--out", imported]) == 0
    again, _ = load_weights(imported)
    assert all(torch.equal(again[k], v) for k, v in state.items())

    # an ensemble of a torchvision and an mmdetection detector, fused, from one bundle
    tiny = load_bundle(str(tiny_workdir / "models" / "bundle.yaml"))
    bundle = ModelBundle(
        detectors=[*tiny.detectors, DetectorEntry(name="retinanet", backend="mmdet", weights=weights, wbf_weight=2.0)],
        fusion=tiny.fusion, embedders=[EmbedderEntry(name=e.name, weights=e.weights) for e in tiny.embedders],
    )
    save_bundle(bundle, str(tmp_path / "bundle.yaml"))
    models = load_models(load_bundle(str(tmp_path / "bundle.yaml")))
    assert [d.name for d in models.detectors] == [tiny.detectors[0].name, "retinanet"]
    outputs = map_batch(models, _images())
    assert len(outputs) == 2 and all(o.features.shape[1] == models.dim for o in outputs)
