"""Read and decode images through fsspec, in a small thread pool so I/O overlaps compute.

A failure is returned, not raised: one bad image never fails a segment. Failures are either bad
input (corrupt, unsupported, too large, too small or too elongated for the models: retried only when
the content changes) or transient (I/O, timeouts: retried by the next refresh). Their reasons are
short sentences meant for people ("empty file", "truncated image data", "image is 10000x20: aspect
ratio 500 is over 10").

Every decoded image is RGB uint8, upright (EXIF orientation applied): 16-bit images are scaled to
8 bits, CMYK, grayscale and palette images converted, transparent ones composited on white.
"""

from __future__ import annotations

import io
import logging
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
"""Images larger than this are refused as bad input (decompression-bomb guard)."""
MIN_SIDE = 32
"""Images with a side shorter than this (pixels) are refused: too small to show a garment."""
MAX_ASPECT = 10.0
"""Images whose long side exceeds this many times their short side are refused: banners, strips."""

BAD_INPUT = "bad_input"
TRANSIENT = "transient"

SUPPORTED = "JPEG, PNG, WebP, BMP, GIF, TIFF"
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


@dataclass(frozen=True)
class ImageLimits:
    """Which decoded sizes the models accept; anything else is bad input with a reason."""

    max_pixels: int = MAX_PIXELS
    min_side: int = MIN_SIDE
    max_aspect: float = MAX_ASPECT


@dataclass(frozen=True)
class ImageFailure:
    """Why one image could not be read: ``kind`` is ``bad_input`` or ``transient``."""

    uri: str
    kind: str
    reason: str


class UnusableImage(ValueError):
    """Bytes that are not an image the pipeline can use; the message is the reason, for people."""


def _pixels(n: float) -> str:
    """A pixel count for people: ``90000 px``, ``1.5 Mpx``, ``400 Mpx``, ``4900 Mpx``."""
    if n < 1_000_000:
        return f"{n:.0f} px"
    mpx = n / 1e6
    return f"{mpx:.0f} Mpx" if mpx >= 100 else f"{mpx:.3g} Mpx"


def check_size(width: int, height: int, limits: ImageLimits = ImageLimits()) -> None:
    """Raise :class:`UnusableImage` when a ``width`` x ``height`` image is outside ``limits``."""
    size = f"image is {width}x{height}"
    if width * height > limits.max_pixels:
        raise UnusableImage(f"{size} = {_pixels(width * height)}, over the {_pixels(limits.max_pixels)} limit")
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > limits.max_aspect:
        raise UnusableImage(f"{size}: aspect ratio {aspect:.3g} is over {limits.max_aspect:g}")
    if min(width, height) < limits.min_side:
        raise UnusableImage(f"{size}: a side under {limits.min_side} px is too small to show a garment")


def _claimed_size(data: bytes) -> tuple[int, int] | None:
    """The size an image header claims, read by the format's own parser without PIL's bomb check."""
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            accepted = True if accept is None else accept(data[:16])
            if not accepted or isinstance(accepted, str):  # a str is Pillow's warning: not this format
                continue
            return factory(io.BytesIO(data), "").size
        except Exception:  # noqa: BLE001 - any parser that cannot read the header just does not know
            continue
    return None


def describe_error(exc: BaseException) -> str:
    """An exception as ``Type: first line of its message``, without object reprs or memory addresses."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"<[^<>]*? at 0x[0-9a-fA-F]+>", "the data", text)
    text = re.sub(r"\s+at 0x[0-9a-fA-F]+", "", text)
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_rgb(img: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of a loaded image, upright; see the module docstring for the rules."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.asarray(img), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        img = white
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, *, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes to an RGB (H, W, 3) uint8 array; :class:`UnusableImage` says what is wrong."""
    if not data:
        raise UnusableImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        size = _claimed_size(data)
        if size is None:
            raise UnusableImage(f"image is over the {_pixels(limits.max_pixels)} limit") from exc
        check_size(*size, limits)
        raise UnusableImage(f"image is {size[0]}x{size[1]}: over Pillow's decompression-bomb limit") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnusableImage(f"not a recognised image ({SUPPORTED}, ...)") from exc
    with img:
        check_size(img.width, img.height, limits)
        try:
            img.load()
            return to_rgb(img)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            if "truncated" in str(exc) or isinstance(exc, EOFError):
                raise UnusableImage("truncated image data") from exc
            raise UnusableImage(f"corrupt {img.format or 'image'} data ({describe_error(exc)})") from exc


def read_bytes(uri: str) -> bytes | ImageFailure:
    """The bytes of one file, or why they could not be read (missing: bad input; I/O: transient)."""
    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return ImageFailure(uri, BAD_INPUT, "file not found")
    except IsADirectoryError:
        return ImageFailure(uri, BAD_INPUT, "a folder, not an image file")
    except (OSError, TimeoutError, ConnectionError) as exc:
        return ImageFailure(uri, TRANSIENT, f"I/O error ({describe_error(exc)})")


def load_image(uri: str, *, limits: ImageLimits = ImageLimits()) -> np.ndarray | ImageFailure:
    """Read and decode one image, or say why it failed."""
    data = read_bytes(uri)
    if isinstance(data, ImageFailure):
        return data
    try:
        return decode_image(data, limits=limits)
    except UnusableImage as exc:
        return ImageFailure(uri, BAD_INPUT, str(exc))


def iter_images(
    uris: Sequence[str], *, threads: int = 4, prefetch: int = 16, limits: ImageLimits = ImageLimits()
) -> Iterator[tuple[int, np.ndarray | ImageFailure]]:
    """Yield ``(index, image or failure)`` in input order, reading up to ``prefetch`` images ahead."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clothret-read") as pool:
        pending: deque = deque()
        next_index = 0
        while next_index < len(uris) or pending:
            while next_index < len(uris) and len(pending) < prefetch:
                pending.append((next_index, pool.submit(load_image, uris[next_index], limits=limits)))
                next_index += 1
            index, future = pending.popleft()
            yield index, future.result()
