"""Inference copies (clothret.inference_copy): batch norms folded into convolutions and GroupNorm kept in the
autocast dtype compute what the original networks compute, leave the originals alone, and follow weight
changes; on the detectors and embedders the engine runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from clothret.detection.torchvision_backend import (
    ARCHITECTURES,
    TorchvisionDetector,
    TorchvisionDetectorConfig,
    build_detector_model,
)
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.model import Embedder, EmbeddingNet
from clothret.inference_copy import (
    InferenceFPN,
    InferenceGroupNorm,
    add_top_down,
    fold_batch_norms,
    group_norm_channels_last,
    inference_forward_features,
    inference_group_norms,
)

pytestmark = pytest.mark.usefixtures("at_most_two_torch_threads")

TINY = {"backbone": "mobilenet_v3_small", "fpn_channels": 32, "min_size": 64, "max_size": 96}
SMALL_EMBEDDER = {"backbone": "resnet10t", "backbone_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
                  "descriptors": "GM", "dim": 32, "input_size": 48}


def _trained_looking(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch/group norm statistics and affine weights far from the identity that init leaves."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.25)
    return module.eval()


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_folding_a_resnet_trunk_removes_every_norm_and_keeps_its_outputs():
    torch.manual_seed(0)
    net = _trained_looking(torchvision.models.resnet18(weights=None))
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        want = net(x)
    folded, count = fold_batch_norms(net)
    assert count == _count(net, nn.BatchNorm2d) == 20
    assert _count(folded, nn.BatchNorm2d) == 0
    with torch.inference_mode():
        got = folded(x)
        again = net(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, want, rtol=0, atol=0)  # the original is untouched
    assert _count(net, nn.BatchNorm2d) == 20


def test_torchvisions_frozen_batch_norms_fold_too():
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for buffer in (m.weight, m.running_var):
                buffer.copy_(torch.rand(buffer.shape, generator=gen) + 0.5)
            for buffer in (m.bias, m.running_mean):
                buffer.copy_(torch.rand(buffer.shape, generator=gen) - 0.5)
    x = torch.randn(2, 3, 64, 64)
    folded, count = fold_batch_norms(net)
    assert count == 20 and _count(folded, FrozenBatchNorm2d) == 0
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


class _SharedConv(nn.Module):
    """A convolution whose output feeds a norm and a skip: the norm cannot fold into it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.norm2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.norm2(self.conv2(self.norm(y) + y))


def test_a_norm_is_folded_only_into_a_convolution_used_nowhere_else():
    torch.manual_seed(0)
    net = _trained_looking(_SharedConv())
    x = torch.randn(2, 3, 8, 8)
    folded, count = fold_batch_norms(net)
    assert count == 1  # norm2 after conv2; not norm, whose conv output is also the skip
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.norm(self.conv(x))
        return x


def test_an_untraceable_module_is_copied_unfolded():
    net = _trained_looking(_Untraceable())
    copy, count = fold_batch_norms(net)
    assert count == 0 and copy is not net and isinstance(copy.norm, nn.BatchNorm2d)
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(copy(x), net(x))


