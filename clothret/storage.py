"""fsspec configuration for S3: endpoint, credentials and caching, the same in every process.

Credentials never pass through this module: botocore reads ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``) from the environment.
The endpoint of an S3-compatible store (MinIO, moto, Ceph) comes from ``AWS_ENDPOINT_URL`` (botocore
>= 1.31 reads it, also ``AWS_ENDPOINT_URL_S3``) or from ``FSSPEC_S3_ENDPOINT_URL``, which fsspec reads
into ``fsspec.config.conf["s3"]`` when it is imported.

s3fs keeps one filesystem instance per set of options per process, and by default that instance caches
directory listings: after another process (a Dask worker) writes or deletes an object, ``fs.ls`` and
``fs.exists`` on a listed prefix answer from the stale listing. This project turns listings caching off
(``use_listings_cache=False``); set ``FSSPEC_S3_USE_LISTINGS_CACHE=false`` (or call ``configure_s3``)
so worker processes do the same. ``fs.invalidate_cache()`` is the per-call alternative.

Environment for every process (Dask workers inherit the environment of the process that starts them)::

    AWS_ACCESS_KEY_ID=...  AWS_SECRET_ACCESS_KEY=...  AWS_DEFAULT_REGION=us-east-1
    AWS_ENDPOINT_URL=http://minio:9000        # only for a non-AWS endpoint
    FSSPEC_S3_USE_LISTINGS_CACHE=false
"""

from __future__ import annotations

import json
import logging
import os

import fsspec
import fsspec.config

logger = logging.getLogger(__name__)

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")
CONF_ENV = "FSSPEC_S3"
DEFAULTS: dict = {"use_listings_cache": False}


def storage_options_from_env(environ: dict[str, str] | None = None) -> dict:
    """fsspec S3 options from the environment: the endpoint (first of ``ENDPOINT_ENV`` that is set)
    and no listings cache. Credentials stay with botocore, which reads them itself."""
    env = os.environ if environ is None else environ
    options = dict(DEFAULTS)
    endpoint = next((env[name] for name in ENDPOINT_ENV if env.get(name)), None)
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def configure_s3(endpoint_url: str | None = None, *, export: bool = True, **options) -> None:
    """Make every later ``fsspec.open``/``url_to_fs("s3://...")`` in this process use these options.

    Updates ``fsspec.config.conf["s3"]`` with ``use_listings_cache=False``, the endpoint (when given)
    and ``options`` (s3fs keyword arguments; not credentials, which come from ``AWS_*`` variables).
    With ``export`` the options are also written to the ``FSSPEC_S3`` variable as JSON, so processes
    started afterwards (Dask workers) apply them when they import fsspec. Clears s3fs's instance cache.
    """
    s3_conf = {**fsspec.config.conf.get("s3", {}), **DEFAULTS, **options}
    if endpoint_url:
        s3_conf["endpoint_url"] = endpoint_url
    if export:
        try:
            os.environ[CONF_ENV] = json.dumps(s3_conf)
        except TypeError as exc:
            raise ValueError(f"S3 options must be JSON values to reach other processes: {exc}") from exc
    fsspec.config.conf["s3"] = s3_conf
    clear_s3_cache()
    logger.info("s3 options: %s", sorted(s3_conf))


def clear_s3_cache() -> None:
    """Close and forget the cached s3fs filesystem instances (and their listings) of this process."""
    from s3fs import S3FileSystem

    close_s3_sessions()
    S3FileSystem.clear_instance_cache()


def close_s3_sessions() -> None:
    """Close the HTTP sessions of cached s3fs instances while their event loops still run, so none is
    left for the interpreter's exit to complain about ("Unclosed client session")."""
    from fsspec.asyn import sync
    from s3fs import S3FileSystem
    from zarr.core.sync import sync as zarr_sync

    for fs in list(S3FileSystem._cache.values()):
        if getattr(fs, "_s3", None) is None:
            continue
        try:
            if fs.asynchronous:  # zarr's instances: their session lives on zarr's own event loop
                zarr_sync(fs._s3.__aexit__(None, None, None))
            else:
                sync(fs.loop, fs._s3.__aexit__, None, None, None, timeout=5)
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            logger.debug("could not close an s3fs session: %r", exc)
        fs._s3 = None
