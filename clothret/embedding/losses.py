"""Metric-learning losses over a batch of embeddings and integer labels.

Plain functions (``softmax_loss``, ``center_loss``, ``batch_hard_triplet_loss``, ``multi_similarity_loss``)
plus :class:`CenterLoss` (it owns the learnable class centres) and :class:`CombinedLoss`, the weighted sum
used to train the embedders (softmax + center + triplet + multi-similarity, as in the DeepFashion2 paper).
Embeddings are expected to be l2-normalised where a loss says so.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

logger = logging.getLogger(__name__)


def _check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels must be (B,) with B={embeddings.shape[0]}, got shape {tuple(labels.shape)}")


def softmax_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy of (B, C) logits with label smoothing."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Half the mean squared distance of each feature to its class centre (Wen et al. 2016)."""
    _check_batch(features, labels)
    return 0.5 * (features - centers[labels]).pow(2).sum(dim=1).mean()


def _pairwise(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarity matrix and masks of positive (same label, not self) and negative pairs."""
    sim = embeddings @ embeddings.t()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return sim, same & ~eye, ~same


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances of l2-normalised embeddings.

    Each anchor takes its farthest positive and nearest negative; anchors without either are skipped
    (zero when none is left).
    """
    _check_batch(embeddings, labels)
    sim, pos, neg = _pairwise(embeddings, labels)
    dist = (2.0 - 2.0 * sim).clamp(min=1e-12).sqrt()
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin(dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0.0
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()


def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    mining_margin: float = 0.1,
) -> torch.Tensor:
    """Multi-similarity loss with its pair mining (Wang et al. 2019) on cosine similarities.

    A negative is kept when it is more similar than the anchor's least similar positive minus the margin;
    a positive when it is less similar than the most similar negative plus the margin. Anchors left
    without a mined positive or negative add zero; the sum is divided by the batch size.
    """
    _check_batch(embeddings, labels)
    sim, pos, neg = _pairwise(embeddings, labels)
    min_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
    max_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
    keep_neg = neg & (sim + mining_margin > min_pos)
    keep_pos = pos & (sim - mining_margin < max_neg)
    # log(1 + sum exp(z)) over the kept pairs == softplus-like logsumexp with an extra zero term
    zero = sim.new_zeros(len(sim), 1)
    pos_z = (-alpha * (sim - base)).masked_fill(~keep_pos, float("-inf"))
    neg_z = (beta * (sim - base)).masked_fill(~keep_neg, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zero, pos_z], dim=1), dim=1) / alpha
    neg_term = torch.logsumexp(torch.cat([zero, neg_z], dim=1), dim=1) / beta
    # as in the reference implementation: an anchor counts only when both mined sets are non-empty,
    # and the sum is divided by the batch size
    valid = keep_pos.any(dim=1) & keep_neg.any(dim=1)
    return (pos_term + neg_term).masked_fill(~valid, 0.0).sum() / len(sim)


class CenterLoss(nn.Module):
    """Center loss with learnable (num_classes, dim) centres, trained by the same optimiser."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"CenterLoss needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.1)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return center_loss(features, labels, self.centers)


class LossWeights(BaseModel):
    """Weights of the four losses and their hyper-parameters; a weight of 0 switches a loss off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    softmax: float = Field(default=1.0, ge=0)
    center: float = Field(default=0.1, ge=0)
    triplet: float = Field(default=1.0, ge=0)
    multi_similarity: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    triplet_margin: float = Field(default=0.3, gt=0)
    ms_alpha: float = Field(default=2.0, gt=0)
    ms_beta: float = Field(default=50.0, gt=0)
    ms_base: float = 0.5
    ms_margin: float = Field(default=0.1, ge=0)


class CombinedLoss(nn.Module):
    """Weighted softmax + center + batch-hard triplet + multi-similarity loss.

    ``forward(embeddings, labels, logits)`` returns the total and a dict of the unweighted parts (floats).
    Softmax needs ``logits``; center loss pulls the l2-normalised ``embeddings`` to learnable centres.
    """

    def __init__(self, num_classes: int, dim: int, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.center = CenterLoss(num_classes, dim) if self.weights.center > 0 else None

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        total = embeddings.sum() * 0.0
        parts: dict[str, float] = {}
        if w.softmax > 0:
            if logits is None:
                raise ValueError("the softmax loss has a weight > 0 but no logits were given")
            value = softmax_loss(logits, labels, label_smoothing=w.label_smoothing)
            total = total + w.softmax * value
            parts["softmax"] = float(value.detach())
        if self.center is not None:
            value = self.center(embeddings, labels)
            total = total + w.center * value
            parts["center"] = float(value.detach())
        if w.triplet > 0:
            value = batch_hard_triplet_loss(embeddings, labels, margin=w.triplet_margin)
            total = total + w.triplet * value
            parts["triplet"] = float(value.detach())
        if w.multi_similarity > 0:
            value = multi_similarity_loss(
                embeddings, labels, alpha=w.ms_alpha, beta=w.ms_beta, base=w.ms_base, mining_margin=w.ms_margin
            )
            total = total + w.multi_similarity * value
            parts["multi_similarity"] = float(value.detach())
        return total, parts


__all__ = [
    "CenterLoss",
    "CombinedLoss",
    "LossWeights",
    "batch_hard_triplet_loss",
    "center_loss",
    "multi_similarity_loss",
    "softmax_loss",
]
