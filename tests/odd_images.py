"""A folder of odd catalogue files, the way real catalogues have them (importable: pytest puts tests/ on the path).

``write_odd_images(folder, picture)`` writes 14 files made from one RGB picture and returns, per image id
(the file stem), the expected status and a fragment of the expected reason ("" for a good image).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming_size(width: int, height: int) -> bytes:
    """A grey PNG whose header claims ``width`` x ``height`` pixels, with a few bytes of data: a cheap bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def write_odd_images(folder: Path, picture: np.ndarray) -> dict[str, tuple[str, str]]:
    """Write the odd files into ``folder``; returns ``{image_id: (status, reason fragment)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(picture).convert("RGB")
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG", quality=90)

    _save(rgb, folder / "valid.jpg", "JPEG", quality=90)
    _save(rgb.convert("L"), folder / "grayscale.jpg", "JPEG")
    _save(rgb.convert("CMYK"), folder / "cmyk.jpg", "JPEG")
    _save(rgb, folder / "progressive.jpg", "JPEG", progressive=True)
    rgba = rgb.convert("RGBA")
    alpha = np.full(picture.shape[:2], 255, np.uint8)
    alpha[:, : picture.shape[1] // 8] = 0  # a transparent strip on the left
    rgba.putalpha(Image.fromarray(alpha))
    _save(rgba, folder / "rgba.png", "PNG")
    grey16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
    _save(Image.fromarray(grey16), folder / "sixteen_bit.png", "PNG")
    _save(rgb, folder / "webp.webp", "WEBP")
    _save(Image.new("RGB", (1, 1), (200, 30, 30)), folder / "one_pixel.png", "PNG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "not_an_image.jpg").write_text("id,name\n1,shirt\n")
    (folder / "bomb.png").write_bytes(png_claiming_size(20000, 20000))
    (folder / "notes.txt").write_text("a text file, not an image\n")
    (folder / "symlink.jpg").symlink_to(folder / "notes.txt")
    _save(Image.new("RGB", (10000, 20), (30, 30, 200)), folder / "wide.png", "PNG")

    ok = ("ok", "")
    recognised = ("bad_input", "not a recognised image (JPEG, PNG, WebP, BMP")
    return {
        "valid": ok, "grayscale": ok, "cmyk": ok, "progressive": ok, "rgba": ok, "sixteen_bit": ok, "webp": ok,
        "one_pixel": ("bad_input", "image is 1x1: a side under 32 px is too small"),
        "empty": ("bad_input", "empty file"),
        "truncated": ("bad_input", "truncated image data"),
        "not_an_image": recognised,
        "bomb": ("bad_input", "image is 20000x20000 = 400 Mpx, over the 40 Mpx limit"),
        "symlink": recognised,
        "wide": ("bad_input", "image is 10000x20: aspect ratio 500 is over 10"),
    }
