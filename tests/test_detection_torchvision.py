"""torchvision detectors: building, detecting, weights round trip, training and resuming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clothret.datasets.synthetic import SyntheticSizes, generate_split
from clothret.detection import training
from clothret.detection.torchvision_backend import (
    ARCHITECTURES,
    BACKBONES,
    TorchvisionDetector,
    TorchvisionDetectorConfig,
    build_detector_model,
    save_detector,
)
from clothret.detection.training import DetectorTrainConfig, checkpoint_url, train_detector
from clothret.weights import load_card, save_weights

TINY = {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 64, "max_size": 96, "score_thresh": 0.0}


pytestmark = pytest.mark.usefixtures("at_most_two_torch_threads")


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8), rng.integers(0, 256, size=(72, 48, 3), dtype=np.uint8)]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_architecture_builds_and_detects(architecture):
    torch.manual_seed(0)
    config = TorchvisionDetectorConfig(architecture=architecture, detections_per_img=20, **TINY)
    detector = TorchvisionDetector(build_detector_model(config), config, name=architecture)
    images = _images()
    out = detector.detect(images)
    assert len(out) == 2
    assert any(len(d) for d in out)
    for img, d in zip(images, out):
        assert len(d) <= 20
        assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64
        if len(d):
            assert d.labels.min() >= 1 and d.labels.max() <= 13
            assert d.boxes[:, [0, 2]].max() <= img.shape[1] + 1e-3 and d.boxes[:, [1, 3]].max() <= img.shape[0] + 1e-3
    assert detector.detect([]) == []


def test_backbones_build():
    for backbone in ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"):
        config = TorchvisionDetectorConfig(**{**TINY, "backbone": backbone})
        model = build_detector_model(config).eval()
        with torch.inference_mode():
            features = model.backbone(torch.zeros(1, 3, 64, 64))
        assert [f.shape[-1] for f in features.values()] == [8, 4, 2]  # levels 3-5
        assert all(f.shape[1] == 32 for f in features.values())


def test_extra_levels():
    for max_level, n in ((6, 4), (7, 5)):
        config = TorchvisionDetectorConfig(**{**TINY, "max_level": max_level})
        model = build_detector_model(config).eval()
        with torch.inference_mode():
            assert len(model.backbone(torch.zeros(1, 3, 128, 128))) == n
        TorchvisionDetector(model, config).detect(_images())


def test_unknown_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'yolo'.*fcos.*retinanet"):
        TorchvisionDetectorConfig(architecture="yolo")
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg11'.*resnet18"):
        TorchvisionDetectorConfig(backbone="vgg11")
    assert "resnet18" in BACKBONES and "fcos" in ARCHITECTURES
    with pytest.raises(ValueError, match="max_size"):
        TorchvisionDetectorConfig(min_size=200, max_size=100)


def test_detect_rejects_bad_images():
    config = TorchvisionDetectorConfig(**TINY)
    detector = TorchvisionDetector(build_detector_model(config), config)
    with pytest.raises(ValueError, match="image 1 must be uint8"):
        detector.detect([_images()[0], _images()[0].astype(np.float32)])
    with pytest.raises(ValueError, match=r"image 0 must have shape \(H, W, 3\)"):
        detector.detect([np.zeros((10, 10), np.uint8)])


def test_save_and_from_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    config = TorchvisionDetectorConfig(architecture="fcos", **TINY)
    model = build_detector_model(config)
    with torch.no_grad():  # move BatchNorm statistics off their defaults so they must round-trip too
        model.backbone.train()(torch.rand(2, 3, 64, 64))
    url = str(tmp_path / "det.safetensors")
    save_detector(model, config, url, extra_card={"note": "test"})
    card = load_card(url)
    assert card["kind"] == "torchvision-detector" and card["config"]["architecture"] == "fcos" and card["note"] == "test"
    before = TorchvisionDetector(model, config, name="a").detect(_images())
    loaded = TorchvisionDetector.from_weights(url, name="b")
    assert loaded.name == "b" and loaded.config == config
    after = loaded.detect(_images())
    assert sum(len(d) for d in before) > 0
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert TorchvisionDetector.from_weights(url).name == "det"
    with pytest.raises(ValueError, match="reserved"):
        save_detector(model, config, url, extra_card={"kind": "other"})
    other = str(tmp_path / "other.safetensors")
    save_weights(model.state_dict(), other, {"kind": "embedder"})
    with pytest.raises(ValueError, match="expected 'torchvision-detector'"):
        TorchvisionDetector.from_weights(other)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return generate_split(str(root / "train"), SyntheticSizes(n_pairs=6, street_per_pair=1), seed=3)


@pytest.mark.slow
def test_short_training_reduces_the_loss(tmp_path, tiny_split):
    model_config = TorchvisionDetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, min_size=96, max_size=144)
    train_config = DetectorTrainConfig(steps=40, batch_size=4, warmup_steps=5, num_threads=2, checkpoint_every=0)
    url = str(tmp_path / "trained.safetensors")
    metrics = train_detector(tiny_split, model_config=model_config, train_config=train_config, weights_url=url, progress=False)
    card = load_card(url)
    assert metrics["steps"] == 40 and metrics["images_per_s"] > 0
    assert card["steps"] == 40 and card["train_config"]["steps"] == 40
    assert metrics["final_loss"] < 0.8 * card["first_loss"]
    detector = TorchvisionDetector.from_weights(url)
    assert len(detector.detect([np.zeros((96, 96, 3), np.uint8)])) == 1


def test_training_resumes_from_checkpoint_deterministically(tmp_path, tiny_split, monkeypatch):
    model_config = TorchvisionDetectorConfig(**{**TINY, "architecture": "fcos"})
    train_config = DetectorTrainConfig(steps=6, batch_size=2, warmup_steps=2, checkpoint_every=3)
    records = tiny_split[:8]
    ref_url = str(tmp_path / "ref.safetensors")
    train_detector(records, model_config=model_config, train_config=train_config, weights_url=ref_url, progress=False)

    url = str(tmp_path / "resumed.safetensors")
    real = training._lr_factor

    def crash(step, total, warmup):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, total, warmup)

    monkeypatch.setattr(training, "_lr_factor", crash)
    with pytest.raises(KeyboardInterrupt):
        train_detector(records, model_config=model_config, train_config=train_config, weights_url=url, progress=False)
    ckpt = torch.load(checkpoint_url(url), weights_only=True)
    assert ckpt["step"] == 3
    monkeypatch.setattr(training, "_lr_factor", real)
    metrics = train_detector(records, model_config=model_config, train_config=train_config, weights_url=url, progress=False)
    assert metrics["resumed_from"] == 3
    assert not (tmp_path / "resumed.ckpt").exists()
    a = TorchvisionDetector.from_weights(ref_url).model.state_dict()
    b = TorchvisionDetector.from_weights(url).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_train_config_validation():
    with pytest.raises(ValueError, match="not both"):
        DetectorTrainConfig(steps=10, epochs=1)
    assert DetectorTrainConfig(epochs=2, batch_size=4).total_steps(10) == 5
    assert DetectorTrainConfig(steps=7).total_steps(1000) == 7
    with pytest.raises(ValueError, match="empty"):
        train_detector([], model_config=TorchvisionDetectorConfig(), train_config=DetectorTrainConfig(), weights_url="x.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        checkpoint_url("model.pt")


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_class_ce_weight_adds_a_loss_term(architecture):
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image with no item
    ]
    for weight in (0.0, 0.5):
        config = TorchvisionDetectorConfig(architecture=architecture, class_ce_weight=weight, **TINY)
        losses = build_detector_model(config).train()(images, targets)
        assert ("classification_ce" in losses) == (weight > 0)
        if weight:
            assert 0.5 * 2.0 < losses["classification_ce"].detach().item() < 0.5 * 3.5  # ~ ln(13) at init, times the weight
