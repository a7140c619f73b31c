"""Checks of a run's inputs that take seconds, made before any server or cluster starts.

Each check raises :class:`PreflightError` (a ``ValueError``) with one line naming the file (and the
line) that is wrong and what would be valid; the refresh itself checks the same things again, so a
check here only moves a failure earlier.
"""

from __future__ import annotations

import logging
import os

import fsspec

from clothret.datasets.catalogue import read_manifest
from clothret.pipeline.reader import describe_error
from clothret.weights import card_url

logger = logging.getLogger(__name__)


class PreflightError(ValueError):
    """A run's input is missing or malformed; the message names it and what would be valid."""


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def check_manifest(url: str) -> int:
    """Read the whole manifest (every line parsed, ids unique); returns its number of images."""
    try:
        entries = read_manifest(url)
    except FileNotFoundError as exc:
        raise PreflightError(f"manifest not found: {url} (write one with `clothret catalogue`)") from exc
    except ValueError as exc:
        raise PreflightError(str(exc)) from exc
    if not entries:
        raise PreflightError(f"manifest {url} lists no images (one JSON object a line: image_id, uri, sha256)")
    return len(entries)


def check_bundle(url: str) -> None:
    """The bundle parses, and every weights file and model card it names exists."""
    from clothret.models import load_bundle

    try:
        bundle = load_bundle(url)
    except FileNotFoundError as exc:
        raise PreflightError(str(exc)) from exc
    except ValueError as exc:
        raise PreflightError(str(exc)) from exc
    for entry in [*bundle.detectors, *bundle.embedders]:
        for what, file_url in (("weights", entry.weights), ("model card", card_url(entry.weights))):
            try:
                fs, path = fsspec.core.url_to_fs(file_url)
                found = fs.isfile(path)
            except Exception as exc:  # noqa: BLE001 - any reason it cannot be read is the message
                raise PreflightError(f"{url}: cannot reach the {what} of {entry.name!r} at {file_url}: "
                                     f"{describe_error(exc)}") from exc
            if not found:
                raise PreflightError(f"{url}: the {what} of {entry.name!r} is missing: {file_url} "
                                     f"(relative paths resolve against the bundle's folder)")


def check_location(url: str, what: str) -> None:
    """A folder the run writes to: local, its nearest existing parent is a writable folder; on S3, its
    bucket exists and the credentials can read it."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise PreflightError(f"{what} {url}: not a usable URL ({describe_error(exc)})") from exc
    protocol = _protocol(fs)
    if protocol in ("file", "local"):
        _check_local_folder(fs, path, url, what)
    elif protocol in ("s3", "s3a"):
        _check_bucket(fs, path.split("/", 1)[0], url, what)
    else:
        try:
            fs.exists(path)
        except Exception as exc:  # noqa: BLE001 - whatever stops us from reaching it is the message
            raise PreflightError(f"{what} {url} cannot be reached: {describe_error(exc)}") from exc


def _check_local_folder(fs: fsspec.AbstractFileSystem, path: str, url: str, what: str) -> None:
    existing = path.rstrip("/") or "/"
    while not fs.exists(existing):
        existing = existing.rsplit("/", 1)[0] or "/"
    if not fs.isdir(existing):
        where = "is a file" if existing == path.rstrip("/") else f"is inside {existing}, which is a file"
        raise PreflightError(f"{what} {url} {where}: a folder is needed")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"{what} {url}: cannot write in {existing} (permission denied)")


def _check_bucket(fs: fsspec.AbstractFileSystem, bucket: str, url: str, what: str) -> None:
    try:
        fs.info(bucket)
    except FileNotFoundError as exc:
        raise PreflightError(f"{what} {url}: bucket {bucket!r} does not exist (create it, or check the "
                             f"endpoint: AWS_ENDPOINT_URL)") from exc
    except PermissionError as exc:
        raise PreflightError(f"{what} {url}: access to bucket {bucket!r} denied (check AWS_ACCESS_KEY_ID / "
                             f"AWS_SECRET_ACCESS_KEY or the s3 block)") from exc
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, network: the message says which
        raise PreflightError(f"{what} {url}: bucket {bucket!r} cannot be reached: {describe_error(exc)}") from exc


def check_existing(url: str, what: str) -> None:
    """A file or folder that must already be there (an evaluation split, an index to promote)."""
    check_location(url, what)
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise PreflightError(f"{what} not found: {url}")


def check_refresh_inputs(
    *, manifest_url: str, bundle_url: str, store_url: str, index_url: str, eval_split_url: str | None = None
) -> None:
    """Everything a refresh or a backfill reads or writes, checked in the order a person would fix it."""
    n = check_manifest(manifest_url)
    check_bundle(bundle_url)
    check_location(store_url, "feature store")
    check_location(index_url, "index")
    if eval_split_url:
        check_existing(eval_split_url, "evaluation split")
    logger.debug("pre-flight checks passed: %d images in %s", n, manifest_url)


def check_promote_inputs(index_url: str, build_id: str | None = None) -> None:
    """The index has the build to promote: ``build_id``, or (without one) a complete build not served yet."""
    from clothret.index.publish import list_builds

    check_location(index_url, "index")
    builds = list_builds(index_url)
    if not builds:
        raise PreflightError(f"index {index_url} has no complete build: run `clothret refresh` or "
                             f"`clothret backfill` first")
    if build_id is not None and build_id not in {b["build_id"] for b in builds}:
        raise PreflightError(f"index {index_url} has no complete build {build_id!r}; complete builds: "
                             f"{', '.join(b['build_id'] for b in builds)}")
    if build_id is None and all(b["served"] for b in builds):
        raise PreflightError(f"every build of index {index_url} has served already: name the build to promote "
                             f"with --build (see `clothret builds --index {index_url}`)")


def check_rollback_inputs(index_url: str) -> None:
    """The index serves a build and knows the one that served before it."""
    from clothret.index.publish import read_pointer

    check_location(index_url, "index")
    pointer = read_pointer(index_url)
    if pointer is None:
        raise PreflightError(f"nothing was published under index {index_url}: nothing to roll back")
    if not pointer.get("previous"):
        raise PreflightError(f"index {index_url} serves build {pointer['build_id']} and has no previous build "
                             f"to roll back to")
