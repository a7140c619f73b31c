"""clothret: keeps a clothes-retrieval index of a shop catalogue fresh.

Street photo in, matching shop items out: detect → fuse boxes → embed crops → nearest neighbours.
The library is plain Python; Prefect tasks and flows live in ``tasks/`` and ``flows/``.
"""

__version__ = "0.1.0"