def test_group_norm_keeps_the_autocast_dtype_and_its_values():
    torch.manual_seed(0)
    norm = _trained_looking(nn.GroupNorm(4, 16))
    x = torch.randn(2, 16, 12, 12) * 3 + 1
    want = nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    net = nn.Sequential(norm)
    assert inference_group_norms(net) == 1 and isinstance(net[0], InferenceGroupNorm)
    torch.testing.assert_close(net[0](x), want)  # outside autocast: GroupNorm itself
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            got = net[0](x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.03)  # bf16/fp16 rounding only
    assert torch.equal(net[0].weight, norm.weight) and net[0].weight.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_group_norm_is_group_norm(dtype):
    """The layout-keeping GroupNorm (what the inference copies use on CUDA) against F.group_norm, on the CPU."""
    torch.manual_seed(0)
    x = (torch.randn(3, 32, 9, 7) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(32) + 0.5, torch.rand(32) - 0.5
    want = nn.functional.group_norm(x, 8, weight, bias, 1e-5)
    got = group_norm_channels_last(x.to(dtype), 8, weight, bias, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    tol = {torch.float32: 1e-5, torch.bfloat16: 0.03, torch.float16: 0.005}[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    plain = group_norm_channels_last(x, 4, None, None, 1e-5)  # no affine part
    torch.testing.assert_close(plain, nn.functional.group_norm(x, 4, eps=1e-5), rtol=1e-5, atol=1e-5)


def test_channels_last_group_norm_runs_few_kernels():
    """Each operation is a kernel launch on CUDA, and FCOS's towers call the norm 40 times per batch: two passes
    over the activation and a dozen tiny operations on the statistics, no more (views aside)."""
    from clothret.op_count import OpCounter

    x = torch.randn(2, 32, 6, 5).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    weight, bias, input_bias = torch.rand(32), torch.rand(32), torch.rand(32)
    with OpCounter(kernels_only=True) as kernels:
        group_norm_channels_last(x, 8, weight, bias, 1e-5, input_bias)
    assert kernels.ops <= 14, kernels.by_name  # 25 before the statistics were combined in fewer steps


@pytest.mark.parametrize("extra", ["maxpool", "p6p7", "none"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_inference_fpn_gives_torchvisions_maps_without_upsampled_copies(extra, layout):
    """The same maps, bit for bit, in either layout; where every step doubles exactly no upsampling runs,
    and a map that does not double (an odd size) takes torchvision's interpolate."""
    import copy

    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

    from clothret.op_count import OpCounter

    torch.manual_seed(0)
    blocks = {"maxpool": LastLevelMaxPool(), "p6p7": LastLevelP6P7(16, 16), "none": None}[extra]
    fpn = FeaturePyramidNetwork([8, 12, 16], 16, extra_blocks=blocks).eval()
    fused = InferenceFPN.make(copy.deepcopy(fpn))
    assert type(fpn) is FeaturePyramidNetwork and type(fused) is InferenceFPN
    for sizes, upsampled in (((32, 40), (16, 20), (8, 10)), 0), (((31, 40), (16, 20), (8, 10)), 1):
        maps = {name: torch.randn(2, c, h, w).contiguous(memory_format=layout)
                for name, c, (h, w) in zip("abc", (8, 12, 16), sizes)}
        with torch.inference_mode():
            want = fpn(maps)
            with OpCounter() as ops:
                got = fused(maps)
        assert list(got) == list(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        assert ops.by_name["aten.upsample_nearest2d.vec"] == upsampled, ops.by_name
    with pytest.raises(TypeError, match="FeaturePyramidNetwork"):
        InferenceFPN.make(nn.Identity())


def test_the_top_down_step_adds_in_place_only_what_it_may():
    lateral, top = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 3, 4)
    want = lateral + nn.functional.interpolate(top, size=(6, 8), mode="nearest")
    assert add_top_down(lateral, top) is lateral
    torch.testing.assert_close(lateral, want, rtol=0, atol=0)
    low = torch.randn(1, 4, 6, 8, dtype=torch.bfloat16)  # dtypes differ: a new float32 sum, as torchvision's
    got = add_top_down(low, top)
    assert got is not low and got.dtype == torch.float32


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_a_detector_with_folded_norms_finds_the_same_boxes(architecture):
    torch.manual_seed(0)
    head_norm = {"head_norm": "group"} if architecture != "faster_rcnn" else {}
    config = TorchvisionDetectorConfig(architecture=architecture, **TINY, **head_norm, score_thresh=0.0,
                                       detections_per_img=30)
    detector = TorchvisionDetector(_trained_looking(build_detector_model(config)), config)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)) for h, w in
              ((60, 80), (60, 80), (72, 48))]
    detector.configure(fold_norms=False)
    plain = detector.detect_resident(images)
    detector.configure(fold_norms=True)
    assert _count(detector._parts.backbone, nn.BatchNorm2d) == 0 < _count(detector.model.backbone, nn.BatchNorm2d)
    folded = detector.detect_resident(images)
    for p, f in zip(plain, folded):
        np.testing.assert_allclose(f.scores[:10], p.scores[:10], atol=1e-4)
        np.testing.assert_allclose(f.boxes[:10], p.boxes[:10], atol=1e-2)
        np.testing.assert_array_equal(f.labels[:10], p.labels[:10])


def test_an_embedder_with_folded_norms_gives_the_same_embeddings():
    torch.manual_seed(0)
    net = _trained_looking(EmbeddingNet(EmbedderConfig(**SMALL_EMBEDDER), pretrained=False))
    embedder = Embedder(net, batch_size=8)
    pixels = torch.randint(0, 256, (20, 3, 48, 48)).float()
    embedder.configure(fold_norms=False)
    plain = embedder.embed_pixels(pixels)
    embedder.configure(fold_norms=True)
    folded = embedder.embed_pixels(pixels)
    assert _count(embedder._forward, nn.BatchNorm2d) == 0 < _count(embedder.net, nn.BatchNorm2d)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5)
    features = inference_forward_features(net.backbone)
    assert _count(features, nn.BatchNorm2d) == 0 and features.num_features == net.backbone.num_features


def test_inference_copies_follow_new_weights():
    """Weights loaded after the copy was made (a new checkpoint into the same object) are the ones used."""
    torch.manual_seed(0)
    net = _trained_looking(EmbeddingNet(EmbedderConfig(**SMALL_EMBEDDER), pretrained=False), seed=1)
    other = _trained_looking(EmbeddingNet(EmbedderConfig(**SMALL_EMBEDDER), pretrained=False), seed=2)
    embedder = Embedder(net, batch_size=8)
    pixels = torch.randint(0, 256, (4, 3, 48, 48)).float()
    before = embedder.embed_pixels(pixels)
    net.load_state_dict(other.state_dict())
    after = embedder.embed_pixels(pixels)
    torch.testing.assert_close(after, Embedder(other, batch_size=8).embed_pixels(pixels), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)

    config = TorchvisionDetectorConfig(architecture="retinanet", **TINY, score_thresh=0.0, detections_per_img=10)
    torch.manual_seed(3)
    detector = TorchvisionDetector(_trained_looking(build_detector_model(config), seed=3), config)
    torch.manual_seed(4)
    replacement = _trained_looking(build_detector_model(config), seed=4)
    images = [torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)]
    first = detector.detect_resident(images)[0]
    detector.model.load_state_dict(replacement.state_dict())
    second = detector.detect_resident(images)[0]
    want = TorchvisionDetector(replacement, config).detect_resident(images)[0]
    np.testing.assert_allclose(second.scores, want.scores, atol=1e-5)
    assert not np.allclose(second.scores[:5], first.scores[:5], atol=1e-3)


def test_a_norm_with_its_own_activation_is_not_folded_away():
    """timm's BatchNormAct2d (a BatchNorm2d subclass that also applies an activation, in MobileNetV3 and
    EfficientNet) must not be folded as if it were a plain norm: the embedding stays the same."""
    torch.manual_seed(0)
    config = EmbedderConfig(backbone="mobilenetv3_small_050", backbone_kwargs={}, descriptors="GM", dim=32, input_size=64)
    net = _trained_looking(EmbeddingNet(config, pretrained=False))
    embedder = Embedder(net, batch_size=8)
    pixels = torch.randint(0, 256, (6, 3, 64, 64)).float()
    embedder.configure(fold_norms=False)
    plain = embedder.embed_pixels(pixels)
    embedder.configure(fold_norms=True)
    torch.testing.assert_close(embedder.embed_pixels(pixels), plain, rtol=1e-4, atol=1e-5)
