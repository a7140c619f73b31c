"""Convolutions fused with their bias, ReLU and residual add (clothret.fused_convs): the rewritten graphs and
towers compute what the networks computed, on the plain ops here; the cuDNN kernels themselves run in
tests/test_engine_gpu.py."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import fx, nn
from torchvision.models.detection.retinanet import RetinaNetHead

from clothret.fused_convs import ConvReLU, fuse_graph_convs, fuse_sequential_convs
from clothret.inference_copy import make_inference_copy

pytestmark = pytest.mark.usefixtures("at_most_two_torch_threads")


def _randomise_norms(module: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine weights far from the identity (folded biases then matter)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def _count(module: nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in module.modules())


def _relu_calls(graph_module: fx.GraphModule) -> int:
    modules = dict(graph_module.named_modules())
    return sum(
        (n.op == "call_module" and type(modules[n.target]) is nn.ReLU)
        or (n.op == "call_function" and n.target in (torch.relu, nn.functional.relu))
        for n in graph_module.graph.nodes
    )


def test_every_relu_of_a_resnet_trunk_is_fused_and_the_outputs_stay():
    torch.manual_seed(0)
    net = _randomise_norms(torchvision.models.resnet50(weights=None))
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        want = net(x)
        copy_ = make_inference_copy(net)
        got = copy_(x)
    # the stem, 2 per block and each block's add: 1 + 16 * 3
    assert _count(copy_, ConvReLU) == 49 and _relu_calls(copy_) == 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))  # outputs up to ~1e3
    # the four downsample convolutions gave their bias to the block's last convolution
    downsample = [getattr(m, "0") for name, m in copy_.named_modules() if name.endswith("downsample")]
    assert len(downsample) == 4 and all(conv.bias is None for conv in downsample)


def test_without_fusion_the_copy_keeps_its_relus():
    net = _randomise_norms(torchvision.models.resnet18(weights=None))
    copy_ = make_inference_copy(net, fuse_convs=False)
    assert _count(copy_, ConvReLU) == 0 and _relu_calls(copy_) == 17


def test_a_timm_trunk_is_fused_through_its_identity_modules():
    torch.manual_seed(0)
    net = _randomise_norms(timm.create_model("resnet26d", pretrained=False, num_classes=0))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = net(x)
        copy_ = make_inference_copy(net)
        got = copy_(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # drop-path and anti-aliasing are nn.Identity between a conv and its ReLU: skipped, so every ReLU fuses
    assert _count(copy_, ConvReLU) == 3 + 8 * 3  # the deep stem's three, then per block two and the add
    assert _relu_calls(copy_) == 0


def test_the_towers_of_an_untraceable_head_are_fused():
    torch.manual_seed(0)
    head = RetinaNetHead(16, 9, 13).eval()
    features = [torch.randn(2, 16, s, s) for s in (16, 8, 4)]
    with torch.inference_mode():
        want = head(features)
        copy_ = make_inference_copy(head)
        got = copy_(features)
    assert _count(copy_, ConvReLU) == 8 and _count(copy_, nn.ReLU) == 0
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    assert _count(head, ConvReLU) == 0 and _count(head, nn.ReLU) == 8  # the original is untouched


def test_a_conv_called_twice_or_used_twice_is_left_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.other = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a = torch.relu(self.conv(x))
            b = torch.relu(self.conv(a))  # the same module twice
            c = self.other(b)
            return torch.relu(c) + c  # the output used twice

    module = Shared().eval()
    x = torch.randn(1, 4, 8, 8)
    graph_module = fx.symbolic_trace(module)
    assert fuse_graph_convs(graph_module) == 0
    torch.testing.assert_close(graph_module(x), module(x))


def test_a_sequential_with_its_own_forward_or_a_padding_mode_is_left_alone():
    class Reversed(nn.Sequential):
        def forward(self, x):
            for m in reversed(self):
                x = m(x)
            return x

    reflect = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    module = nn.Sequential(Reversed(nn.Conv2d(3, 3, 1), nn.ReLU()), reflect)
    assert fuse_sequential_convs(module) == 0


def test_conv_relu_computes_relu_of_conv_plus_residual_and_checks_its_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    fused = ConvReLU(conv)
    x, z = torch.randn(2, 4, 9, 11), torch.randn(2, 6, 5, 6)
    torch.testing.assert_close(fused(x), torch.relu(conv(x)))
    torch.testing.assert_close(fused(x, z), torch.relu(conv(x) + z))
    torch.testing.assert_close(fused(x, z[:, :1]), torch.relu(conv(x) + z[:, :1]))  # broadcast: the plain ops
    with pytest.raises(ValueError, match="zero padding"):
        ConvReLU(nn.Conv2d(4, 4, 3, padding="same"))


def test_fcos_tower_conv_biases_move_into_their_group_norms():
    from torchvision.models.detection.fcos import FCOSHead

    from clothret.inference_copy import InferenceGroupNorm, group_norm_channels_last

    torch.manual_seed(0)
    head = FCOSHead(32, 1, 13, num_convs=2).eval()
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-2, 2)  # far from torchvision's zero init, so a lost bias shows
    features = [torch.randn(2, 32, s, s) for s in (16, 8)]
    with torch.inference_mode():
        want = head(features)
        copy_ = make_inference_copy(head)
        got = copy_(features)
    norms = [m for m in copy_.modules() if type(m) is InferenceGroupNorm]
    assert len(norms) == 4 and all(n.input_bias is not None for n in norms)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
    # the channels-last path (CUDA's) takes the bias into its statistics
    x = torch.randn(2, 32, 6, 5).contiguous(memory_format=torch.channels_last)
    b, w, beta = torch.randn(32), torch.rand(32) + 0.5, torch.randn(32)
    torch.testing.assert_close(group_norm_channels_last(x, 8, w, beta, 1e-5, b),
                               nn.functional.group_norm(x + b.view(1, -1, 1, 1), 8, w, beta, 1e-5),
                               rtol=1e-5, atol=1e-5)
