"""Train an embedder from ground-truth crops: PK batches, box-jitter augmentation, softmax + metric losses.

Every item with ``style > 0`` in shop and user images is a sample; its identity is ``(pair_id, style)``,
so a street crop and the shop crop of the same garment share a label. Crops are cut once with some context
around the box and kept in memory; each batch is augmented on the fly in torch (box jitter, flip, small
rotation via one ``grid_sample``, mild colour jitter, blur, random erasing). Training is deterministic
given ``seed`` and ``num_threads`` unless ``max_seconds`` stops it early.

On a CPU shared with other jobs, start Python with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads
otherwise make multi-threaded training several times slower (measured ~8x with 2 threads on 2 busy cores).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from clothret.datasets.records import ImageRecord
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.crops import GtCrop, gt_crops
from clothret.embedding.losses import CombinedLoss, LossWeights
from clothret.embedding.model import EmbeddingNet, save_embedding_net
from clothret.progress import progress as progress_bar

logger = logging.getLogger(__name__)


class AugmentConfig(BaseModel):
    """On-the-fly augmentation of training crops; every option at 0/False switches itself off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context: float = Field(default=0.2, ge=0, le=1, description="context kept around each box, x box size")
    scale_jitter: float = Field(default=0.15, ge=0, lt=1, description="box size x U(1 - s, 1 + s) per axis")
    shift_jitter: float = Field(default=0.08, ge=0, lt=1, description="box centre moves by U(-s, s) x box size")
    rotate_degrees: float = Field(default=10.0, ge=0, le=90)
    hflip: bool = True
    colour_jitter: float = Field(default=0.15, ge=0, lt=1, description="brightness/gain/gamma/saturation spread")
    blur_prob: float = Field(default=0.3, ge=0, le=1)
    erase_prob: float = Field(default=0.3, ge=0, le=1, description="chance of a random box occluding the crop")


class EmbedderTrainConfig(BaseModel):
    """How to train one embedder. A batch holds ``p_identities`` x ``k_instances`` crops (PK sampling).

    The defaults were tuned on the synthetic split with the default :class:`EmbedderConfig`: many identities
    per batch (P=32, K=2: a shop crop and a street crop each) beat fewer identities with more instances,
    and steps matter most; 1000 steps take ~2 minutes on 2 busy CPU cores.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(default=1000, ge=1, description="optimiser steps (batches); ``epochs`` overrides it")
    epochs: float | None = Field(default=None, gt=0, description="if set: steps = ceil(epochs x identities / P)")
    p_identities: int = Field(default=32, ge=2)
    k_instances: int = Field(default=2, ge=2)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    warmup_steps: int = Field(default=25, ge=0)
    seed: int = 0
    num_threads: int = Field(default=2, ge=1)
    classifier: Literal["cosine", "cgd"] = "cosine"
    classifier_scale: float = Field(default=16.0, gt=0, description="cosine: logit scale; cgd: 1 / temperature")
    losses: LossWeights = Field(default_factory=LossWeights)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    max_seconds: float | None = Field(default=None, gt=0, description="stop early after this long (not deterministic)")


class _CosineClassifier(nn.Module):
    """Logits = scale x cosine(embedding, class weight): a normalised softmax head on the embedding."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, embedding: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.scale * embedding @ F.normalize(self.weight, dim=1).t()


