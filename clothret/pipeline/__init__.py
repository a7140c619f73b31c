"""The per-segment run: reader → mapper (detect, fuse, crop, embed) → result arrays."""
