"""How the segment engine (:mod:`clothret.pipeline.engine`) runs: batch size, overlap, precision, decoding."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16

Autocast = Literal["auto", "bf16", "fp16", "fp32"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class EngineConfig(BaseModel):
    """Settings of the segment engine; the defaults suit one GPU and the CPU alike.

    ``autocast`` ``auto`` means bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on the CPU
    (where the outputs then match the plain torchvision/timm models within float rounding).
    ``compile`` passes its mode to ``torch.compile`` for the detectors' backbones and heads and the
    embedders (``reduce-overhead`` adds CUDA graphs); short batches are filled up to the batch size with
    blank images, so each network compiles once per image size (Faster R-CNN's box head, fed a varying
    number of proposals, stays eager). It costs a minute or more of compilation per model and process,
    so it is off unless a long backfill pays for it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int | None = Field(
        None, ge=1, le=1024, description="images per model batch (unset: the caller's, e.g. RefreshConfig.batch_size)"
    )
    batches_in_flight: int = Field(
        2, ge=1, le=16,
        description="decoded batches waiting ahead of the models, and detected batches waiting for fusion",
    )
    group_by_shape: bool = Field(
        True, description="batch images of similar aspect ratio together (from up to 4 batches read ahead), so "
        "that batches pad less",
    )
    read_threads: int = Field(4, ge=1, le=64, description="threads reading images (and decoding those Pillow decodes)")
    decode_on_device: bool = Field(
        True, description="decode baseline RGB JPEGs in batches on the GPU (nvJPEG) when the models run on CUDA"
    )
    autocast: Autocast = Field("auto", description="precision of the networks: auto, bf16, fp16 or fp32")
    channels_last: bool = Field(True, description="run the convolutions in channels-last memory format")
    compile: CompileMode = Field("off", description="torch.compile mode for the networks, or off")
    fold_norms: bool = Field(
        True, description="run inference copies of the networks with batch norms folded into their convolutions "
        "and GroupNorm kept in the autocast dtype: the same outputs within float rounding, fewer passes over memory",
    )
    fuse_convs: bool = Field(
        True, description="in those inference copies, run each convolution with its bias, ReLU and residual add "
        "as one cuDNN kernel (CUDA, bf16/fp16): PyTorch otherwise adds a bias in a slow pass of its own",
    )
    fusion_processes: int | None = Field(
        None, ge=0, le=64,
        description="processes fusing boxes (0: one thread; unset: up to 4 per GPU with CUDA, 0 on the CPU); a "
        "process that may not start children (a Dask worker by default) fuses on one thread",
    )
    cudnn_benchmark: bool = Field(
        False, description="let cuDNN time its convolution algorithms for each new input shape (process-wide; "
        "pays off when most batches share a shape)",
    )
    concurrent_detectors: bool = Field(
        True, description="run the detectors of an ensemble at once, each on its own CUDA stream and thread "
        "taking the batches in order (CUDA only): one detector's post-processing on the CPU overlaps another's "
        "network on the GPU, and no batch waits for the slowest detector before the next one starts",
    )
    cuda_graphs: bool = Field(
        False, description="run the detectors' backbones and heads and the embedders through CUDA graphs captured "
        "per image size (CUDA only; not with compile): one launch per batch instead of one per kernel, so the "
        "host stops being the limit; short batches are filled up with blank images",
    )

    @model_validator(mode="after")
    def _graphs_or_compile(self) -> EngineConfig:
        if self.cuda_graphs and self.compile != "off":
            raise ValueError(f"cuda_graphs=true and compile={self.compile!r} do not go together: compile's "
                             "reduce-overhead mode captures CUDA graphs of its own")
        return self

    def with_batch_size(self, batch_size: int | None) -> EngineConfig:
        """A copy whose ``batch_size`` is set: its own when given, else ``batch_size``, else 16."""
        return self.model_copy(update={"batch_size": self.batch_size or batch_size or DEFAULT_BATCH_SIZE})

    def autocast_dtype(self, device) -> object | None:
        """The autocast dtype for models on ``device`` (a ``torch.device``); ``None`` means float32."""
        import torch

        if self.autocast == "fp32" or (self.autocast == "auto" and device.type != "cuda"):
            return None
        if self.autocast == "fp16" or (
            self.autocast == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False)
        ):
            return torch.float16
        return torch.bfloat16


def engine_config_from(pairs: Iterable[str], *, base: EngineConfig | None = None, option: str = "--engine"
                       ) -> EngineConfig:
    """An :class:`EngineConfig` from ``SETTING=VALUE`` strings over ``base``'s settings: an item without ``=``
    is a ValueError naming ``option``; unknown settings and bad values are pydantic's errors naming them."""
    settings = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {item!r}: expected SETTING=VALUE, e.g. {option} batch_size=32")
        settings[key.strip()] = value.strip()
    return EngineConfig.model_validate({**(base.model_dump() if base is not None else {}), **settings})


__all__ = ["DEFAULT_BATCH_SIZE", "Autocast", "CompileMode", "EngineConfig", "engine_config_from"]
