"""Prefect flows: they only sequence tasks.

Importing this package quietens two things unless the user set them: Prefect's analytics (these
machines often have no internet, and failed telemetry calls only add noise) and Dask's per-worker
INFO logs (Prefect's own run logs already show progress).
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
