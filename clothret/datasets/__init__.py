"""Data sets: the DeepFashion2 layout, the synthetic street-to-shop generator, catalogue manifests."""
