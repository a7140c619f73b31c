"""Crops cut and resized on the device (roi_align) against today's numpy crop + PIL bilinear resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clothret.detection.crops import crop_boxes, crop_resized, pixel_edges

MEAN_ABS_DIFF = 1.5
"""Mean |roi_align - PIL| over all crops, in 0-255 levels: measured 0.2 (upscaled to 224 px) to 0.9 (to 32 px)."""
CROP_ABS_DIFF = 6.0
"""The largest mean difference of one crop of at least 8x8 pixels: measured up to 5.8 (a whole image shrunk 4x
to 32 px). Smaller crops blown up differ more: roi_align's bilinear samples within half a pixel of a crop's edge
blend in the image's pixels beyond it, where PIL, resizing the cut-out crop, repeats the edge pixel."""


def _picture(rng, height, width) -> np.ndarray:
    """Smooth colour fields and sharp rectangles: edges where resampling filters differ most."""
    coarse = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).copy()
    for _ in range(5):
        y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
        pixels[y : y + int(rng.integers(4, height // 2)), x : x + int(rng.integers(4, width // 2))] = rng.integers(0, 256, 3)
    return pixels


@pytest.mark.parametrize("size", [32, 48, 224])
def test_crop_resized_is_close_to_numpy_crop_and_pil_resize(size):
    rng = np.random.default_rng(size)
    images = [_picture(rng, 120, 160), _picture(rng, 96, 128), _picture(rng, 120, 160)]
    boxes = []
    for img in images:
        h, w = img.shape[:2]
        x1, y1 = rng.uniform(-5, w - 4, 12), rng.uniform(-5, h - 4, 12)
        b = np.stack([x1, y1, x1 + rng.uniform(1, w, 12), y1 + rng.uniform(1, h, 12)], axis=1)
        b[0] = (0, 0, w, h)  # the whole image
        b[1] = (10.0, 20.0, 10.5, 20.5)  # under one pixel: a 1x1 crop, blown up
        boxes.append(b)
    got = crop_resized([torch.from_numpy(img).permute(2, 0, 1) for img in images], boxes, size)
    assert got.shape == (36, 3, size, size) and got.dtype == torch.float32
    want = np.stack([
        np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
        for img, b in zip(images, boxes) for crop in crop_boxes(img, b)
    ]).astype(np.float32)
    diff = np.abs(got.permute(0, 2, 3, 1).numpy() - want).mean(axis=(1, 2, 3))
    edges = np.concatenate([pixel_edges(b, img.shape[1], img.shape[0]) for img, b in zip(images, boxes)])
    big = np.minimum(edges[:, 2] - edges[:, 0], edges[:, 3] - edges[:, 1]) >= 8
    assert diff.mean() < MEAN_ABS_DIFF and diff[big].max() < CROP_ABS_DIFF, (diff.mean(), diff[big].max())
    # a 1x1 crop: PIL repeats the pixel; roi_align's samples near its edges blend in the neighbours by up
    # to half, so only the middle is that pixel
    middle = got[1, :, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(middle, np.broadcast_to(images[0][20, 10], middle.shape), atol=0.51 * 256 / size)


def test_crop_resized_cuts_the_same_pixels_as_crop_boxes():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    boxes = np.array([[1.2, 0.5, 4.0, 3.9], [-3, -3, 100, 100], [7.9, 5.9, 9, 9]])
    edges = pixel_edges(boxes, 8, 6)
    np.testing.assert_array_equal(edges, [[1, 0, 4, 4], [0, 0, 8, 6], [7, 5, 8, 6]])
    for crop, (x1, y1, x2, y2) in zip(crop_boxes(image, boxes), edges):
        assert crop.shape == (y2 - y1, x2 - x1, 3)
    # at the crop's own size, roi_align returns the crop's pixels exactly
    square = np.array([[2.0, 1.0, 5.0, 4.0]])
    got = crop_resized([torch.from_numpy(image).permute(2, 0, 1)], [square], 3)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), image[1:4, 2:5], atol=1e-4)


def test_crop_resized_checks_its_inputs():
    image = torch.zeros(3, 10, 10, dtype=torch.uint8)
    assert crop_resized([image], [np.zeros((0, 4))], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="2 images but 1 box arrays"):
        crop_resized([image, image], [np.zeros((1, 4))], 8)
    with pytest.raises(ValueError, match="non-finite"):
        crop_resized([image], [np.array([[0, 0, np.nan, 4]])], 8)
