"""Read and decode images through fsspec, in a small thread pool so I/O overlaps compute.

A failure is returned, not raised: one bad image never fails a segment. Failures are either bad
input (corrupt, unsupported, too large: retried only when the content changes) or transient (I/O,
timeouts: retried by the next refresh).
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
"""Images larger than this are refused as bad input (decompression-bomb guard)."""

BAD_INPUT = "bad_input"
TRANSIENT = "transient"


@dataclass(frozen=True)
class ImageFailure:
    """Why one image could not be read: ``kind`` is ``bad_input`` or ``transient``."""

    uri: str
    kind: str
    reason: str


def decode_image(data: bytes, *, uri: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an RGB (H, W, 3) uint8 array; ``ValueError`` names what is wrong."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ValueError(f"{uri}: {img.width}x{img.height} is larger than {max_pixels} pixels")
            img.load()
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"{uri}: not a readable image ({exc})") from exc


def load_image(uri: str, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | ImageFailure:
    """Read and decode one image, or say why it failed."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        return ImageFailure(uri, BAD_INPUT, f"not found: {exc}")
    except (OSError, TimeoutError, ConnectionError) as exc:
        return ImageFailure(uri, TRANSIENT, f"I/O error: {exc!r}")
    try:
        return decode_image(data, uri=uri, max_pixels=max_pixels)
    except ValueError as exc:
        return ImageFailure(uri, BAD_INPUT, str(exc))


def iter_images(
    uris: Sequence[str], *, threads: int = 4, prefetch: int = 16
) -> Iterator[tuple[int, np.ndarray | ImageFailure]]:
    """Yield ``(index, image or failure)`` in input order, reading up to ``prefetch`` images ahead."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clothret-read") as pool:
        pending: deque = deque()
        next_index = 0
        while next_index < len(uris) or pending:
            while next_index < len(uris) and len(pending) < prefetch:
                pending.append((next_index, pool.submit(load_image, uris[next_index])))
                next_index += 1
            index, future = pending.popleft()
            yield index, future.result()