class _CgdClassifier(nn.Module):
    """CGD's auxiliary branch: first descriptor -> BN -> linear, logits divided by a temperature."""

    def __init__(self, num_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features)
        self.fc = nn.Linear(num_features, num_classes, bias=False)
        self.scale = scale

    def forward(self, embedding: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.scale * self.fc(self.bn(pooled))


class CropBank:
    """Training crops resized to square canvases (N, 3, S, S) uint8, the boxes inside them in [-1, 1], labels."""

    def __init__(self, crops: Sequence[GtCrop], canvas_size: int) -> None:
        if not crops:
            raise ValueError("no training crops: the records hold no item with style > 0")
        keys = sorted({c.key for c in crops})
        self.keys = keys
        index = {k: i for i, k in enumerate(keys)}
        canvases = np.empty((len(crops), canvas_size, canvas_size, 3), dtype=np.uint8)
        boxes = np.empty((len(crops), 4), dtype=np.float32)
        for i, c in enumerate(crops):
            h, w = c.pixels.shape[:2]
            canvases[i] = np.asarray(Image.fromarray(c.pixels).resize((canvas_size, canvas_size), Image.Resampling.BILINEAR))
            x1, y1, x2, y2 = c.box
            boxes[i] = (2 * x1 / w - 1, 2 * y1 / h - 1, 2 * x2 / w - 1, 2 * y2 / h - 1)
        self.canvases = torch.from_numpy(canvases).permute(0, 3, 1, 2).contiguous()
        self.boxes = torch.from_numpy(boxes)
        self.labels = torch.tensor([index[c.key] for c in crops], dtype=torch.long)
        self.is_shop = np.array([c.source == "shop" for c in crops])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.keys)


