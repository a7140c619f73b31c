"""The feature store: immutable Zarr v3 segments per model version, on any fsspec URL."""
