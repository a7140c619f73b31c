"""Inference copies of networks that compute the same function with fewer passes over memory.

A network in eval mode does work at inference that its weights could have done once:

- a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it folds into the
  convolution's weights and bias (:func:`fold_batch_norms`): one pass over the activation fewer per
  norm layer (53 in a ResNet-50), the same outputs up to float rounding;
- under autocast on CUDA, PyTorch runs ``GroupNorm`` in float32 and so writes float32 activations that
  the next convolution casts back, and its CUDA kernel transposes a channels-last input to NCHW (and the
  next convolution transposes it back); :class:`InferenceGroupNorm` normalises in the input's precision
  and layout instead (statistics still accumulated in float32), which only moves the rounding to
  bf16/fp16 that the next convolution applied anyway;
- an FPN's top-down step upsamples the coarser map to a new tensor and sums it with the lateral one;
  :class:`InferenceFPN` adds the coarser map into the lateral one in place, broadcast over 2x2 blocks
  (:func:`add_top_down`): the largest maps of the network are read and written once, not written,
  read twice and written again, and the sums are the same.

:func:`make_inference_copy` does the first two on a deep copy (the detectors' inference backbones put in
the third), and fuses each convolution with the bias, ReLU and residual add after it
(:mod:`clothret.fused_convs`); the original model is left as it was (training,
checkpoints and torchvision's own forward keep using it). Folding and fusing follow the traced data flow
(``torch.fx``), so they only touch a convolution whose output goes nowhere else; a module that cannot be
traced (a detector head looping over its feature levels) is copied unfolded, its ``nn.Sequential`` towers
fused pair by pair (a debug log line says why).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from clothret.fused_convs import (
    fuse_graph_convs,
    fuse_sequential_convs,
    recompile_graph,
    sequential_pairs,
    set_submodule,
    tensor_version,
)

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float, input_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.group_norm`` of a channels-last (N, C, H, W) tensor (plus ``input_bias`` per channel, e.g. the bias
    of the convolution before) without leaving its layout or dtype.

    Two passes over ``x``: each channel's mean and variance over the pixels (a reduction along the outer
    dimension of the (N, H*W, C) storage, accumulated in float32), then one multiply-add; a group's
    statistics combine its channels' (equal counts: the mean of the means, the mean variance plus the
    variance of the means). PyTorch's CUDA kernel instead copies a channels-last input to NCHW first.
    """
    n, c, h, w = x.shape
    k = c // groups
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of a channels-last x
    channel_var, channel_mean = torch.var_mean(pixels, dim=1, correction=0)  # (n, c), in x's dtype
    # float32 from here (bf16/fp16 + float32 promotes); x + b: each channel's mean moves by its b, variances stay
    channel_mean = (channel_mean + input_bias if input_bias is not None else channel_mean.float()).view(n, groups, k)
    mean = channel_mean.mean(dim=2, keepdim=True)  # (n, groups, 1)
    spread = channel_mean - mean
    var = torch.addcmul(channel_var.view(n, groups, k), spread, spread).mean(dim=2, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    scale = rstd * weight.view(groups, k) if weight is not None else rstd.expand(n, groups, k)
    # out = (x + b - mean) * scale + bias = x * scale + shift
    shift = (mean * scale).neg_() if bias is None else torch.addcmul(bias.view(groups, k), mean, scale, value=-1)
    if input_bias is not None:
        shift = torch.addcmul(shift, input_bias.view(groups, k), scale)
    out = torch.addcmul(shift.reshape(n, 1, c).to(x.dtype), pixels, scale.reshape(n, 1, c).to(x.dtype))  # (n, h*w, c)
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class InferenceGroupNorm(nn.GroupNorm):
    """``GroupNorm`` that keeps a bf16/fp16 input in its precision under autocast (float32 statistics) and,
    on CUDA, a channels-last input in its layout (:func:`group_norm_channels_last`). ``input_bias``, when
    set, is added to the input per channel first: the bias of the convolution before, taken over by the
    norm's statistics at no cost on that path (:func:`conv_biases_into_group_norms`)."""

    input_bias: torch.Tensor | None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("input_bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in _LOW_PRECISION and torch.is_autocast_enabled(x.device.type)
        if x.is_cuda and _channels_last(x) and (low or x.dtype == torch.float32):
            with torch.autocast(x.device.type, enabled=False):
                return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps, self.input_bias)
        if self.input_bias is not None:
            x = x + self.input_bias.to(x.dtype).view(1, -1, 1, 1)
        if not low:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)

    @classmethod
    def of(cls, norm: nn.GroupNorm) -> InferenceGroupNorm:
        new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        new.load_state_dict(norm.state_dict())
        return new.to(next(norm.parameters(), torch.empty(0)).device).train(norm.training)


