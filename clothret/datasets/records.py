"""The in-memory form of an annotated image, shared by every stage.

Boxes are pixel ``x1, y1, x2, y2`` everywhere inside the library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES: tuple[str, ...] = (
    "short_sleeve_top",
    "long_sleeve_top",
    "short_sleeve_outwear",
    "long_sleeve_outwear",
    "vest",
    "sling",
    "shorts",
    "trousers",
    "skirt",
    "short_sleeve_dress",
    "long_sleeve_dress",
    "vest_dress",
    "sling_dress",
)
"""DeepFashion2's 13 categories; ``category_id`` is the 1-based position in this tuple."""

NUM_CATEGORIES = len(CATEGORIES)

Box = tuple[float, float, float, float]


def category_name(category_id: int) -> str:
    """Name of a 1-based DeepFashion2 category id."""
    if not 1 <= category_id <= NUM_CATEGORIES:
        raise ValueError(f"category_id must be in 1..{NUM_CATEGORIES}, got {category_id}")
    return CATEGORIES[category_id - 1]


@dataclass(frozen=True)
class Item:
    """One annotated garment: its category (1-13), style (0 = not matchable) and pixel box."""

    category_id: int
    style: int
    bbox: Box


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image in the DeepFashion2 layout.

    ``source`` is ``"user"`` (a street photo, a query) or ``"shop"`` (a catalogue photo).
    A user item and a shop item match when ``pair_id`` and ``style`` are equal and ``style > 0``.
    """

    image_id: str
    path: str
    source: str
    pair_id: int
    items: tuple[Item, ...] = field(default_factory=tuple)

    def match_keys(self) -> list[tuple[int, int] | None]:
        """Per item, the ``(pair_id, style)`` key it matches on, or ``None`` when style is 0."""
        return [(self.pair_id, it.style) if it.style > 0 else None for it in self.items]
