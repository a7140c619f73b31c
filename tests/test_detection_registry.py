"""Detector backends by name: the registry, bundle validation against it, and loading through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clothret.detection import registry
from clothret.detection.registry import backends, check_backend, load_detector, register_backend, unregister_backend
from clothret.detection.types import Detections
from clothret.models import DetectorEntry


class _Fixed:
    """A detector that finds one box in every image."""

    def __init__(self, name: str) -> None:
        self.name = name

    def detect(self, images):
        return [Detections([[0, 0, 4, 4]], [0.5], [1]) for _ in images]


def _load_fixed(weights_url: str, *, name: str, device: str) -> _Fixed:
    return _Fixed(f"{name}@{device}:{weights_url}")


@pytest.fixture
def fixed_backend():
    register_backend("fixed", _load_fixed)
    yield "fixed"
    unregister_backend("fixed")


def test_torchvision_is_registered_and_unknown_names_list_the_valid_ones():
    assert "torchvision" in backends()
    assert check_backend("torchvision") == "torchvision"
    with pytest.raises(ValueError, match=r"unknown detector backend 'yolo'; valid: \['mmdet', 'simulated', 'torchvision'"):
        check_backend("yolo")
    with pytest.raises(ValidationError, match=r"unknown detector backend 'yolo'.*torchvision"):
        DetectorEntry(name="d", backend="yolo", weights="d.safetensors")
    assert DetectorEntry(name="d", backend="mmdet", weights="d.safetensors").backend == "mmdet"  # registered lazily
    assert DetectorEntry(name="d", weights="d.safetensors").backend == "torchvision"


def test_register_load_and_duplicates(fixed_backend):
    entry = DetectorEntry(name="d", backend=fixed_backend, weights="w.safetensors", wbf_weight=2.0)
    detector = load_detector(entry, device="cuda:1")
    assert detector.name == "d@cuda:1:w.safetensors"
    assert len(detector.detect([np.zeros((8, 8, 3), np.uint8)])[0]) == 1
    with pytest.raises(ValueError, match="registered already"):
        register_backend(fixed_backend, _load_fixed)
    register_backend(fixed_backend, _load_fixed, replace=True)
    with pytest.raises(ValueError, match="callable"):
        register_backend("bad", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="module:attribute"):
        register_backend("bad", "no_colon")


def test_lazy_backend_imports_on_first_use():
    register_backend("lazy", f"{__name__}:_load_fixed")
    register_backend("broken", "clothret.no_such_module:load")
    try:
        assert isinstance(registry._LOADERS["lazy"], str)
        assert load_detector(DetectorEntry(name="x", backend="lazy", weights="w"), device="cpu").name == "x@cpu:w"
        assert callable(registry._LOADERS["lazy"])
        with pytest.raises(ValueError, match=r"backend 'broken' could not be loaded from clothret.no_such_module:load"):
            load_detector(DetectorEntry(name="x", backend="broken", weights="w"))
    finally:
        unregister_backend("lazy")
        unregister_backend("broken")
    with pytest.raises(ValueError, match="unknown detector backend 'lazy'"):
        unregister_backend("lazy")


def test_torchvision_backend_loads_through_the_registry(tmp_path):
    from clothret.detection.torchvision_backend import (
        TorchvisionDetector,
        TorchvisionDetectorConfig,
        build_detector_model,
        save_detector,
    )

    config = TorchvisionDetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, min_size=64, max_size=96)
    torch.manual_seed(0)
    url = str(tmp_path / "det.safetensors")
    save_detector(build_detector_model(config), config, url)
    detector = load_detector(DetectorEntry(name="fcos-a", weights=url))
    assert isinstance(detector, TorchvisionDetector) and detector.name == "fcos-a" and detector.config == config
