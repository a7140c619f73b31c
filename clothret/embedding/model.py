"""The embedding network (timm backbone + CGD head) and :class:`Embedder`, its inference wrapper.

``EmbeddingNet(config)`` maps (B, 3, S, S) normalised images to (B, dim) l2-normalised embeddings. The head
follows CGD (Combination of Multiple Global Descriptors): each descriptor (GeM / MAC / SPoC) of the last
feature map goes through its own linear layer and is l2-normalised; the parts are concatenated and
l2-normalised again. The auxiliary classifier used in training lives in :mod:`clothret.embedding.training`
and is not part of the saved weights.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clothret.cuda_graphs import GraphedCalls
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.pooling import create_descriptor
from clothret.inference_copy import CopySettings, MadeFrom, inference_forward_features
from clothret.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

CARD_KIND = "timm-embedder"


def create_backbone(config: EmbedderConfig, *, pretrained: bool | None = None) -> nn.Module:
    """The timm feature extractor (no pooling, no classifier) of a config.

    ``pretrained=None`` follows ``config.pretrained``; rebuilding from saved weights passes ``False``.
    """
    use_pretrained = config.pretrained if pretrained is None else pretrained
    kwargs = dict(config.backbone_kwargs)
    if use_pretrained and config.pretrained_file:
        kwargs["pretrained_cfg_overlay"] = dict(file=config.pretrained_file)
        logger.info("loading %s ImageNet weights from %s", config.backbone, config.pretrained_file)
    elif use_pretrained:
        logger.info("loading %s pretrained weights through timm's hub", config.backbone)
    try:
        return timm.create_model(config.backbone, pretrained=use_pretrained, num_classes=0, global_pool="", **kwargs)
    except TypeError as exc:
        raise ValueError(f"timm backbone {config.backbone!r} rejected backbone_kwargs {config.backbone_kwargs}: {exc}") from exc


class EmbeddingNet(nn.Module):
    """timm features -> CGD descriptors -> (B, dim) l2-normalised embedding.

    The descriptors pool the backbone's ``forward_features`` map (``num_features`` channels), i.e. before any
    head convolution some timm models (MobileNetV3, ...) apply after pooling.
    """

    def __init__(self, config: EmbedderConfig, *, pretrained: bool | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config, pretrained=pretrained)
        self.num_features = int(self.backbone.num_features)
        part = config.dim // len(config.descriptors)
        self.pools = nn.ModuleList(create_descriptor(c, gem_p=config.gem_p) for c in config.descriptors)
        self.projections = nn.ModuleList(nn.Linear(self.num_features, part) for _ in config.descriptors)

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding and the first descriptor's raw (B, num_features) vector (CGD's auxiliary branch)."""
        fmap = self.backbone.forward_features(x)
        if fmap.ndim != 4:
            raise ValueError(
                f"backbone {self.config.backbone!r} returned shape {tuple(fmap.shape)}; a (B, C, H, W) feature map "
                "is needed (use a convolutional timm model)"
            )
        pooled = [pool(fmap) for pool in self.pools]
        parts = [F.normalize(proj(p), dim=1) for proj, p in zip(self.projections, pooled)]
        return F.normalize(torch.cat(parts, dim=1), dim=1), pooled[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[0]


def preprocess(crops: Sequence[np.ndarray], config: EmbedderConfig) -> torch.Tensor:
    """(H, W, 3) uint8 RGB crops -> (n, 3, S, S) float tensor, resized (bilinear) and normalised."""
    size = config.input_size
    batch = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        arr = np.asarray(crop)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"crop {i} must be (H, W, 3) uint8 RGB, got shape {arr.shape} dtype {arr.dtype}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"crop {i} is empty (shape {arr.shape})")
        batch[i] = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


class Embedder:
    """Crops in, l2-normalised float32 embeddings out; wraps an :class:`EmbeddingNet` in eval mode."""

    def __init__(self, net: EmbeddingNet, *, name: str | None = None, device: str = "cpu", batch_size: int = 128) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = name or f"{net.config.backbone}-{net.config.descriptors}-{net.config.dim}"
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.net
        self._made: MadeFrom | None = None  # what ``_forward`` was made from
        self._lock = threading.Lock()  # one batch at a time through ``_forward`` (CUDA graphs' outputs)

    def configure(self, *, channels_last: bool = False, compile: str = "off", fold_norms: bool = True,
                  fuse_convs: bool = True, cuda_graphs: bool = False) -> None:
        """How :meth:`embed_pixels` runs the network: weights in ``channels_last`` memory format,
        ``torch.compile`` in the given mode (``"off"``: eager) or, with ``cuda_graphs``, CUDA graphs
        (:mod:`clothret.cuda_graphs`), and with ``fold_norms`` on an inference copy whose batch norms are
        folded into the convolutions and, with ``fuse_convs``, whose convolutions run with their ReLU and
        residual add in one kernel (:mod:`clothret.inference_copy`). Calling it again with the same settings
        does nothing unless the network's weights changed since."""
        self._configure(CopySettings(channels_last, compile, fold_norms, fuse_convs, cuda_graphs))

    def _configure(self, settings: CopySettings) -> None:
        if self._made is not None and self._made.still(settings, self.net):
            return
        fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.net.to(memory_format=fmt)
        forward: nn.Module = self.net
        if settings.fold_norms:
            backbone = inference_forward_features(self.net.backbone, fuse_convs=settings.fuse_convs)
            forward = copy.deepcopy(self.net, {id(self.net.backbone): backbone})  # the copy gets the folded one
            forward.to(memory_format=fmt)
        if settings.compile != "off":
            forward = torch.compile(forward, mode=settings.compile, dynamic=False)
        elif settings.cuda_graphs:
            forward = GraphedCalls(forward, name=f"embedder {self.name}")
        self._forward = forward
        self._made = MadeFrom.now(settings, self.net)

    @property
    def config(self) -> EmbedderConfig:
        return self.net.config

    @property
    def dim(self) -> int:
        return self.net.config.dim

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) float32 l2-normalised embeddings of (H, W, 3) uint8 RGB crops, in batches."""
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = preprocess(crops[start : start + self.batch_size], self.config).to(self.device)
                out[start : start + len(x)] = self.net(x).float().cpu().numpy()
        return out

    def embed_pixels(self, pixels: torch.Tensor, *, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """(n, dim) float32 l2-normalised embeddings of (n, 3, S, S) crops in [0, 255] on :attr:`device`
        (S = the config's ``input_size``), normalised and embedded there, in batches, under autocast when
        ``autocast_dtype`` is given. With ``torch.compile`` or CUDA graphs on, each batch is padded to
        ``batch_size`` rows so that one graph serves every batch."""
        size = self.config.input_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"pixels must be (n, 3, {size}, {size}), got shape {tuple(pixels.shape)}")
        out = torch.empty((len(pixels), self.dim), dtype=torch.float32, device=pixels.device)
        if not len(pixels):
            return out
        mean = torch.tensor(self.config.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        with self._lock, torch.inference_mode(), torch.autocast(
            pixels.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            settings = self._made.settings if self._made is not None else CopySettings()
            self._configure(settings)  # the same settings: remade only if the weights changed
            channels_last = settings.channels_last
            for start in range(0, len(pixels), self.batch_size):
                x = (pixels[start : start + self.batch_size].div(255.0) - mean) / std
                n = len(x)
                if settings.fixed_batch and n < self.batch_size:
                    x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out[start : start + n] = self._forward(x)[:n].float()
        return out

    def save(self, weights_url: str, **card: object) -> str:
        """Write the network's weights and a ``timm-embedder`` model card; returns the weights' sha256."""
        return save_embedding_net(self.net, weights_url, name=self.name, **card)

    @classmethod
    def from_weights(
        cls, weights_url: str, *, name: str | None = None, device: str = "cpu", batch_size: int = 128
    ) -> Embedder:
        """Rebuild from a weights file and its model card (``"kind": "timm-embedder"``); strict load."""
        state, card = load_weights(weights_url)
        if card.get("kind") != CARD_KIND:
            raise ValueError(f"{weights_url}: model card kind is {card.get('kind')!r}, expected {CARD_KIND!r}")
        if "config" not in card:
            raise ValueError(f"{weights_url}: model card has no 'config'")
        config = EmbedderConfig.model_validate(card["config"])
        net = EmbeddingNet(config, pretrained=False)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{weights_url}: weights do not fit the config in its model card: {exc}") from exc
        return cls(net, name=name or card.get("name"), device=device, batch_size=batch_size)


def save_embedding_net(net: EmbeddingNet, weights_url: str, *, name: str | None = None, **card: object) -> str:
    """Save an :class:`EmbeddingNet` (inference weights only) with its config in the model card."""
    full_card = {"kind": CARD_KIND, "name": name, "config": net.config.model_dump(mode="json"), **card}
    return save_weights(net.state_dict(), weights_url, full_card)


__all__ = ["CARD_KIND", "Embedder", "EmbeddingNet", "create_backbone", "preprocess", "save_embedding_net"]
