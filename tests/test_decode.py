"""Which files the engine decodes on the GPU (plain JPEGs, checked from the header), and which Pillow decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clothret.pipeline.decode import DeviceJpeg, decode_on_host, for_device
from clothret.pipeline.reader import BAD_INPUT, ImageFailure, ImageLimits, UnusableImage, decode_image


def _picture(height=48, width=64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_plain_jpegs_go_to_the_device_with_their_header_size():
    data = _encode(Image.fromarray(_picture()), quality=90)
    jpeg = for_device(data)
    assert jpeg == DeviceJpeg(data, 64, 48)


def test_everything_else_is_left_to_pillow():
    rgb = Image.fromarray(_picture())
    exif = Image.Exif()
    exif[0x0112] = 6
    full = _encode(rgb)
    others = {
        "png": _encode(rgb, "PNG"),
        "grayscale": _encode(rgb.convert("L")),
        "cmyk": _encode(rgb.convert("CMYK")),
        "progressive": _encode(rgb, progressive=True),
        "rotated": _encode(rgb, exif=exif),
        "truncated": full[: len(full) // 2],
        "trailing bytes": full + b"\x00garbage",
        "garbage": b"\xff\xd8\xff" + b"\x00" * 50 + b"\xff\xd9",
        "empty": b"",
    }
    for name, data in others.items():
        assert for_device(data) is None, name


def test_limits_are_checked_from_the_header_with_the_readers_reason():
    data = _encode(Image.new("RGB", (300, 300)))
    limits = ImageLimits(max_pixels=1000)
    with pytest.raises(UnusableImage) as on_device:
        for_device(data, limits=limits)
    with pytest.raises(UnusableImage) as on_host:
        decode_image(data, limits=limits)
    assert str(on_device.value) == str(on_host.value) == "image is 300x300 = 90000 px, over the 1000 px limit"


def test_decode_on_host_is_the_readers_decode_or_its_failure():
    data = _encode(Image.fromarray(_picture()), "PNG")
    np.testing.assert_array_equal(decode_on_host(data, "a.png"), _picture())
    failure = decode_on_host(b"not an image", "b.jpg")
    assert isinstance(failure, ImageFailure) and failure.kind == BAD_INPUT and failure.uri == "b.jpg"
    assert failure.reason.startswith("not a recognised image")