def add_top_down(lateral: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")`` (an FPN's top-down step).
    Where ``lateral`` is exactly twice ``top``'s size, in the same dtype, ``top`` is added into ``lateral`` in
    place, each value over its 2x2 block (the same sums, in either memory layout), and ``lateral`` returned."""
    n, c, h, w = lateral.shape
    if (h, w) != (2 * top.shape[-2], 2 * top.shape[-1]) or top.dtype != lateral.dtype:
        return lateral + F.interpolate(top, size=(h, w), mode="nearest")
    lateral.view(n, c, h // 2, 2, w // 2, 2).add_(top[:, :, :, None, :, None])
    return lateral


class InferenceFPN(FeaturePyramidNetwork):
    """torchvision's ``FeaturePyramidNetwork`` whose top-down steps run :func:`add_top_down`: with inputs
    padded to a multiple of 32 every step doubles exactly, and the upsampled copy (and the sum's read of
    it) is never made. Same modules, weights and outputs."""

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names, maps = list(x.keys()), list(x.values())
        last_inner = self.get_result_from_inner_blocks(maps[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(maps) - 2, -1, -1):
            last_inner = add_top_down(self.get_result_from_inner_blocks(maps[idx], idx), last_inner)
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, maps, names)
        return dict(zip(names, results))

    @classmethod
    def make(cls, fpn: FeaturePyramidNetwork) -> InferenceFPN:
        """``fpn`` itself, its class changed in place (for a copy: :func:`~copy.deepcopy` it first)."""
        if type(fpn) is not FeaturePyramidNetwork:
            raise TypeError(f"expected torchvision's FeaturePyramidNetwork, got {type(fpn).__name__}")
        fpn.__class__ = cls
        return fpn


def inference_group_norms(module: nn.Module) -> int:
    """Replace, in place, every ``nn.GroupNorm`` of ``module`` by an :class:`InferenceGroupNorm`; the count."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(parent, name, InferenceGroupNorm.of(child))
                count += 1
    return count


def conv_biases_into_group_norms(module: nn.Module) -> int:
    """Move, in place, the bias of each plain Conv2d followed by an :class:`InferenceGroupNorm` in an
    ``nn.Sequential`` (FCOS's head towers; :func:`~clothret.fused_convs.sequential_pairs`) into the norm's
    ``input_bias``: one pass over the activation fewer for each; the number moved."""
    moved = 0
    for _, _, conv, norm in sequential_pairs(module):
        if type(conv) is nn.Conv2d and conv.bias is not None and type(norm) is InferenceGroupNorm \
                and norm.input_bias is None and norm.num_channels == conv.out_channels:
            norm.input_bias = conv.bias.detach().clone()
            conv.bias = None
            moved += 1
    return moved


class _NormsAsLeaves(fx.Tracer):
    """torch.fx's tracer, keeping the foldable norms whole (FrozenBatchNorm2d would be traced into)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return type(module) in _FOLDABLE_NORMS or super().is_leaf_module(module, qualified_name)


def _foldable(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node`` is an eval-mode BatchNorm2d (or torchvision's FrozenBatchNorm2d) with running statistics fed
    only by a Conv2d's output."""
    if node.op != "call_module" or type(modules[node.target]) not in _FOLDABLE_NORMS:
        return False  # exact types: a subclass may do more (timm's BatchNormAct2d also applies an activation)
    norm = modules[node.target]
    if norm.training or norm.running_mean is None or len(node.args) != 1 or node.kwargs:
        return False
    source = node.args[0]
    return (
        isinstance(source, fx.Node)
        and source.op == "call_module"
        and type(modules[source.target]) is nn.Conv2d
        and len(source.users) == 1
    )


def _traced_copy(module: nn.Module) -> fx.GraphModule | None:
    """A traced (``torch.fx``) eval-mode copy of ``module``, its foldable norms kept whole; ``None`` when its
    forward cannot be traced."""
    source = copy.deepcopy(module).eval()
    try:
        return fx.GraphModule(source, _NormsAsLeaves().trace(source))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not a graph"
        logger.debug("%s: not traceable (%s): norms not folded", type(module).__name__, exc)
        return None


def _fold(graph_module: fx.GraphModule) -> int:
    """Fold, in place, each foldable BatchNorm2d of a traced graph into its convolution; the number folded."""
    modules = dict(graph_module.named_modules())
    folded = 0
    for node in list(graph_module.graph.nodes):
        if not _foldable(node, modules):
            continue
        conv_node = node.args[0]
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[node.target])
        set_submodule(graph_module, conv_node.target, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        graph_module.graph.erase_node(node)
        folded += 1
    if folded:
        recompile_graph(graph_module)
    return folded


def fold_batch_norms(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` (eval mode) with each foldable BatchNorm2d folded into its convolution.

    Returns the copy (a ``torch.fx.GraphModule`` when anything was folded) and the number of norms folded.
    A module whose ``forward`` cannot be traced is returned as a plain copy, with 0.
    """
    graph_module = _traced_copy(module)
    folded = _fold(graph_module) if graph_module is not None else 0
    return (graph_module, folded) if folded else (copy.deepcopy(module).eval(), 0)


def make_inference_copy(module: nn.Module, *, fuse_convs: bool = True) -> nn.Module:
    """An eval-mode copy of ``module`` for inference: batch norms folded (:func:`fold_batch_norms`), GroupNorms
    made :class:`InferenceGroupNorm`, and with ``fuse_convs`` each convolution's ReLU and residual add fused
    into it (:mod:`clothret.fused_convs`): through the traced graph where ``forward`` can be traced, else in
    the (Conv2d, ReLU) pairs of its ``nn.Sequential`` towers."""
    graph_module = _traced_copy(module)
    if graph_module is None:
        new = copy.deepcopy(module).eval()
        inference_group_norms(new)
        fused = (fuse_sequential_convs(new) + conv_biases_into_group_norms(new)) if fuse_convs else 0
        logger.debug("%s: untraced copy, %d convolutions fused with what follows", type(module).__name__, fused)
        return new
    folded = _fold(graph_module)
    inference_group_norms(graph_module)
    fused = fuse_graph_convs(graph_module) if fuse_convs else 0
    logger.debug("%s: %d batch norms folded, %d convolutions fused", type(module).__name__, folded, fused)
    return graph_module


class _ForwardFeatures(nn.Module):
    """``backbone.forward_features`` as a module's ``forward`` (what timm-based embedders call)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


class FoldedFeatures(nn.Module):
    """A backbone whose ``forward_features`` runs a folded copy; ``num_features`` as the original's."""

    def __init__(self, features: nn.Module, num_features: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def inference_forward_features(backbone: nn.Module, *, fuse_convs: bool = True) -> nn.Module:
    """:func:`make_inference_copy` of a timm backbone used through ``forward_features``."""
    features = make_inference_copy(_ForwardFeatures(backbone), fuse_convs=fuse_convs)
    return FoldedFeatures(features, int(getattr(backbone, "num_features", 0)))


@dataclass(frozen=True)
class CopySettings:
    """How an inference copy runs: channels-last weights, a ``torch.compile`` mode (or ``"off"``), folded norms,
    convolutions fused with their ReLU and residual add (with ``fold_norms``), CUDA graphs (not with
    ``compile``, whose ``reduce-overhead`` mode makes its own)."""

    channels_last: bool = False
    compile: str = "off"
    fold_norms: bool = True
    fuse_convs: bool = True
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.cuda_graphs and self.compile != "off":
            raise ValueError(f"cuda_graphs and compile={self.compile!r} do not go together: compile's "
                             "reduce-overhead mode captures CUDA graphs of its own")

    @property
    def fixed_batch(self) -> bool:
        """Batches are filled up to the batch size (with blank images), so that each image size gives one
        compiled graph or one CUDA graph."""
        return self.compile != "off" or self.cuda_graphs


@dataclass(frozen=True)
class MadeFrom:
    """What an inference copy was made from: its settings and the module's :func:`weights_version` then."""

    settings: CopySettings
    version: int

    @classmethod
    def now(cls, settings: CopySettings, module: nn.Module) -> MadeFrom:
        return cls(settings, weights_version(module))

    def still(self, settings: CopySettings, module: nn.Module) -> bool:
        """The copy is still right for ``settings`` and ``module``'s current weights."""
        return settings == self.settings and self.version == weights_version(module)


def weights_version(module: nn.Module) -> int:
    """A number that changes whenever a parameter or buffer of ``module`` is written in place or replaced
    (``load_state_dict``, an optimiser step): tells whether an inference copy is out of date. Tensors made
    under ``torch.inference_mode`` keep no version counter; they count as unchanged."""

    return hash(tuple((id(t), tensor_version(t)) for t in (*module.parameters(), *module.buffers())))


__all__ = [
    "CopySettings",
    "FoldedFeatures",
    "InferenceGroupNorm",
    "MadeFrom",
    "conv_biases_into_group_norms",
    "fold_batch_norms",
    "inference_forward_features",
    "group_norm_channels_last",
    "inference_group_norms",
    "make_inference_copy",
    "weights_version",
]
