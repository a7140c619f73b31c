import io

import numpy as np
from PIL import Image

from clothret.pipeline.reader import BAD_INPUT, ImageFailure, ImageLimits, iter_images, load_image


def _jpeg(path, size=(64, 32), mode="RGB"):
    img = Image.new(mode, size, 128 if mode == "L" else (10, 200, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if mode == "L" else "JPEG")
    path.write_bytes(buf.getvalue())
    return str(path)


def test_images_come_back_in_order_with_failures_in_place(tmp_path):
    ok = _jpeg(tmp_path / "a.jpg")
    grey = _jpeg(tmp_path / "g.png", mode="L")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    uris = [ok, str(bad), grey, str(tmp_path / "missing.jpg")] * 5
    out = list(iter_images(uris, threads=3, prefetch=4))
    assert [i for i, _ in out] == list(range(len(uris)))
    for i, image in out:
        if i % 4 in (0, 2):
            assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2] == 3
        else:
            assert isinstance(image, ImageFailure) and image.kind == BAD_INPUT
    assert out[0][1].shape == (32, 64, 3)


def test_too_large_image_is_bad_input(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", size=(300, 300))
    failure = load_image(path, limits=ImageLimits(max_pixels=1000))
    assert isinstance(failure, ImageFailure) and failure.kind == BAD_INPUT
    assert failure.reason == "image is 300x300 = 90000 px, over the 1000 px limit"
