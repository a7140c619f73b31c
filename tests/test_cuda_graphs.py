"""CUDA graphs of the networks' dense parts (clothret.cuda_graphs): on a GPU the replays give the eager
outputs, a key is captured on its second sighting, graphs of several shapes share a pool safely, capturing
stops when shapes vary too much, and a failed capture falls back to eager calls; on the CPU the setting
changes nothing but the batch padding."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from clothret.cuda_graphs import GraphedCalls
from clothret.detection.torchvision_backend import TorchvisionDetector, TorchvisionDetectorConfig, build_detector_model
from clothret.inference_copy import CopySettings
from clothret.pipeline.engine_config import EngineConfig

TINY = {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 64, "max_size": 96, "score_thresh": 0.0,
        "detections_per_img": 20}
ARCHITECTURES = ["fcos", "retinanet", "faster_rcnn"]


def _images(seed: int, device: str, shapes=((60, 80),) * 5 + ((80, 60),)) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).permute(2, 0, 1).to(device)
            for h, w in shapes]


def _detector(architecture: str, device: str, seed: int = 0) -> TorchvisionDetector:
    torch.manual_seed(seed)
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY)
    return TorchvisionDetector(build_detector_model(config), config, name=architecture, device=device, batch_size=4)


def _assert_close_detections(got, expected, *, atol: float) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.scores[:10], e.scores[:10], atol=atol)
        np.testing.assert_allclose(g.boxes[:10], e.boxes[:10], atol=atol * 100)


# --------------------------------------------------------------------------------------------- anywhere


def test_graphs_and_compile_are_refused_together():
    with pytest.raises(ValidationError, match="cuda_graphs=true and compile='default'"):
        EngineConfig(cuda_graphs=True, compile="default")
    with pytest.raises(ValueError, match="cuda_graphs and compile='reduce-overhead'"):
        CopySettings(compile="reduce-overhead", cuda_graphs=True)
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedCalls(lambda x: x, max_graphs=0)


def test_on_the_cpu_graphed_calls_are_plain_calls():
    calls = []

    def double(x):
        calls.append(len(x))
        return {"twice": [x * 2]}

    graphed = GraphedCalls(double, capture_on_sighting=1)
    for _ in range(3):
        assert torch.equal(graphed(torch.ones(3))["twice"][0], torch.full((3,), 2.0))
    assert calls == [3, 3, 3] and graphed.graphs == graphed.captures == graphed.replays == 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cuda_graphs_on_the_cpu_give_the_eager_detections(architecture, at_most_two_torch_threads):
    """On the CPU the setting only fills short batches up with blank images (what a graph needs): the
    detections are the eager ones, and nothing is captured."""
    detector = _detector(architecture, "cpu")
    images = _images(0, "cpu")  # a batch of 4 and a short one of 2
    eager = detector.detect_resident(images)
    detector.configure(cuda_graphs=True)
    graphed = detector.detect_resident(images)
    _assert_close_detections(graphed, eager, atol=1e-4)
    assert detector._parts.graphs is not None and detector._parts.graphs.captures == 0


# --------------------------------------------------------------------------------------------- CUDA


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.Conv2d(16, 8, 3, padding=1)).cuda().eval()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_a_key_is_captured_on_its_second_sighting_and_replays_give_the_eager_outputs(dtype):
    net = _small_net()

    def fn(x):
        y = net(x)
        return {"map": y, "pooled": [y.mean(dim=(2, 3))]}

    graphed = GraphedCalls(fn)
    inputs = [torch.randn(2, 3, 16, 16, device="cuda") for _ in range(4)]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        expected = [fn(x) for x in inputs]
        for i, x in enumerate(inputs):
            got = graphed(x)
            torch.testing.assert_close(got["map"], expected[i]["map"])
            torch.testing.assert_close(got["pooled"][0], expected[i]["pooled"][0])
            assert graphed.captures == (0 if i == 0 else 1) and graphed.replays == i
    assert graphed.disabled is None and graphed.graphs == 1


@pytest.mark.gpu
def test_graphs_of_several_shapes_share_a_pool_and_the_least_used_is_dropped():
    """Alternating shapes: each replay's outputs are its own input's, although the graphs share memory."""
    net = _small_net()
    graphed = GraphedCalls(net, max_graphs=2, capture_on_sighting=1)
    shapes = [(2, 3, 16, 16), (2, 3, 24, 20), (2, 3, 16, 16), (2, 3, 24, 20), (4, 3, 8, 8), (2, 3, 16, 16)]
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(*shape, device="cuda")
            torch.testing.assert_close(graphed(x).clone(), net(x))
    # 16x16 and 24x20 captured, 8x8 dropped 16x16 (least recently used), which came back and dropped 24x20
    assert graphed.captures == 4 and graphed.graphs == 2 and graphed.replays == 6


@pytest.mark.gpu
def test_capturing_stops_when_graphs_are_dropped_before_they_pay_off(caplog):
    """One graph held and the shape changing every call: each call captured (one replay per capture) until
    2 * max_graphs captures, then new shapes run eagerly and the held graph still replays, with one warning."""
    net = _small_net()
    graphed = GraphedCalls(net, max_graphs=1, capture_on_sighting=1, name="thrash")
    sizes = [16, 24, 32, 40, 48, 40, 24]
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="clothret.cuda_graphs"):
        for size in sizes:
            x = torch.randn(2, 3, size, size, device="cuda")
            torch.testing.assert_close(graphed(x).clone(), net(x))
    assert graphed.stopped_capturing and graphed.captures == 2 and graphed.graphs == 1  # 24x24 held
    assert graphed.replays == 3  # one after each capture, then 24x24 again; 32, 40, 48 and 40 ran eagerly
    assert len([r for r in caplog.records if "vary too much" in r.getMessage()]) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_graphed_detectors_give_the_eager_detections(architecture):
    """Two batch shapes (4 + 2 images, the short batch filled up): each seen once (eager), then captured, then
    replayed; the replays run the eager call's kernels on the same padded batches, so they give its boxes."""
    detector = _detector(architecture, "cuda")
    images = _images(1, "cuda")
    detector.configure(channels_last=True, cuda_graphs=True)
    eager = detector.detect_resident(images, autocast_dtype=torch.bfloat16)
    graphs = detector._parts.graphs
    assert graphs.captures == 0
    for _ in range(2):
        graphed = detector.detect_resident(images, autocast_dtype=torch.bfloat16)
        _assert_close_detections(graphed, eager, atol=1e-4)
    assert graphs.disabled is None and graphs.captures == 2 and graphs.replays == 4


FAILING_CAPTURE = """
import logging, torch
from clothret.cuda_graphs import GraphedCalls
logging.basicConfig(level=logging.WARNING)
graphed = GraphedCalls(lambda x: x * float(x.sum().item()), name="syncs", capture_on_sighting=1)
x = torch.ones(4, device="cuda")
for _ in range(2):
    torch.testing.assert_close(graphed(x), x * 4)
assert graphed.disabled is not None and graphed.graphs == 0, graphed.disabled
torch.testing.assert_close(torch.arange(3, device="cuda").sum().cpu(), torch.tensor(3))  # the device still works
print("eager after a failed capture")
"""


@pytest.mark.gpu
def test_a_failed_capture_falls_back_to_eager_calls():
    """A function that waits for the device cannot be captured: it runs eagerly, with one warning (in a process
    of its own, so that the failed capture cannot disturb the other tests' device)."""
    done = subprocess.run([sys.executable, "-c", FAILING_CAPTURE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eager after a failed capture" in done.stdout
    assert done.stderr.count("CUDA graph capture failed") == 1, done.stderr[-3000:]
