"""Train a torchvision detector from random init on records in the DeepFashion2 layout.

Every item of every image (shop and user) is a target: its pixel box and its category id. Training is
deterministic given the seed (each step reseeds from ``(seed, step)``), so a run interrupted and resumed
from its checkpoint ends with the same weights. The checkpoint (``<weights>.ckpt``, loadable with
``torch.load(weights_only=True)``) is removed once the final weights and model card are written.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Sequence
from typing import Literal

import fsspec
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from clothret.datasets.records import ImageRecord
from clothret.detection.torchvision_backend import (
    TorchvisionDetectorConfig,
    build_detector_model,
    category_ids_to_labels,
    save_detector,
)
from clothret.devices import resolve_device
from clothret.progress import progress as progress_bar
from clothret.weights import card_url

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 400


class DetectorTrainConfig(BaseModel):
    """How to train one detector. Give ``steps`` or ``epochs`` (neither: ``DEFAULT_STEPS`` steps).

    ``scale_range`` jitters the input's shorter side around the model's ``min_size`` (one scale per
    batch); ``color_jitter`` is the strength of random brightness, contrast and saturation changes.
    With ``ema_decay``, the saved weights are an exponential moving average of the trained ones (the
    decay ramps up as ``(1 + step) / (10 + step)`` until it reaches ``ema_decay``).
    ``amp`` is used only on CUDA: bfloat16 autocast, or float16 autocast with a gradient scaler on GPUs
    without bfloat16; the CPU always trains in float32. ``device`` is ``cpu``, ``cuda[:N]`` or ``auto``
    (CUDA when torch sees a GPU). ``num_threads`` sets torch's CPU threads for the run (``None``: leave
    as is).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    seed: int = 0
    num_threads: int | None = Field(None, ge=1)
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0, lt=1)
    scale_range: tuple[float, float] = (0.8, 1.2)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    amp: bool = True
    device: str = "auto"
    checkpoint_every: int = Field(100, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DetectorTrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={self.steps}, epochs={self.epochs})")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        return self

    def total_steps(self, n_images: int) -> int:
        """The number of optimiser steps for a data set of ``n_images``."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_images / self.batch_size))
        return self.steps if self.steps is not None else DEFAULT_STEPS

    def resume_key(self) -> dict:
        """The fields that change the result (a checkpoint is resumed only when they match)."""
        return self.model_dump(mode="json", exclude={"num_threads", "checkpoint_every", "device", "amp"})


def checkpoint_url(weights_url: str) -> str:
    """Where training keeps its resumable checkpoint: beside the weights, ``.safetensors`` -> ``.ckpt``."""
    card_url(weights_url)  # validates the .safetensors suffix
    return weights_url[: -len(".safetensors")] + ".ckpt"


# --------------------------------------------------------------------------------------------- data


def load_image(path: str) -> np.ndarray:
    """Decode an image at an fsspec URL to (H, W, 3) uint8 RGB."""
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image not found: {path}") from exc
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _targets(record: ImageRecord, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, cats = [], []
    for i, item in enumerate(record.items):
        if not 1 <= item.category_id <= num_classes:
            raise ValueError(f"image {record.image_id}: item {i} category_id {item.category_id} not in 1..{num_classes}")
        x1, y1, x2, y2 = item.bbox
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            logger.debug("image %s: item %d has a box under 1 pixel inside the image; skipped", record.image_id, i)
            continue
        boxes.append((x1, y1, x2, y2))
        cats.append(item.category_id)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(cats, np.int64)


class _Samples:
    """Decoded images (uint8 CHW tensors) and their box / category-id targets, all in memory."""

    def __init__(self, records: Sequence[ImageRecord], num_classes: int, progress: bool) -> None:
        self.images: list[torch.Tensor] = []
        self.boxes: list[torch.Tensor] = []
        self.category_ids: list[torch.Tensor] = []
        for record in progress_bar(records, desc="decode", disable=not progress, leave=False, unit="image"):
            arr = load_image(record.path)
            boxes, cats = _targets(record, arr.shape[0], arr.shape[1], num_classes)
            self.images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
            self.boxes.append(torch.from_numpy(boxes))
            self.category_ids.append(torch.from_numpy(cats))

    def __len__(self) -> int:
        return len(self.images)


def _augment(
    image: torch.Tensor, boxes: torch.Tensor, config: DetectorTrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and colour jitter of a uint8 CHW image; returns float [0, 1] and boxes."""
    img = image.float().div_(255.0)
    if config.hflip and torch.rand((), generator=gen) < 0.5:
        img = img.flip(-1)
        width = img.shape[-1]
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    s = config.color_jitter
    if s > 0:
        b, c, sat = (1.0 + (torch.rand(3, generator=gen) * 2 - 1) * s).tolist()
        img = img * b
        mean = img.mean()
        img = (img - mean) * c + mean
        gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
        img = ((img - gray) * sat + gray).clamp_(0.0, 1.0)
    return img, boxes


