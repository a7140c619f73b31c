"""Decoding for the segment engine: plain JPEGs in batches on the GPU, everything else with Pillow.

:func:`for_device` looks at a file's header only (Pillow opens lazily: format, mode, size and EXIF without
decoding) and picks the JPEGs nvJPEG decodes the way the reader means them: 3-component (YCbCr) baseline
files, upright (no EXIF rotation), ending in an end-of-image marker, within the size limits (checked
before any pixel is decoded). Those become :class:`DeviceJpeg` and :func:`decode_on_device` decodes a batch
of them in one ``torchvision.io.decode_jpeg`` call. Every other file — other formats, CMYK, grayscale,
progressive, rotated, truncated or corrupt JPEGs — is decoded by :func:`clothret.pipeline.reader.decode_image`,
with its conversions and its bad-input reasons; so is a batch whose GPU decode fails. GPU-decoded pixels
may differ from Pillow's by a few levels (another IDCT and chroma upsampling); on the CPU only Pillow runs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clothret.pipeline.reader import BAD_INPUT, ImageFailure, ImageLimits, UnusableImage, check_size, decode_image

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DeviceJpeg:
    """A JPEG's bytes that the GPU decodes, with the size its header gives."""

    data: bytes
    width: int
    height: int


def for_device(data: bytes, *, limits: ImageLimits = ImageLimits()) -> DeviceJpeg | None:
    """A :class:`DeviceJpeg` when nvJPEG should decode ``data``, else ``None`` (Pillow decodes it).

    Raises :class:`~clothret.pipeline.reader.UnusableImage` for a JPEG outside ``limits``, with the reason
    :func:`~clothret.pipeline.reader.decode_image` gives.
    """
    if len(data) < 4 or not data.startswith(b"\xff\xd8\xff") or not data.endswith(b"\xff\xd9"):
        return None
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - Pillow will say what is wrong when it decodes
        return None
    with img:
        if img.format != "JPEG" or img.mode != "RGB" or img.info.get("progressive") or img.info.get("progression"):
            return None
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 - unreadable EXIF: let Pillow handle the file
            return None
        if orientation not in (None, 1):
            return None
        check_size(img.width, img.height, limits)
        return DeviceJpeg(data, img.width, img.height)


def decode_on_device(jpegs: Sequence[DeviceJpeg], device) -> list:
    """uint8 (3, H, W) RGB tensors on ``device`` (a CUDA ``torch.device``) of a batch of JPEGs, in one call.

    Raises when nvJPEG fails on any of them or a decoded size differs from the header's.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    encoded = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    for j, img in zip(jpegs, images):
        if tuple(img.shape) != (3, j.height, j.width):
            raise RuntimeError(f"nvJPEG decoded a {j.width}x{j.height} JPEG to shape {tuple(img.shape)}")
    return images


def decode_on_host(data: bytes, name: str, *, limits: ImageLimits = ImageLimits()) -> np.ndarray | ImageFailure:
    """Pillow's decode of one file (:func:`~clothret.pipeline.reader.decode_image`), or its bad-input failure."""
    try:
        return decode_image(data, limits=limits)
    except UnusableImage as exc:
        return ImageFailure(name, BAD_INPUT, str(exc))


__all__ = ["DeviceJpeg", "decode_on_device", "decode_on_host", "for_device"]
