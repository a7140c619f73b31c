"""Detector backends by name: each one loads a :class:`~clothret.detection.types.Detector` from weights.

A loader is ``loader(weights_url, *, name, device) -> Detector``. Backends register a callable, or a
``"module:attribute"`` string that is imported only when the backend is first used (so naming a backend
in a model bundle does not import torch, and an optional backend's packages are needed only when it
runs)::

    register_backend("mmdet", "clothret.detection.mmdet_backend:MMDetDetector.from_weights")
    detector = load_detector(entry, device="cuda")   # entry.backend == "mmdet"
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Protocol

from clothret.detection.types import Detector

logger = logging.getLogger(__name__)

DetectorLoader = Callable[..., Detector]
"""``loader(weights_url, *, name, device)`` -> a :class:`Detector`."""

_LOADERS: dict[str, DetectorLoader | str] = {}


class DetectorSpec(Protocol):
    """What :func:`load_detector` reads from a bundle's detector entry."""

    name: str
    backend: str
    weights: str


def register_backend(name: str, loader: DetectorLoader | str, *, replace: bool = False) -> None:
    """Register a backend's loader (a callable, or ``"module:attribute.path"`` imported on first use).

    A name registered already raises ``ValueError`` unless ``replace``.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        if not module or not attr:
            raise ValueError(f"loader for backend {name!r} must be a callable or 'module:attribute', got {loader!r}")
    elif not callable(loader):
        raise ValueError(f"loader for backend {name!r} must be callable, got {type(loader).__name__}")
    if name in _LOADERS and not replace:
        raise ValueError(f"detector backend {name!r} is registered already (registered: {backends()})")
    _LOADERS[name] = loader


def unregister_backend(name: str) -> None:
    """Remove a backend (tests and plugins that replace one)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown detector backend {name!r}; valid: {backends()}")
    del _LOADERS[name]


def backends() -> list[str]:
    """The registered backend names, sorted."""
    return sorted(_LOADERS)


def check_backend(name: str) -> str:
    """``name`` if it is registered, else ``ValueError`` listing the valid names."""
    if name not in _LOADERS:
        raise ValueError(f"unknown detector backend {name!r}; valid: {backends()}")
    return name


def get_loader(name: str) -> DetectorLoader:
    """The loader of a registered backend (imports a lazily registered one)."""
    loader = _LOADERS[check_backend(name)]
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")
        try:
            loader = functools.reduce(getattr, attr.split("."), importlib.import_module(module))
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"detector backend {name!r} could not be loaded from {module}:{attr} ({exc})") from exc
        _LOADERS[name] = loader
    return loader


def load_detector(entry: DetectorSpec, *, device: str = "cpu") -> Detector:
    """Build the detector a bundle entry names (``entry.backend``, ``entry.weights``, ``entry.name``)."""
    detector = get_loader(entry.backend)(entry.weights, name=entry.name, device=device)
    logger.debug("loaded detector %s with backend %s", entry.name, entry.backend)
    return detector


register_backend("torchvision", "clothret.detection.torchvision_backend:TorchvisionDetector.from_weights")
register_backend("mmdet", "clothret.detection.mmdet_backend:MMDetDetector.from_weights")  # needs `make mmdet`

__all__ = [
    "DetectorLoader",
    "DetectorSpec",
    "backends",
    "check_backend",
    "get_loader",
    "load_detector",
    "register_backend",
    "unregister_backend",
]
