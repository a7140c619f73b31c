"""Prefect flows: they only sequence tasks.

Importing this package turns Prefect's analytics off unless the user set it: these machines often
have no internet, and failed telemetry calls would only add noise.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
