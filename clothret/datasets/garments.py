"""Garment silhouettes and textures for the synthetic data set.

Each of DeepFashion2's 13 categories is a set of polygons in a unit canvas (x right, y down) with an
aspect ratio; a *style* is a texture (pattern, colours, period, angle) painted inside the silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Polygon = list[tuple[float, float]]

_NECK_TORSO: Polygon = [(0.25, 0.1), (0.4, 0.1), (0.5, 0.22), (0.6, 0.1), (0.75, 0.1), (0.8, 0.95), (0.2, 0.95)]
_COAT_TORSO: Polygon = [(0.24, 0.08), (0.4, 0.08), (0.5, 0.3), (0.6, 0.08), (0.76, 0.08), (0.82, 1.0), (0.18, 1.0)]
_SHORT_SLEEVES: list[Polygon] = [
    [(0.26, 0.1), (0.03, 0.32), (0.13, 0.45), (0.27, 0.34)],
    [(0.74, 0.1), (0.97, 0.32), (0.87, 0.45), (0.73, 0.34)],
]
_LONG_SLEEVES: list[Polygon] = [
    [(0.26, 0.1), (0.0, 0.88), (0.12, 0.92), (0.27, 0.36)],
    [(0.74, 0.1), (1.0, 0.88), (0.88, 0.92), (0.73, 0.36)],
]
_VEST_TORSO: Polygon = [
    (0.3, 0.0), (0.42, 0.0), (0.5, 0.2), (0.58, 0.0), (0.7, 0.0), (0.72, 0.3),
    (0.8, 0.95), (0.2, 0.95), (0.28, 0.3),
]
_SLING_TORSO: Polygon = [(0.26, 0.32), (0.74, 0.32), (0.8, 0.95), (0.2, 0.95)]
_THIN_STRAPS: list[Polygon] = [
    [(0.31, 0.33), (0.33, 0.0), (0.36, 0.0), (0.35, 0.33)],
    [(0.65, 0.33), (0.64, 0.0), (0.67, 0.0), (0.69, 0.33)],
]
_DRESS_BODICE: Polygon = [
    (0.3, 0.04), (0.42, 0.04), (0.5, 0.13), (0.58, 0.04), (0.7, 0.04), (0.68, 0.4),
    (0.95, 1.0), (0.05, 1.0), (0.32, 0.4),
]
_DRESS_SHORT_SLEEVES: list[Polygon] = [
    [(0.31, 0.04), (0.12, 0.17), (0.18, 0.25), (0.32, 0.18)],
    [(0.69, 0.04), (0.88, 0.17), (0.82, 0.25), (0.68, 0.18)],
]
_DRESS_LONG_SLEEVES: list[Polygon] = [
    [(0.31, 0.04), (0.06, 0.55), (0.14, 0.58), (0.32, 0.2)],
    [(0.69, 0.04), (0.94, 0.55), (0.86, 0.58), (0.68, 0.2)],
]
_SLING_BODICE: Polygon = [(0.32, 0.2), (0.68, 0.2), (0.66, 0.42), (0.95, 1.0), (0.05, 1.0), (0.34, 0.42)]
_DRESS_STRAPS: list[Polygon] = [
    [(0.35, 0.21), (0.37, 0.0), (0.39, 0.0), (0.39, 0.21)],
    [(0.61, 0.21), (0.61, 0.0), (0.63, 0.0), (0.65, 0.21)],
]


@dataclass(frozen=True)
class Silhouette:
    """Filled polygons, cut lines (drawn as gaps, e.g. a coat's opening) and width/height ratio."""

    polygons: tuple[Polygon, ...]
    aspect: float
    cuts: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = ()


SILHOUETTES: dict[int, Silhouette] = {
    1: Silhouette((_NECK_TORSO, *_SHORT_SLEEVES), 1.0),
    2: Silhouette((_NECK_TORSO, *_LONG_SLEEVES), 1.0),
    3: Silhouette((_COAT_TORSO, *_SHORT_SLEEVES), 0.95, cuts=(((0.5, 0.3), (0.5, 1.0)),)),
    4: Silhouette((_COAT_TORSO, *_LONG_SLEEVES), 0.95, cuts=(((0.5, 0.3), (0.5, 1.0)),)),
    5: Silhouette((_VEST_TORSO,), 0.75),
    6: Silhouette((_SLING_TORSO, *_THIN_STRAPS), 0.75),
    7: Silhouette(([(0.08, 0.0), (0.92, 0.0), (0.97, 1.0), (0.56, 1.0), (0.5, 0.4), (0.44, 1.0), (0.03, 1.0)],), 1.3),
    8: Silhouette(([(0.12, 0.0), (0.88, 0.0), (0.97, 1.0), (0.6, 1.0), (0.5, 0.22), (0.4, 1.0), (0.03, 1.0)],), 0.55),
    9: Silhouette(([(0.28, 0.0), (0.72, 0.0), (0.98, 1.0), (0.02, 1.0)],), 1.0),
    10: Silhouette((_DRESS_BODICE, *_DRESS_SHORT_SLEEVES), 0.62),
    11: Silhouette((_DRESS_BODICE, *_DRESS_LONG_SLEEVES), 0.62),
    12: Silhouette((_DRESS_BODICE,), 0.55),
    13: Silhouette((_SLING_BODICE, *_DRESS_STRAPS), 0.55),
}

PATTERNS = ("solid", "stripes", "checks", "dots", "zigzag", "grid")

PALETTE = np.array(
    [
        (200, 30, 40), (30, 60, 170), (20, 130, 60), (230, 190, 40), (30, 30, 30),
        (240, 240, 235), (120, 60, 150), (240, 120, 30), (90, 170, 210), (150, 100, 60),
        (230, 120, 170), (110, 120, 120),
    ],
    dtype=np.float32,
)
"""A small palette: many styles share colours, so colour alone does not identify an item."""


@dataclass(frozen=True)
class Style:
    """A garment's look: pattern, base/accent palette indices, period (fraction of width), angle, duty."""

    pattern: str
    base: int
    accent: int
    period: float
    angle: float
    duty: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Style:
        base, accent = rng.choice(len(PALETTE), size=2, replace=False)
        return cls(
            pattern=str(rng.choice(PATTERNS)),
            base=int(base),
            accent=int(accent),
            period=float(rng.choice([0.1, 0.16, 0.25])),
            angle=float(rng.choice([0.0, 45.0, 90.0, 135.0])),
            duty=float(rng.uniform(0.25, 0.6)),
        )


def texture(style: Style, width: int, height: int) -> np.ndarray:
    """An (height, width, 3) float32 RGB texture; its scale follows the garment's width."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, 1)
    theta = np.deg2rad(style.angle)
    u = (xs * np.cos(theta) + ys * np.sin(theta)) / style.period
    v = (-xs * np.sin(theta) + ys * np.cos(theta)) / style.period
    if style.pattern == "solid":
        accent = np.zeros_like(u, dtype=bool)
    elif style.pattern == "stripes":
        accent = (u % 1.0) < style.duty
    elif style.pattern == "checks":
        accent = (np.floor(u) + np.floor(v)) % 2 == 0
    elif style.pattern == "dots":
        accent = ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 < (style.duty * 0.6) ** 2
    elif style.pattern == "zigzag":
        accent = ((u + 0.5 * np.abs((v % 1.0) - 0.5)) % 1.0) < style.duty
    elif style.pattern == "grid":
        accent = ((u % 1.0) < style.duty * 0.4) | ((v % 1.0) < style.duty * 0.4)
    else:
        raise ValueError(f"unknown pattern {style.pattern!r}; valid: {PATTERNS}")
    out = np.where(accent[..., None], PALETTE[style.accent], PALETTE[style.base])
    shade = 1.0 - 0.15 * ys / max(ys.max(), 1e-6)  # soft vertical shading, like fabric in light
    return out * shade[..., None]


def render_garment(category_id: int, style: Style, height: int) -> Image.Image:
    """An RGBA image of one garment, ``height`` pixels tall, transparent outside the silhouette."""
    try:
        sil = SILHOUETTES[category_id]
    except KeyError:
        raise ValueError(f"category_id must be 1..13, got {category_id}") from None
    width = max(8, int(round(height * sil.aspect)))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    scale = np.array([width - 1, height - 1], dtype=np.float32)
    for poly in sil.polygons:
        draw.polygon([tuple(np.array(p) * scale) for p in poly], fill=255)
    for a, b in sil.cuts:
        draw.line([tuple(np.array(a) * scale), tuple(np.array(b) * scale)], fill=0, width=max(2, width // 40))
    rgb = np.clip(texture(style, width, height), 0, 255).astype(np.uint8)
    garment = Image.fromarray(rgb, "RGB").convert("RGBA")
    garment.putalpha(mask)
    return garment
