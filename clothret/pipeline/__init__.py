"""The per-segment run: reader → segment engine (decode, detect, fuse, crop, embed; overlapped) → result arrays."""
