"""A deterministic synthetic street-to-shop data set in the DeepFashion2 layout.

A *pair* is an outfit of 1-3 garments (distinct categories, styles 1..n). Each garment has one shop
photo: the garment alone, centred on a plain background. Street photos of the pair show a subset of
its garments with a domain shift: scale, rotation and shear, partial occlusion, colour and lighting
shift, blur, JPEG artefacts and a cluttered background; sometimes a stranger's garment (style 0).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clothret.datasets.deepfashion2 import write_annotations
from clothret.datasets.garments import PALETTE, Style, render_garment
from clothret.datasets.records import NUM_CATEGORIES, ImageRecord, Item

logger = logging.getLogger(__name__)

# Outfits are drawn from these category combinations: tops with bottoms, outerwear over a top, dresses.
_UPPER = (1, 2, 5, 6)
_OUTER = (3, 4)
_LOWER = (7, 8, 9)
_DRESS = (10, 11, 12, 13)


@dataclass(frozen=True)
class SyntheticSizes:
    """How much to generate for one split and how large the images are."""

    n_pairs: int
    street_per_pair: int = 1
    shop_size: int = 128
    street_size: int = 192
    stranger_rate: float = 0.2


def _outfit(rng: np.random.Generator) -> list[int]:
    kind = rng.integers(0, 6)
    if kind == 0:
        return [int(rng.choice(_DRESS))]
    if kind == 1:
        return [int(rng.choice(_UPPER))]
    if kind == 2:
        return [int(rng.choice(_LOWER))]
    if kind == 3:
        return [int(rng.choice(_OUTER)), int(rng.choice(_LOWER))]
    if kind == 4:
        return [int(rng.choice(_OUTER)), int(rng.choice(_UPPER)), int(rng.choice(_LOWER))]
    return [int(rng.choice(_UPPER)), int(rng.choice(_LOWER))]


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _paste(canvas: Image.Image, garment: Image.Image, x: int, y: int) -> tuple[float, float, float, float]:
    """Paste an RGBA garment at (x, y); return the pixel box of its visible silhouette."""
    canvas.paste(garment, (x, y), garment)
    alpha = np.asarray(garment.getchannel("A")) > 127
    ys, xs = np.nonzero(alpha)
    x1 = max(0, x + xs.min())
    y1 = max(0, y + ys.min())
    x2 = min(canvas.width, x + xs.max() + 1)
    y2 = min(canvas.height, y + ys.max() + 1)
    return float(x1), float(y1), float(x2), float(y2)


def render_shop(category_id: int, style: Style, size: int, rng: np.random.Generator) -> tuple[Image.Image, Item]:
    """One garment centred on a light plain background (a catalogue photo)."""
    bg = tuple(int(v) for v in rng.integers(215, 250, size=3))
    canvas = Image.new("RGB", (size, size), bg)
    garment = render_garment(category_id, style, int(size * rng.uniform(0.7, 0.82)))
    if garment.width > size * 0.9:
        garment = garment.resize((int(size * 0.9), int(garment.height * size * 0.9 / garment.width)))
    x = (size - garment.width) // 2 + int(rng.integers(-3, 4))
    y = (size - garment.height) // 2 + int(rng.integers(-3, 4))
    box = _paste(canvas, garment, x, y)
    return canvas, Item(category_id=category_id, style=0, bbox=box)


def _clutter(size: int, rng: np.random.Generator) -> Image.Image:
    """A busy background: a colour gradient, random shapes and noise."""
    c0, c1 = rng.uniform(40, 220, size=(2, 3))
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 3), np.float32)
    img = Image.fromarray(grad.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = rng.integers(-20, size, size=2)
        w, h = rng.integers(8, size // 2, size=2)
        colour = tuple(int(v) for v in rng.uniform(30, 230, size=3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif shape == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 5)))
    noise = rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def _shift_garment(garment: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotation and shear (a cheap perspective stand-in), applied to an RGBA garment."""
    shear = rng.uniform(-0.15, 0.15)
    w, h = garment.size
    garment = garment.transform(
        (w + int(abs(shear) * h), h), Image.Transform.AFFINE,
        (1, shear, -abs(shear) * h if shear > 0 else 0, 0, 1, 0), resample=Image.Resampling.BILINEAR,
    )
    return garment.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, expand=True)