def _sample_index(position: int, n: int, seed: int, orders: dict[int, torch.Tensor]) -> int:
    """The image at a global sample position: each epoch is its own seeded permutation of ``range(n)``."""
    epoch, offset = divmod(position, n)
    if epoch not in orders:
        orders.clear()
        orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return int(orders[epoch][offset])


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _make_optimizer(model: nn.Module, config: DetectorTrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.lr)


class _Ema:
    """An exponential moving average of a model's parameters (buffers are copied as they are)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


# --------------------------------------------------------------------------------------------- checkpoint


def _save_checkpoint(url: str, state: dict) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    tmp = path + ".tmp"
    buf = io.BytesIO()
    torch.save(state, buf)
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, path)
    logger.debug("checkpoint at step %d written to %s", state["step"], url)


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return bool(fs.exists(path))


def _load_checkpoint(url: str, model_key: dict, train_key: dict) -> dict | None:
    if not _exists(url):
        return None
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if state.get("model_config") != model_key or state.get("train_config") != train_key:
        logger.warning("ignoring checkpoint %s: it was written for another model or training config", url)
        return None
    return state


# --------------------------------------------------------------------------------------------- training


def train_detector(
    records: Sequence[ImageRecord],
    *,
    model_config: TorchvisionDetectorConfig,
    train_config: DetectorTrainConfig,
    weights_url: str,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Train a detector on ``records`` and write its weights and model card to ``weights_url``.

    With ``resume``, a checkpoint beside ``weights_url`` written for the same model and training config
    is continued; without, training starts from step 0 (and overwrites that checkpoint).
    Returns ``{"steps", "seconds", "images_per_s", "final_loss", "final_loss_parts", "resumed_from"}``
    (losses are means over the last 20 steps); ``seconds`` is the time spent in optimiser steps of this
    call (decoding the images is not counted).
    """
    if not records:
        raise ValueError("records is empty: nothing to train on")
    ckpt_url = checkpoint_url(weights_url)
    device = resolve_device(train_config.device)
    old_threads = torch.get_num_threads()
    if train_config.num_threads is not None:
        torch.set_num_threads(train_config.num_threads)
    try:
        return _train(records, model_config, train_config, weights_url, ckpt_url, device, progress, resume)
    finally:
        torch.set_num_threads(old_threads)


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype on CUDA (bfloat16 where supported, else float16), ``None`` for float32."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _train(
    records: Sequence[ImageRecord],
    model_config: TorchvisionDetectorConfig,
    train_config: DetectorTrainConfig,
    weights_url: str,
    ckpt_url: str,
    device: torch.device,
    progress: bool,
    resume: bool,
) -> dict:
    samples = _Samples(records, model_config.num_classes, progress)
    n = len(samples)
    total = train_config.total_steps(n)
    bs = train_config.batch_size
    model_key = model_config.model_dump(mode="json")
    train_key = train_config.resume_key()

    torch.manual_seed(train_config.seed)
    model = build_detector_model(model_config).to(device)
    optimizer = _make_optimizer(model, train_config)
    ema = _Ema(model, train_config.ema_decay) if train_config.ema_decay else None
    amp_dtype = _amp_dtype(device, train_config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start, loss_history = 0, []
    state = _load_checkpoint(ckpt_url, model_key, train_key) if resume else None
    if not resume and _exists(ckpt_url):
        logger.info("not resuming: training %s from step 0 (checkpoint %s will be overwritten)", weights_url, ckpt_url)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, loss_history = int(state["step"]), list(state["loss_history"])
        logger.info("resuming training from %s at step %d/%d", ckpt_url, start, total)

    lo, hi = train_config.scale_range
    base_min = model.transform.min_size
    if amp_dtype is not None:
        logger.info("mixed precision on %s: %s autocast%s", device, amp_dtype, " + gradient scaler" * scaler.is_enabled())
    orders: dict[int, torch.Tensor] = {}
    recent_parts: dict[str, list[float]] = {}
    model.train()
    t0 = time.perf_counter()
    bar = progress_bar(total=total, initial=start, desc="train detector", disable=not progress, unit="step")
    try:
        for step in range(start, total):
            idx = [_sample_index(step * bs + k, n, train_config.seed, orders) for k in range(bs)]
            torch.manual_seed(train_config.seed * 1_000_003 + step)
            gen = torch.Generator().manual_seed(train_config.seed * 1_000_003 + step)
            scale = lo + (hi - lo) * float(torch.rand((), generator=gen))
            model.transform.min_size = (max(32, int(round(model_config.min_size * scale / 8)) * 8),)
            images, targets = [], []
            for i in idx:
                img, boxes = _augment(samples.images[i], samples.boxes[i], train_config, gen)
                images.append(img.to(device))
                labels = category_ids_to_labels(samples.category_ids[i], model_config)
                targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
            for group in optimizer.param_groups:
                group["lr"] = train_config.lr * _lr_factor(step, total, train_config.warmup_steps)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {step}: lower lr ({train_config.lr})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if train_config.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step)
            loss_history.append(float(loss.detach()))
            for key, value in losses.items():
                recent_parts.setdefault(key, []).append(float(value.detach()))
                del recent_parts[key][:-20]
            bar.update(1)
            if step % 10 == 0 or step == total - 1:
                bar.set_postfix(loss=f"{np.mean(loss_history[-20:]):.3f}")
            done = step + 1
            if train_config.checkpoint_every and done % train_config.checkpoint_every == 0 and done < total:
                _save_checkpoint(
                    ckpt_url,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        **({"ema": ema.model.state_dict()} if ema is not None else {}),
                        **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                        "step": done,
                        "loss_history": loss_history,
                        "model_config": model_key,
                        "train_config": train_key,
                    },
                )
    finally:
        bar.close()
        model.transform.min_size = base_min
    seconds = time.perf_counter() - t0
    steps_run = total - start
    final_loss = float(np.mean(loss_history[-20:])) if loss_history else float("nan")
    metrics = {
        "steps": total,
        "seconds": round(seconds, 3),
        "images_per_s": round(steps_run * bs / seconds, 2) if seconds > 0 and steps_run else 0.0,
        "final_loss": final_loss,
        "final_loss_parts": {k: round(float(np.mean(v)), 4) for k, v in recent_parts.items()},
        "resumed_from": start,
    }
    final = ema.model if ema is not None else model
    final.eval()
    save_detector(
        final,
        model_config,
        weights_url,
        extra_card={
            "train_config": train_config.model_dump(mode="json"),
            "n_images": n,
            "steps": total,
            "seconds": metrics["seconds"],
            "images_per_s": metrics["images_per_s"],
            "final_loss": final_loss,
            "first_loss": loss_history[0] if loss_history else None,
        },
    )
    fs, path = fsspec.core.url_to_fs(ckpt_url)
    if fs.exists(path):
        fs.rm(path)
    logger.info(
        "trained %s/%s for %d steps in %.1f s (%.1f img/s), final loss %.3f -> %s",
        model_config.architecture, model_config.backbone, total, seconds, metrics["images_per_s"], final_loss,
        weights_url,
    )
    return metrics


__all__ = ["DEFAULT_STEPS", "DetectorTrainConfig", "checkpoint_url", "load_image", "resolve_device", "train_detector"]