def pk_batches(labels: np.ndarray, is_shop: np.ndarray, p: int, k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless PK batches of crop indices: ``p`` identities, ``k`` crops each (shop crop first, repeats if few)."""
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(i)
    identities = np.array(sorted(by_label))
    if len(identities) < p:
        raise ValueError(f"p_identities={p} but the training set has only {len(identities)} identities")
    while True:
        order = rng.permutation(identities)
        for start in range(0, len(order) - p + 1, p):
            batch = []
            for label in order[start : start + p]:
                members = np.array(by_label[int(label)])
                shop = members[is_shop[members]]
                rest = rng.permutation(members[~is_shop[members]])
                pool = np.concatenate([shop[:1], rest, rng.permutation(shop[1:])])
                reps = math.ceil(k / len(pool))
                picks = np.concatenate([pool] + [rng.permutation(members) for _ in range(reps)])[:k]
                batch.append(picks)
            yield np.concatenate(batch)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def augment_batch(
    bank: CropBank, indices: np.ndarray, model_config: EmbedderConfig, aug: AugmentConfig, gen: torch.Generator
) -> torch.Tensor:
    """Jittered, normalised (B, 3, S, S) crops of the given bank indices."""
    idx = torch.from_numpy(indices)
    n, size = len(idx), model_config.input_size
    canv = bank.canvases[idx].float().div_(255.0)
    box = bank.boxes[idx]
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    hw, hh = (box[:, 2] - box[:, 0]) / 2, (box[:, 3] - box[:, 1]) / 2
    s = aug.scale_jitter
    hw = hw * _uniform(n, 1 - s, 1 + s, gen)
    hh = hh * _uniform(n, 1 - s, 1 + s, gen)
    cx = cx + 2 * hw * _uniform(n, -aug.shift_jitter, aug.shift_jitter, gen)
    cy = cy + 2 * hh * _uniform(n, -aug.shift_jitter, aug.shift_jitter, gen)
    angle = torch.deg2rad(_uniform(n, -aug.rotate_degrees, aug.rotate_degrees, gen))
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([hw * cos * flip, -hh * sin, cx], 1), torch.stack([hw * sin * flip, hh * cos, cy], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x = F.grid_sample(canv, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.colour_jitter > 0:
        c = aug.colour_jitter
        gains = _uniform(n, 1 - c, 1 + c, gen).view(n, 1, 1, 1) * (1 + c / 2 * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1))
        gamma = _uniform(n, 1 - c, 1 + c, gen).view(n, 1, 1, 1)
        x = (x * gains).clamp_(1e-4, 1.0).pow(gamma)
        grey = x.mean(dim=1, keepdim=True)
        sat = _uniform(n, 1 - c, 1 + c, gen).view(n, 1, 1, 1)
        x = (grey + sat * (x - grey)).clamp_(0.0, 1.0)
    if aug.blur_prob > 0:
        blur = torch.rand(n, generator=gen) < aug.blur_prob
        if blur.any():
            k = torch.tensor([1.0, 2.0, 1.0])
            kernel = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
            x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    if aug.erase_prob > 0:
        erase = (torch.rand(n, generator=gen) < aug.erase_prob).nonzero().flatten().tolist()
        for i in erase:
            eh, ew = (int(size * float(v)) for v in _uniform(2, 0.2, 0.5, gen))
            y0 = int(torch.randint(0, size - eh + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, size - ew + 1, (1,), generator=gen))
            x[i, :, y0 : y0 + eh, x0 : x0 + ew] = torch.rand(3, 1, 1, generator=gen)
    mean = torch.tensor(model_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model_config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def train_embedder(
    records: Sequence[ImageRecord],
    *,
    model_config: EmbedderConfig | None = None,
    train_config: EmbedderTrainConfig | None = None,
    weights_url: str,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Train an :class:`EmbeddingNet` on the records' ground-truth crops and save it to ``weights_url``.

    Returns metrics: seconds, steps, first/final loss (mean over the first/last 10 steps), loss parts,
    identities, crops, training images/s, weights URL and sha256.
    """
    model_config = model_config or EmbedderConfig()
    train_config = train_config or EmbedderTrainConfig()
    tc, aug = train_config, train_config.augment
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(tc.num_threads)
    try:
        torch.manual_seed(tc.seed)
        gen = torch.Generator().manual_seed(tc.seed)
        rng = np.random.default_rng(tc.seed)
        canvas_size = int(math.ceil(model_config.input_size * (1 + 2 * aug.context)))
        bank = CropBank(gt_crops(records, context=aug.context), canvas_size)
        logger.info("training on %d crops of %d identities", len(bank), bank.num_classes)

        steps = tc.steps if tc.epochs is None else max(1, math.ceil(tc.epochs * bank.num_classes / tc.p_identities))
        net = EmbeddingNet(model_config)
        if tc.classifier == "cosine":
            head: nn.Module = _CosineClassifier(model_config.dim, bank.num_classes, tc.classifier_scale)
        else:
            head = _CgdClassifier(net.num_features, bank.num_classes, tc.classifier_scale)
        criterion = CombinedLoss(bank.num_classes, model_config.dim, tc.losses)
        params = [*net.parameters(), *head.parameters(), *criterion.parameters()]
        optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, steps))
        batches = pk_batches(bank.labels.numpy(), bank.is_shop, tc.p_identities, tc.k_instances, rng)

        net.train()
        head.train()
        losses: list[float] = []
        parts: dict[str, float] = {}
        train_started = time.perf_counter()
        bar = progress_bar(range(steps), desc="train embedder", disable=not progress, leave=False, unit="step")
        step = 0
        for step in bar:
            indices = next(batches)
            x = augment_batch(bank, indices, model_config, aug, gen)
            labels = bank.labels[torch.from_numpy(indices)]
            embedding, pooled = net.forward_parts(x)
            total, parts = criterion(embedding, labels, head(embedding, pooled))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(total.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
            if tc.max_seconds is not None and time.perf_counter() - started > tc.max_seconds:
                logger.warning("stopping after %d of %d steps: max_seconds=%s reached", step + 1, steps, tc.max_seconds)
                break
        bar.close()
        steps_done = step + 1
        train_seconds = time.perf_counter() - train_started
        net.eval()
        seconds = time.perf_counter() - started
        metrics = {
            "seconds": round(seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "steps": steps_done,
            "loss_first": float(np.mean(losses[:10])),
            "loss_final": float(np.mean(losses[-10:])),
            "loss_parts": parts,
            "num_identities": bank.num_classes,
            "num_crops": len(bank),
            "train_images_per_second": round(steps_done * tc.p_identities * tc.k_instances / train_seconds, 1),
        }
        digest = save_embedding_net(
            net,
            weights_url,
            name=name,
            train_config=tc.model_dump(mode="json"),
            seconds=metrics["seconds"],
            final_loss=metrics["loss_final"],
            steps=steps_done,
            num_identities=bank.num_classes,
            num_crops=len(bank),
        )
        metrics.update(weights_url=weights_url, sha256=digest)
        logger.info("trained embedder in %.1f s (%d steps), final loss %.4f", seconds, steps_done, metrics["loss_final"])
        return metrics
    finally:
        torch.set_num_threads(previous_threads)


__all__ = ["AugmentConfig", "CropBank", "EmbedderTrainConfig", "augment_batch", "pk_batches", "train_embedder"]