def _lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, np.float32)
    gains = rng.uniform(0.8, 1.2, size=3) * rng.uniform(0.8, 1.15)
    gamma = rng.uniform(0.8, 1.25)
    arr = 255.0 * np.clip(arr * gains / 255.0, 0, 1) ** gamma
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_street(
    garments: list[tuple[int, Style, int]], size: int, rng: np.random.Generator
) -> tuple[Image.Image, list[Item]]:
    """Garments ``(category_id, style, style_id)`` laid side by side on clutter, with a domain shift."""
    canvas = _clutter(size, rng)
    n = len(garments)
    slot = size / n
    items = []
    occluders = []
    for i, (category_id, style, style_id) in enumerate(garments):
        height = int(size * rng.uniform(0.45, 0.8) / (1.0 if n < 3 else 1.2))
        garment = _shift_garment(render_garment(category_id, style, height), rng)
        max_w = int(slot * 1.1)
        if garment.width > max_w:
            garment = garment.resize((max_w, max(8, int(garment.height * max_w / garment.width))))
        x = int(i * slot + (slot - garment.width) / 2 + rng.uniform(-0.1, 0.1) * slot)
        y = int(rng.uniform(0, max(1, size - garment.height)))
        box = _paste(canvas, garment, x, y)
        items.append(Item(category_id=category_id, style=style_id, bbox=box))
        if rng.random() < 0.4:
            occluders.append(box)
    draw = ImageDraw.Draw(canvas)
    for x1, y1, x2, y2 in occluders:  # cover up to ~30% of a garment with a bag, an arm, a sign...
        w, h = (x2 - x1) * rng.uniform(0.2, 0.5), (y2 - y1) * rng.uniform(0.2, 0.5)
        ox, oy = rng.uniform(x1 - w / 2, x2 - w / 2), rng.uniform(y1 - h / 2, y2 - h / 2)
        colour = tuple(int(v) for v in rng.uniform(20, 235, size=3))
        draw.rectangle([ox, oy, ox + w, oy + h], fill=colour)
    canvas = _lighting(canvas, rng)
    radius = rng.uniform(0.0, 1.2)
    if radius > 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    return canvas, items


def generate_split(split_url: str, sizes: SyntheticSizes, *, seed: int, first_pair_id: int = 1) -> list[ImageRecord]:
    """Write one split (images + annotations) and return its records; deterministic given ``seed``."""
    if sizes.n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {sizes.n_pairs}")
    rng = np.random.default_rng(seed)
    fs, root = fsspec.core.url_to_fs(split_url)
    fs.makedirs(f"{root}/image", exist_ok=True)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    records: list[ImageRecord] = []
    counter = 0

    def save(img: Image.Image, quality: int) -> tuple[str, str]:
        nonlocal counter
        counter += 1
        image_id = f"{counter:06d}"
        path = f"{root}/image/{image_id}.jpg"
        with fs.open(path, "wb") as f:
            f.write(_encode_jpeg(img, quality))
        return image_id, prefix + path

    for p in range(sizes.n_pairs):
        pair_id = first_pair_id + p
        categories = _outfit(rng)
        styles = [Style.random(rng) for _ in categories]
        for style_id, (cat, style) in enumerate(zip(categories, styles), start=1):
            img, item = render_shop(cat, style, sizes.shop_size, rng)
            image_id, path = save(img, 92)
            shop_item = Item(category_id=cat, style=style_id, bbox=item.bbox)
            records.append(ImageRecord(image_id, path, "shop", pair_id, (shop_item,)))
        for _ in range(sizes.street_per_pair):
            order = rng.permutation(len(categories))[: int(rng.integers(1, len(categories) + 1))]
            shown = [(categories[j], styles[j], int(j) + 1) for j in sorted(order)]
            if rng.random() < sizes.stranger_rate and len(shown) < 3:
                shown.append((int(rng.integers(1, NUM_CATEGORIES + 1)), Style.random(rng), 0))
            img, items = render_street(shown, sizes.street_size, rng)
            image_id, path = save(img, int(rng.integers(35, 85)))
            records.append(ImageRecord(image_id, path, "user", pair_id, tuple(items)))
    write_annotations(split_url, records)
    n_shop = sum(r.source == "shop" for r in records)
    logger.info("wrote %s: %d pairs, %d shop and %d street images", split_url, sizes.n_pairs, n_shop, len(records) - n_shop)
    return records


DEFAULT_SPLITS: dict[str, SyntheticSizes] = {
    "train": SyntheticSizes(n_pairs=400, street_per_pair=3),
    "validation": SyntheticSizes(n_pairs=130, street_per_pair=2),
}


def generate_dataset(
    root_url: str, *, seed: int = 0, splits: dict[str, SyntheticSizes] | None = None
) -> dict[str, list[ImageRecord]]:
    """Write every split under ``root_url/<split>``; pair ids never repeat across splits."""
    splits = DEFAULT_SPLITS if splits is None else splits
    out = {}
    first_pair_id = 1
    for i, (name, sizes) in enumerate(splits.items()):
        out[name] = generate_split(f"{root_url.rstrip('/')}/{name}", sizes, seed=seed * 1000 + i, first_pair_id=first_pair_id)
        first_pair_id += sizes.n_pairs
    return out


__all__ = ["DEFAULT_SPLITS", "PALETTE", "SyntheticSizes", "generate_dataset", "generate_split", "render_shop", "render_street"]
