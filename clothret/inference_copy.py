"""Inference copies of networks that compute the same function with fewer passes over memory.

A network in eval mode does work at inference that its weights could have done once:

- a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it folds into the
  convolution's weights and bias (:func:`fold_batch_norms`): one pass over the activation fewer per
  norm layer (53 in a ResNet-50), the same outputs up to float rounding;
- under autocast on CUDA, PyTorch runs ``GroupNorm`` in float32 and so writes float32 activations that
  the next convolution casts back, and its CUDA kernel transposes a channels-last input to NCHW (and the
  next convolution transposes it back); :class:`InferenceGroupNorm` normalises in the input's precision
  and layout instead (statistics still accumulated in float32), which only moves the rounding to
  bf16/fp16 that the next convolution applied anyway.

:func:`inference_copy` does both on a deep copy; the original model is left as it was (training,
checkpoints and torchvision's own forward keep using it). Folding follows the traced data flow
(``torch.fx``), so it only folds a norm whose input is a convolution's output used nowhere else; a
module that cannot be traced is copied unfolded (a debug log line says why).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops.misc import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    """``F.group_norm`` of a channels-last (N, C, H, W) tensor without leaving its layout or dtype.

    Two passes over ``x``: each channel's mean and variance over the pixels (a reduction along the outer
    dimension of the (N, H*W, C) storage, accumulated in float32), then one multiply-add; a group's
    statistics combine its channels' (equal counts: the mean of the means, the mean variance plus the
    variance of the means). PyTorch's CUDA kernel instead copies a channels-last input to NCHW first.
    """
    n, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of a channels-last x
    channel_var, channel_mean = torch.var_mean(pixels, dim=1, correction=0)  # (n, c)
    channel_var = channel_var.float().view(n, groups, c // groups)
    channel_mean = channel_mean.float().view(n, groups, c // groups)
    mean = channel_mean.mean(dim=2, keepdim=True)
    var = channel_var.mean(dim=2, keepdim=True) + (channel_mean - mean).square().mean(dim=2, keepdim=True)
    scale = (var + eps).rsqrt().expand(n, groups, c // groups).reshape(n, c)
    shift = -mean.expand(n, groups, c // groups).reshape(n, c) * scale
    if weight is not None:
        scale, shift = scale * weight.float(), shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    out = torch.addcmul(shift.to(x.dtype)[:, None, :], pixels, scale.to(x.dtype)[:, None, :])  # (n, h*w, c)
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class InferenceGroupNorm(nn.GroupNorm):
    """``GroupNorm`` that keeps a bf16/fp16 input in its precision under autocast (float32 statistics) and,
    on CUDA, a channels-last input in its layout (:func:`group_norm_channels_last`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in _LOW_PRECISION and torch.is_autocast_enabled(x.device.type)
        if x.is_cuda and _channels_last(x) and (low or x.dtype == torch.float32):
            with torch.autocast(x.device.type, enabled=False):
                return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
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


def inference_group_norms(module: nn.Module) -> int:
    """Replace, in place, every ``nn.GroupNorm`` of ``module`` by an :class:`InferenceGroupNorm`; the count."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(parent, name, InferenceGroupNorm.of(child))
                count += 1
    return count


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


def fold_batch_norms(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` (eval mode) with each foldable BatchNorm2d folded into its convolution.

    Returns the copy (a ``torch.fx.GraphModule`` when anything was folded) and the number of norms folded.
    A module whose ``forward`` cannot be traced is returned as a plain copy, with 0.
    """
    source = copy.deepcopy(module).eval()
    try:
        graph_module = fx.GraphModule(source, _NormsAsLeaves().trace(source))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "leave it unfolded"
        logger.debug("%s: batch norms not folded (cannot trace its forward: %s)", type(module).__name__, exc)
        return source, 0
    modules = dict(graph_module.named_modules())
    folded = 0
    for node in list(graph_module.graph.nodes):
        if not _foldable(node, modules):
            continue
        conv_node = node.args[0]
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[node.target])
        parent, _, name = conv_node.target.rpartition(".")
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, fused)
        modules[conv_node.target] = fused
        node.replace_all_uses_with(conv_node)
        graph_module.graph.erase_node(node)
        folded += 1
    if not folded:
        return source, 0
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module, folded


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


def fold_forward_features(backbone: nn.Module) -> tuple[nn.Module, int]:
    """:func:`fold_batch_norms` for a timm backbone used through ``forward_features``."""
    folded, count = fold_batch_norms(_ForwardFeatures(backbone))
    if not count:
        return copy.deepcopy(backbone).eval(), 0
    return FoldedFeatures(folded, int(getattr(backbone, "num_features", 0))), count


@dataclass(frozen=True)
class CopySettings:
    """How an inference copy runs: channels-last weights, a ``torch.compile`` mode (or ``"off"``), folded norms."""

    channels_last: bool = False
    compile: str = "off"
    fold_norms: bool = True


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

    def version(t: torch.Tensor) -> int:
        try:
            return t._version
        except RuntimeError:
            return 0

    return hash(tuple((id(t), version(t)) for t in (*module.parameters(), *module.buffers())))


__all__ = [
    "CopySettings",
    "FoldedFeatures",
    "InferenceGroupNorm",
    "MadeFrom",
    "fold_batch_norms",
    "fold_forward_features",
    "group_norm_channels_last",
    "inference_group_norms",
    "weights_version",
]
