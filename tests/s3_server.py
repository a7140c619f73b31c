"""Pytest fixtures for a real local S3 endpoint: moto's server on a free 127.0.0.1 port.

``s3_endpoint`` (session) starts the server and points this process and every process started later
(Dask workers, subprocesses) at it through environment variables; ``s3_bucket`` (function) makes a
fresh bucket and yields ``"s3://<bucket>"``. Loaded as a plugin from ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "FSSPEC_S3_USE_LISTINGS_CACHE": "false",
}
# Variables that would send requests elsewhere or with other credentials.
S3_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Run moto's S3 server for the session and yield its URL; ``os.environ`` carries the endpoint
    (``AWS_ENDPOINT_URL``, ``FSSPEC_S3_ENDPOINT_URL``) and test credentials until the session ends."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"S3 tests need moto[server] (pip install 'moto[server]>=5'): {exc}")
    import fsspec.config
    from clothret.storage import clear_s3_cache

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"

    names = [*S3_ENV, *S3_ENV_CLEARED, "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"]
    saved_env = {name: os.environ.get(name) for name in names}
    saved_conf = fsspec.config.conf.get("s3")
    for name in S3_ENV_CLEARED:
        os.environ.pop(name, None)
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=url, FSSPEC_S3_ENDPOINT_URL=url)
    # fsspec read FSSPEC_S3_* when it was imported; apply them to this process's conf too.
    fsspec.config.conf["s3"] = {**(saved_conf or {}), "endpoint_url": url, "use_listings_cache": False}
    clear_s3_cache()
    try:
        yield url
    finally:
        clear_s3_cache()
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
        werkzeug_log.setLevel(old_level)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty, uniquely named bucket on the test endpoint, as ``"s3://<bucket>"``."""
    import fsspec

    bucket = f"clothret-test-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}"
