"""The FAISS index: build, publish, load and search."""
