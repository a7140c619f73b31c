"""Global descriptors over a (B, C, H, W) feature map: GeM, MAC and SPoC.

Each comes as a plain function and a small ``nn.Module`` (the timm way). ``DESCRIPTORS`` maps the
one-letter codes used by CGD ("G", "M", "S") to the modules; :func:`create_descriptor` builds one.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling: ``mean(x ** p) ** (1 / p)`` over the spatial axes, (B, C, H, W) -> (B, C)."""
    if x.ndim != 4:
        raise ValueError(f"gem expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    return F.adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).pow(1.0 / p).flatten(1)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions (global max pooling), (B, C, H, W) -> (B, C)."""
    if x.ndim != 4:
        raise ValueError(f"mac expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    return F.adaptive_max_pool2d(x, 1).flatten(1)


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (global average pooling), (B, C, H, W) -> (B, C)."""
    if x.ndim != 4:
        raise ValueError(f"spoc expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent ``p`` (set ``learn_p=False`` to freeze it)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.3f}, eps={self.eps}"


class MAC(nn.Module):
    """Global max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


DESCRIPTORS: dict[str, type[nn.Module]] = {"G": GeM, "M": MAC, "S": SPoC}
"""One-letter descriptor codes (as in CGD) -> pooling module."""


def validate_descriptors(descriptors: str) -> str:
    """Check a CGD descriptor string such as ``"GM"``; return it unchanged or raise ``ValueError``."""
    if not descriptors:
        raise ValueError(f"descriptors must be a non-empty string of letters from {sorted(DESCRIPTORS)}")
    bad = [c for c in descriptors if c not in DESCRIPTORS]
    if bad:
        raise ValueError(f"unknown descriptor(s) {bad} in {descriptors!r}; valid letters: {sorted(DESCRIPTORS)}")
    if len(set(descriptors)) != len(descriptors):
        raise ValueError(f"descriptor letters must not repeat, got {descriptors!r}")
    return descriptors


def create_descriptor(letter: str, *, gem_p: float = 3.0) -> nn.Module:
    """The pooling module for one descriptor letter; unknown letters raise ``ValueError``."""
    try:
        cls = DESCRIPTORS[letter]
    except KeyError:
        raise ValueError(f"unknown descriptor {letter!r}; valid: {sorted(DESCRIPTORS)}") from None
    return cls(p=gem_p) if cls is GeM else cls()


__all__ = ["DESCRIPTORS", "GeM", "MAC", "SPoC", "create_descriptor", "gem", "mac", "spoc", "validate_descriptors"]
