"""Inference copies of networks that compute the same function with fewer passes over memory.

A network in eval mode does work at inference that its weights could have done once:

- a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it folds into the
  convolution's weights and bias (:func:`fold_batch_norms`): one pass over the activation fewer per
  norm layer (53 in a ResNet-50), the same outputs up to float rounding;
- under autocast on CUDA, PyTorch runs ``GroupNorm`` in float32 and so writes float32 activations that
  the next convolution casts back; :class:`AutocastGroupNorm` normalises in the input's precision
  instead (the kernel still accumulates its statistics in float32), which only moves the rounding to
  bf16/fp16 that the next convolution applied anyway (autocast on the CPU already does this).

:func:`inference_copy` does both on a deep copy; the original model is left as it was (training,
checkpoints and torchvision's own forward keep using it). Folding follows the traced data flow
(``torch.fx``), so it only folds a norm whose input is a convolution's output used nowhere else; a
module that cannot be traced is copied unfolded (a debug log line says why).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

logger = logging.getLogger(__name__)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


class AutocastGroupNorm(nn.GroupNorm):
    """``GroupNorm`` that keeps a bf16/fp16 input in its precision under autocast (float32 statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _LOW_PRECISION or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)

    @classmethod
    def of(cls, norm: nn.GroupNorm) -> AutocastGroupNorm:
        new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        new.load_state_dict(norm.state_dict())
        return new.to(next(norm.parameters(), torch.empty(0)).device).train(norm.training)


def group_norms_in_autocast_dtype(module: nn.Module) -> int:
    """Replace, in place, every ``nn.GroupNorm`` of ``module`` by an :class:`AutocastGroupNorm`; the count."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(parent, name, AutocastGroupNorm.of(child))
                count += 1
    return count


def _foldable(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node`` is an eval-mode BatchNorm2d with running statistics fed only by a Conv2d's output."""
    if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
        return False
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
        graph_module = fx.symbolic_trace(source)
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
    "AutocastGroupNorm",
    "FoldedFeatures",
    "fold_batch_norms",
    "fold_forward_features",
    "group_norms_in_autocast_dtype",
    "weights_version",
]
