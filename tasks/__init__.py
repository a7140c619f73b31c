"""Prefect tasks: thin wrappers over clothret library calls."""
